"""Apply: converge the host onto a desired state, written once for `diplo apply`, the
CLI's rollback and sync, and the controller's reconciles.

    pins -> plan (engine + ledger read once) -> execute (health-gated) -> drop the pin
    of a pinned deploy that failed

A face watches the deploy through `watch`: it gets the plan before anything runs and a
handle to cancel it (Ctrl-C, the API), and gives back the reporter that shows progress."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

import structlog

from diplo.errors import DiploError, InputError
from diplo.executor import ApplyResult, Executor, NullReporter, Reporter
from diplo.hostkey import seal
from diplo.model import DesiredState, Plan, Revision, RunContainer, StartContainer
from diplo.ops import proxy as routed
from diplo.ops.context import Context
from diplo.ops.listing import SharedListing
from diplo.ops.plan import Prepared, apps_to_lock, plan_state
from diplo.ops.rollback import Pinned, apply_pins
from diplo.planner import network_name

log = structlog.get_logger("diplo.ops")

LOCK_WAIT = 600.0  # how long an apply waits for another Diplo process deploying an app


class DeployHandle:
    """Cancels a deploy from another thread or a signal handler, also before it starts."""

    def __init__(self) -> None:
        self._executor: Executor | None = None
        self.reason: str | None = None

    def cancel(self, reason: str = "Ctrl-C") -> None:
        self.reason = reason
        if self._executor is not None:
            self._executor.cancel(reason)

    def _bind(self, executor: Executor) -> None:
        self._executor = executor
        if self.reason is not None:
            executor.cancel(self.reason)


@dataclass
class ApplyReport:
    prepared: Prepared
    pinned: Pinned
    result: ApplyResult | None = None  # None: nothing was executed (dry run, skipped)
    unpinned: tuple[str, ...] = ()  # pinned apps whose deploy failed: they follow the source
    cancelled: bool = False
    proxy_error: str | None = None  # the apps deployed, but the proxy could not serve them

    @property
    def ok(self) -> bool:
        return (self.result is None or self.result.ok) and self.proxy_error is None

    @property
    def plan(self) -> Plan:
        return self.prepared.plan

    @property
    def orphans(self) -> list[str]:
        """Apps of these projects that are not in the desired state and were kept."""
        return [p.app for p in self.plan.apps if p.kind == "remove" and not p.actions]


__all__ = ["ApplyReport", "DeployHandle", "Reporter", "Watch", "apply"]

Watch = Callable[[ApplyReport, DeployHandle], AbstractContextManager[Reporter]]


@contextlib.contextmanager
def _unwatched(_: ApplyReport, __: DeployHandle) -> Iterator[Reporter]:
    yield NullReporter()


def apply(
    ctx: Context,
    desired: DesiredState,
    *,
    only: frozenset[str] | None = None,
    prune: bool = False,
    owners: frozenset[str] | None = None,
    wait: bool = True,
    parallel: int = 8,
    dry_run: bool = False,
    revision: Revision | None = None,
    watch: Watch = _unwatched,
    skip: Callable[[Prepared], bool] | None = None,
    lock_wait: float = LOCK_WAIT,
    waiting: Callable[[str], None] | None = None,
    listing: SharedListing | None = None,
    listing_wait: bool = True,
) -> ApplyReport:
    """Converge the apps of `desired` (those in `only`, when given) under their host locks.

    `prune` removes recorded apps of `desired`'s projects that it no longer has (with
    `owners`, only those that these sources deployed: see `plan_state`).
    `skip(prepared)` may decide, once the plan is known, that nothing is executed (the
    controller does not retry a release that failed). `listing`: an engine listing shared
    with other applies (of `only`'s apps: see ops/listing.py), dropped when this one
    changes anything; `listing_wait=False`: a new one on its way may not be waited for
    (a heal's). Raises InputError before anything
    changes when the input cannot be applied (a pin that cannot be restored, a port clash)."""
    names = apps_to_lock(ctx, desired, prune=prune, only=only)
    with ctx.locks.hold(names, timeout=lock_wait, waiting=waiting):
        pinned = apply_pins(ctx, desired, only)
        blocked = [message for _, message in sorted(pinned.blocked.items())]
        if blocked:
            raise InputError("; ".join(blocked))
        prepared = plan_state(
            ctx,
            pinned.desired,
            prune=prune,
            only=only,
            owners=owners,
            observe=None if listing is None else partial(listing.observe, wait=listing_wait),
        )
        report = ApplyReport(prepared, pinned)
        if dry_run or (skip is not None and skip(prepared)):
            return report
        handle = DeployHandle()
        routed.expect(ctx, [a for a in prepared.desired.apps if only is None or a.name in only])
        had_routes = set(ctx.ledger.routes())
        with watch(report, handle) as reporter:
            executor = Executor(
                ctx.runtime,
                ctx.ledger,
                reporter,
                workers=parallel,
                wait=wait,
                revision=revision,
                rollback_of=pinned.rollback_of,
                revisions=pinned.revisions,
                router=ctx.router,
            )
            handle._bind(executor)
            try:
                report.result = executor.run(prepared.plan)
            finally:
                if listing is not None:
                    _changed(listing, prepared.plan)
        report.cancelled = executor.cancel_all.is_set()
        report.unpinned = _unpin_failed(ctx, report)
        _seal_env(ctx, report)
        _drop_empty_networks(ctx, report)
        _serve_routes(ctx, report, had_routes)
        return report


def _changed(listing: SharedListing, plan: Plan) -> None:
    """What a shared listing must list again after `plan` ran: the apps' containers, when
    that is all it touched (a drift healed: a container created or started); everything,
    when it may have pulled, built, untagged, replaced or created anything else."""

    def containers_only(action: object) -> bool:
        return isinstance(action, StartContainer) or (
            isinstance(action, RunContainer) and not action.replaces
        )

    if not plan.networks and all(containers_only(a) for p in plan.apps for a in p.actions):
        listing.changed(p.app for p in plan.apps if p.actions)
    else:
        listing.invalidate()


def _serve_routes(ctx: Context, report: ApplyReport, had_routes: set[str]) -> None:
    """The proxy serves the routes of the apps this apply deployed, with their replicas'
    addresses. A proxy that cannot (its ports taken, Caddy refusing a certificate)
    fails the apply with its reason; the apps themselves stay deployed."""
    moved = routed.record(ctx, report, had_routes)
    if not moved:
        return
    try:
        routed.converge(ctx, moved, dropped=bool(had_routes))
    except DiploError as exc:
        log.warning("proxy.failed", error=exc.message)
        report.proxy_error = f"proxy: {exc.message}"


def _seal_env(ctx: Context, report: ApplyReport) -> None:
    """Each new deployment's env values and interpolated fields, sealed with the host's
    key: the ledger shows only digests and `${VAR}`, and a rollback to this deployment
    needs the values themselves."""
    assert report.result is not None
    for name, outcome in report.result.outcomes.items():
        spec = report.prepared.desired.app(name)
        if outcome.ok and outcome.deployment_id is not None and spec is not None:
            if not spec.env and not spec.masked:
                continue
            kept = {"env": spec.env, "masked": spec.masked, "fields": spec.masked_fields()}
            blob = seal(ctx.key, json.dumps(kept).encode())
            ctx.ledger.seal_env(outcome.deployment_id, name, blob)


def _drop_empty_networks(ctx: Context, report: ApplyReport) -> None:
    """A project's network goes with its last app (networks are a scarce resource: the
    engine's default address pools hold about 30)."""
    assert report.result is not None
    outcomes = report.result.outcomes
    pruned = {
        p.project
        for p in report.plan.apps
        if p.kind == "remove" and p.actions and p.app in outcomes and outcomes[p.app].ok
    }
    if not pruned:
        return
    left = {c.project for c in ctx.runtime.observe(containers_only=True).containers}
    for project in sorted(pruned - left):
        try:
            ctx.runtime.remove_network(network_name(project))
        except DiploError as exc:  # something else still uses it: it stays, harmlessly
            log.warning("network.kept", project=project, error=exc.message)


def _unpin_failed(ctx: Context, report: ApplyReport) -> tuple[str, ...]:
    """A pinned app whose restored deployment did not come up (the previous one was
    kept) follows its source again rather than staying pinned to a broken state. A
    cancelled one stays pinned: `diplo serve` stopping is no verdict on the release."""
    assert report.result is not None
    out = []
    for name in sorted(report.pinned.rollback_of):
        outcome = report.result.outcomes.get(name)
        app_plan = report.plan.app(name)
        if outcome is None or outcome.ok or outcome.cancelled or app_plan is None:
            continue
        if app_plan.kind in ("create", "update") and ctx.ledger.unpin(name):
            out.append(name)
    return tuple(out)
