"""Planning against the host: the engine's and the ledger's state read once, host ports
assigned, then the pure planner. Shared by apply, diff and the controller's reconciles."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from diplo.errors import PlanError
from diplo.manifest.load import load_manifests
from diplo.model import DesiredState, LedgerSnapshot, Observed, Plan
from diplo.ops.context import Context
from diplo.planner import plan
from diplo.ports import assign_ports
from diplo.runtime.hostports import port_is_free


@dataclass
class Prepared:
    desired: DesiredState
    observed: Observed
    snapshot: LedgerSnapshot
    plan: Plan


def prepare(
    ctx: Context, paths: Iterable[str], *, prune: bool, only: frozenset[str] | None = None
) -> Prepared:
    desired = load_manifests(paths)  # raises ManifestError before anything else is touched
    return plan_state(ctx, desired, prune=prune, only=only)


def apps_to_lock(
    ctx: Context, desired: DesiredState, *, prune: bool, only: frozenset[str] | None = None
) -> set[str]:
    """The apps an apply of `desired` may touch: its own, and with prune the recorded apps
    of its projects; within `only` when given."""
    if only is None:
        names = {a.name for a in desired.apps}
    else:  # a reconcile's few apps: no pass over every app
        names = {n for n in only if desired.app(n) is not None}
    if prune:
        recorded = ctx.ledger.snapshot().records(only)
        names |= {n for n, r in recorded.items() if r.project in desired.projects}
    return names


def plan_state(
    ctx: Context,
    desired: DesiredState,
    *,
    prune: bool,
    only: frozenset[str] | None = None,
    owners: frozenset[str] | None = None,
    observe: Callable[[frozenset[str]], Observed] | None = None,
) -> Prepared:
    """Two passes of the pure planner around port assignment: the first says which apps
    get a new container (only those need their host ports free, which takes a probe of
    the host), the second plans with the ports assigned. With `owners` (the names of the
    sources a controller serves), only apps recorded in the ledger as last deployed by one
    of them may be pruned: never another source's, nor containers the ledger does not know.
    `observe(only)` lists the engine instead of a listing of its own (a shared listing,
    see ops/listing.py), for a plan of `only`."""
    observed = ctx.runtime.observe() if observe is None or only is None else observe(only)
    snapshot = ctx.ledger.snapshot()
    prunable = None
    if prune and owners is not None:
        # Only recorded apps that this plan would prune need their source looked up: a
        # reconcile of a desired app (the usual case) asks the ledger nothing more.
        candidates = {
            name
            for name, record in snapshot.records(only).items()
            if record.project in desired.projects and desired.app(name) is None
        }
        deployed = ctx.ledger.deployed() if candidates else {}
        prunable = frozenset(
            name
            for name in candidates
            if name not in deployed or (deployed[name].source or "") in owners
        )
    draft = plan(desired, observed, snapshot, {}, prune=prune, only=only, prunable=prunable)
    recreate = {p.app for p in draft.apps if p.kind in ("create", "update", "start")}
    scoped = [a for a in desired.apps if only is None or a.name in only]
    ports = assign_ports(
        scoped, snapshot.ports, observed, port_is_free, check=lambda name: name in recreate
    )
    final = plan(
        desired, observed, snapshot, ports.ports, prune=prune, only=only, prunable=prunable
    )
    problems = list(final.problems) + ports.problems
    if problems:
        raise PlanError(problems)
    return Prepared(desired, observed, snapshot, final)
