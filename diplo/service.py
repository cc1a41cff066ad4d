"""The service layer: what `diplo apply/diff/status/down/logs` do, independent of how the
result is shown. It wires the manifest loader, the planner, the runtime, the ledger and
the executor together; the CLI (and later the API) only parse input and render output."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from diplo.errors import InputError, PlanError
from diplo.executor import ApplyResult, Executor, Reporter
from diplo.ledger import Deployment, Ledger
from diplo.manifest.load import load_manifests
from diplo.model import (
    DesiredState,
    LedgerSnapshot,
    Observed,
    ObservedContainer,
    Plan,
)
from diplo.planner import RUNNING, network_name, plan
from diplo.ports import assign_ports
from diplo.runtime.base import Runtime
from diplo.runtime.hostports import port_is_free


@dataclass
class Context:
    """The adapters a command works with; created lazily so that bad input is rejected
    before the engine or the ledger is touched."""

    _runtime: Runtime | None = None
    _ledger: Ledger | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            from diplo.runtime.docker_engine import DockerRuntime  # the heavy import, late

            self._runtime = DockerRuntime()
        return self._runtime

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger.open_default()
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()


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
    observed = ctx.runtime.observe()
    snapshot = ctx.ledger.snapshot()
    # Ports first (they need the host probe), then the pure plan. Only apps that will get a
    # new container need their ports free; that needs a first plan without the probe.
    draft = plan(desired, observed, snapshot, {}, prune=prune, only=only)
    recreate = {p.app for p in draft.apps if p.kind in ("create", "update", "start")}
    scoped = [a for a in desired.apps if only is None or a.name in only]
    ports = assign_ports(
        scoped, snapshot.ports, observed, port_is_free, check=lambda name: name in recreate
    )
    final = plan(desired, observed, snapshot, ports.ports, prune=prune, only=only)
    problems = list(final.problems) + ports.problems
    if problems:
        raise PlanError(problems)
    return Prepared(desired, observed, snapshot, final)


def apply(
    ctx: Context,
    paths: Iterable[str],
    *,
    prune: bool = False,
    dry_run: bool = False,
    reporter: Reporter | None = None,
    workers: int = 8,
) -> tuple[Plan, ApplyResult | None]:
    prepared = prepare(ctx, paths, prune=prune)
    if dry_run:
        return prepared.plan, None
    result = Executor(ctx.runtime, ctx.ledger, reporter, workers=workers).run(prepared.plan)
    return prepared.plan, result


# --- status ------------------------------------------------------------------------------


@dataclass
class AppStatus:
    app: str
    project: str
    state: str  # running | stopped | missing | partial | orphaned
    desired: int
    running: int
    image: str
    ports: list[str]
    spec_hash: str
    in_sync: bool | None
    containers: list[dict[str, Any]] = field(default_factory=list)
    last_deployment: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def status(ctx: Context, app: str | None = None) -> list[AppStatus]:
    observed = ctx.runtime.observe()
    snapshot = ctx.ledger.snapshot()
    last = ctx.ledger.last_deployments()
    names = {c.app for c in observed.containers} | set(snapshot.apps)
    if app is not None:
        if app not in names:
            raise InputError(
                f"no app named {app!r} on this host", hint="`diplo status` lists the apps"
            )
        names = {app}
    out = []
    for name in sorted(names):
        record = snapshot.apps.get(name)
        containers = observed.of_app(name)
        running = [c for c in containers if c.state in RUNNING]
        desired = 1 if record is not None else 0
        if record is None:
            state = "orphaned"
        elif not containers:
            state = "missing"
        elif len(running) >= desired:
            state = "running"
        else:
            state = containers[0].state
        spec_hash = record.spec_hash if record else (containers[0].spec_hash if containers else "")
        in_sync = (
            None
            if record is None
            else bool(running) and all(c.spec_hash == record.spec_hash for c in containers)
        )
        ports = sorted(
            {
                f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.key}"
                for c in containers
                for p in c.ports
            }
        )
        image = (record.spec.get("image") if record else None) or (
            containers[0].image if containers else ""
        )
        out.append(
            AppStatus(
                app=name,
                project=record.project if record else containers[0].project,
                state=state,
                desired=desired,
                running=len(running),
                image=str(image),
                ports=ports,
                spec_hash=spec_hash[:12],
                in_sync=in_sync,
                containers=[_container_dict(c) for c in containers],
                last_deployment=_deployment_dict(last.get(name)),
            )
        )
    return out


def _container_dict(c: ObservedContainer) -> dict[str, Any]:
    return {
        "id": c.short_id,
        "name": c.name,
        "state": c.state,
        "status": c.status,
        "image_id": c.image_id[:19],
        "spec_hash": c.spec_hash[:12],
    }


def _deployment_dict(d: Deployment | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "id": d.id,
        "revision": d.revision,
        "result": d.result,
        "started_at": d.started_at,
        "finished_at": d.finished_at,
        "step": d.step,
        "error": d.error,
    }


# --- down and logs -----------------------------------------------------------------------


def down(
    ctx: Context, apps: list[str], *, everything: bool = False, volumes: bool = False
) -> list[str]:
    """Remove apps' containers (and named volumes with `volumes`). Returns what was removed."""
    observed = ctx.runtime.observe()
    snapshot = ctx.ledger.snapshot()
    known = {c.app for c in observed.containers} | set(snapshot.apps)
    if everything:
        targets = sorted(known)
    else:
        unknown = [a for a in apps if a not in known]
        if unknown:
            raise InputError(
                f"no app named {', '.join(map(repr, unknown))} on this host; nothing was removed",
                hint="`diplo status` lists the apps",
            )
        targets = list(dict.fromkeys(apps))
    removed: list[str] = []
    projects: set[str] = set()
    for name in targets:
        containers = observed.of_app(name)
        project = snapshot.apps[name].project if name in snapshot.apps else containers[0].project
        projects.add(project)
        for c in containers:
            ctx.runtime.remove(c.id)
            removed.append(f"container {c.name}")
        if volumes:
            for vol in ctx.runtime.volumes_of(project, name):
                ctx.runtime.remove_volume(vol)
                removed.append(f"volume {vol}")
        ctx.ledger.forget_app(name, keep_ports=True)
    # A project network goes with its last app.
    remaining = {c.project for c in observed.containers if c.app not in targets}
    for project in sorted(projects - remaining):
        ctx.runtime.remove_network(network_name(project))
    return removed


def logs(ctx: Context, app: str, *, follow: bool, tail: int | None) -> Iterator[bytes]:
    observed = ctx.runtime.observe()
    containers = observed.of_app(app)
    if not containers:
        raise InputError(f"no container for app {app!r}", hint="`diplo status` lists the apps")
    live = [c for c in containers if c.state in RUNNING] or list(containers)
    newest = max(live, key=lambda c: c.created)
    return ctx.runtime.logs(newest.id, tail=tail, follow=follow)
