"""The service layer: what `diplo apply/diff/status/down/logs` do, independent of how the
result is shown. It wires the manifest loader, the planner, the runtime, the ledger and
the executor together; the CLI (and later the API) only parse input and render output."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from diplo.errors import DiploError, InputError, PlanError
from diplo.executor import drop_kept_images
from diplo.executor.probes import probe_address, run_probe
from diplo.health import Health, observed_health, policy_of
from diplo.ledger import Deployment, Ledger, default_home
from diplo.locks import AppLocks
from diplo.manifest.load import load_manifests
from diplo.model import (
    AppRecord,
    ContainerState,
    DesiredState,
    HealthSpec,
    LedgerSnapshot,
    Observed,
    ObservedContainer,
    Plan,
    ResolvedPort,
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
    def locks(self) -> AppLocks:
        return AppLocks(default_home())

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
    return plan_state(ctx, desired, prune=prune, only=only)


def apps_to_lock(ctx: Context, desired: DesiredState, *, prune: bool) -> set[str]:
    """The apps an apply of `desired` may touch: its own, and with prune the recorded apps
    of its projects."""
    names = {a.name for a in desired.apps}
    if prune:
        names |= {
            r.app for r in ctx.ledger.snapshot().apps.values() if r.project in desired.projects
        }
    return names


def plan_state(
    ctx: Context, desired: DesiredState, *, prune: bool, only: frozenset[str] | None = None
) -> Prepared:
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
    health: str = "unknown"
    health_detail: str = ""
    restarts: int = 0
    exit_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def health_spec_of(record: AppRecord | None) -> HealthSpec:
    """The health check an app was deployed with, read back from its public spec."""
    raw = dict((record.spec.get("health") if record else None) or {})
    if "status" in raw:
        raw["status"] = tuple(tuple(r) for r in raw["status"])
    if "cmd" in raw:
        raw["cmd"] = tuple(raw["cmd"])
    try:
        return HealthSpec(**raw)
    except TypeError:  # a ledger written by another version: fall back to the defaults
        return HealthSpec()


def check_health(
    ctx: Context,
    app: str,
    container: ObservedContainer | None,
    health: HealthSpec,
    ports: tuple[ResolvedPort, ...],
    *,
    record: bool = True,
) -> tuple[Health, str, ContainerState | None]:
    """Look at the app's container once and probe it once; record the probe."""
    policy = policy_of(health)
    if container is None:
        return Health.MISSING, "no container", None
    state = ctx.runtime.state(container.id)
    running = state.status == "running"
    uptime = time.time() - state.started_at if state.started_at else 0.0
    probe = None
    if running and policy.probed:
        probe = run_probe(health, probe_address(health, ports, state.ip), ctx.runtime, container.id)
    verdict = observed_health(
        policy,
        exists=True,
        running=running,
        restarting=state.status == "restarting",
        uptime=uptime,
        probe=probe,
        engine_health=state.health,
    )
    if probe is not None:
        detail = f"{probe.detail} in {probe.latency * 1000:.0f}ms"
        if record:
            ctx.ledger.record_probe(
                app, probe.ok, verdict.label, probe.detail, round(probe.latency * 1000, 1)
            )
    elif not running:
        detail = f"{state.status}, exit code {state.exit_code}"
        if state.restart_count:
            detail += f", restarted {state.restart_count} times"
    elif state.health:
        detail = f"image HEALTHCHECK: {state.health}"
    else:
        detail = f"up {uptime:.0f}s, no health check"
    return verdict, detail, state


def status(
    ctx: Context, app: str | None = None, *, only: set[str] | None = None
) -> list[AppStatus]:
    """Status rows of every app (or of `app`, or of the apps in `only` that exist)."""
    observed = ctx.runtime.observe(containers_only=True)
    snapshot = ctx.ledger.snapshot()
    last = ctx.ledger.last_deployments()
    names = {c.app for c in observed.containers} | set(snapshot.apps)
    if only is not None:
        names &= only
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
    _fill_health(ctx, out, observed, snapshot)
    return out


def _fill_health(
    ctx: Context, rows: list[AppStatus], observed: Observed, snapshot: LedgerSnapshot
) -> None:
    """Health of every app, probed in parallel (each probe has its own timeout)."""

    def one(row: AppStatus) -> None:
        containers = observed.of_app(row.app)
        live = [c for c in containers if c.state in RUNNING] or list(containers)
        current = max(live, key=lambda c: c.created) if live else None
        ports = tuple(
            ResolvedPort(a.key, a.host_ip, a.host_port) for a in snapshot.ports if a.app == row.app
        )
        try:
            verdict, detail, state = check_health(
                ctx, row.app, current, health_spec_of(snapshot.apps.get(row.app)), ports
            )
        except DiploError as exc:
            row.health, row.health_detail = Health.UNKNOWN.label, exc.message
            return
        row.health, row.health_detail = verdict.label, detail
        if state is not None:
            row.restarts = state.restart_count
            row.exit_code = state.exit_code if state.status != "running" else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, rows))


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
        "commit": d.commit_sha,
        "dirty": bool(d.dirty),
        "rollback_of": d.rollback_of,
    }


# --- down and logs -----------------------------------------------------------------------


def down(
    ctx: Context, apps: list[str], *, everything: bool = False, volumes: bool = False
) -> list[str]:
    """Remove apps' containers (and named volumes with `volumes`). Returns what was removed."""
    observed = ctx.runtime.observe()
    snapshot = ctx.ledger.snapshot()
    # The apps of this Diplo (this DIPLO_HOME's ledger) and containers of their projects;
    # another ledger's apps on the same engine are not ours to take down.
    projects = {r.project for r in snapshot.apps.values()}
    known = {c.app for c in observed.containers if c.project in projects} | set(snapshot.apps)
    if everything:
        targets = sorted(known)
    else:
        named = {c.app for c in observed.containers} | set(snapshot.apps)
        unknown = [a for a in apps if a not in named]
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
        # Nothing is left to roll back to.
        dropped = drop_kept_images(ctx.runtime, ctx.ledger, name, keep=0)
        removed += [f"image tag {tag}" for tag in dropped]
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
