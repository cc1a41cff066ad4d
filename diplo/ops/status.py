"""What runs and how it is: the typed app view shared by `diplo status`, the API and the
controller, health looked at once, sync status, deployment history and probes."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

from diplo.errors import DiploError, InputError
from diplo.executor.probes import probe_address, run_probe
from diplo.health import Health, observed_health, policy_of
from diplo.model import (
    AppRecord,
    ContainerState,
    Deployment,
    DesiredApp,
    HealthSpec,
    LedgerSnapshot,
    Observed,
    ObservedContainer,
    ProbeNote,
    ProbeRecord,
    ResolvedPort,
    spec_id,
)
from diplo.ops.context import Context
from diplo.planner import RUNNING, diff_specs


@dataclass
class AppView:
    """One app as every face shows it. The first block is what the host says (engine,
    ledger, a probe); the second is filled in by the controller, which alone knows the
    source's newest revision (None from a plain `diplo status`)."""

    app: str
    project: str = ""
    state: str = "missing"  # running | stopped | missing | partial | orphaned
    desired: int = 0  # replicas asked for
    running: int = 0  # containers running, of any release
    replicas: str = ""  # "ready/desired": running replicas of the recorded release
    image: str = ""
    ports: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)  # served by the host's proxy
    spec_hash: str = ""
    in_sync: bool | None = None
    containers: list[dict[str, Any]] = field(default_factory=list)
    last_deployment: dict[str, Any] | None = None
    health: str = "unknown"
    health_detail: str = ""
    restarts: int = 0
    exit_code: int | None = None
    # the controller's
    spec: dict[str, Any] | None = None
    last_error: str | None = None
    sync: dict[str, Any] | None = None  # {"status": Synced|OutOfSync|Unknown, "differs": [...]}
    revision: dict[str, Any] | None = None
    source_revision: str | None = None
    pinned: dict[str, Any] | None = None
    reconciling: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppView:
        """An app view as the API sent it (unknown keys from a newer server are dropped)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _replicas(record: AppRecord | None) -> int:
    """How many replicas the recorded spec asks for (0 for an app Diplo does not know)."""
    if record is None:
        return 0
    try:
        return max(1, int(record.spec.get("replicas") or 1))
    except (TypeError, ValueError):
        return 1


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
    recorded: list[ProbeNote] | None = None,
) -> tuple[Health, str, ContainerState | None]:
    """Look at the app's container once and probe it once; record the probe (in the
    ledger, or in `recorded`, for its caller to write many at once)."""
    policy = policy_of(health)
    if container is None:
        return Health.MISSING, "no container", None
    state = ctx.runtime.state(container.id, listed=_listed(container))
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
        note = ProbeNote(app, probe.ok, verdict.label, probe.detail, round(probe.latency * 1000, 1))
        if recorded is not None:
            recorded.append(note)
        elif record:
            ctx.ledger.record_probes([note])
    elif not running:
        detail = f"{state.status}, exit code {state.exit_code}"
        if state.restart_count:
            detail += f", restarted {state.restart_count} times"
    elif state.health:
        detail = f"image HEALTHCHECK: {state.health}"
    else:
        detail = f"up {uptime:.0f}s, no health check"
    return verdict, detail, state


def _listed(container: ObservedContainer) -> str | None:
    """How the listing shows a running container, its uptime left out ("running (healthy)"):
    while that stays the same and the engine reports no event of it, the inspect the
    runtime kept of it still holds. None (inspect it anew) when it is not running: a crash's
    exit code and restarts are what a person reads then."""
    if container.state != "running":
        return None
    _, paren, health = container.status.partition("(")
    return "running" + (f" ({health}" if paren else "")


def status(
    ctx: Context, app: str | None = None, *, only: set[str] | None = None, pace: float = 0.0
) -> list[AppView]:
    """Views of every app (or of `app`, or of the apps in `only` that exist); `pace`: the
    probes are spread over that many seconds (see `_fill_health`)."""
    # `only` (a reconcile's refresh of its app) lists those apps' containers alone.
    observed = ctx.runtime.observe(containers_only=True, apps=only if app is None else None)
    snapshot = ctx.ledger.snapshot()
    last = ctx.ledger.last_deployments(only if app is None else {app})
    # This Diplo's apps: those of its ledger, and containers of its projects that the
    # ledger lost (orphans). Another Diplo home's apps on the same engine are not ours
    # to show, judge or prune.
    ours = {r.project for r in snapshot.apps.values()}
    names = {c.app for c in observed.containers if c.project in ours} | set(snapshot.apps)
    if only is not None:
        names &= only
    if app is not None:
        if app not in names:
            other = next((c for c in observed.containers if c.app == app), None)
            raise InputError(
                f"no app named {app!r} on this host"
                + (
                    f" (a container of project {other.project!r} of another Diplo)" if other else ""
                ),
                hint="`diplo status` lists the apps",
            )
        names = {app}
    out = [_observed_view(name, observed, snapshot, last.get(name)) for name in sorted(names)]
    _fill_health(ctx, out, observed, snapshot, pace)
    return out


def _observed_view(
    name: str, observed: Observed, snapshot: LedgerSnapshot, last: Deployment | None
) -> AppView:
    record = snapshot.apps.get(name)
    containers = observed.of_app(name)
    running = [c for c in containers if c.state in RUNNING]
    desired = _replicas(record)
    ready = len({c.replica for c in running if record and c.spec_hash == record.spec_hash})
    if record is None:
        state = "orphaned"
    elif not containers:
        state = "missing"
    elif ready >= desired:
        state = "running"
    elif running:
        state = "partial"
    else:
        state = containers[0].state
    spec_hash = record.spec_hash if record else (containers[0].spec_hash if containers else "")
    in_sync = (
        None
        if record is None
        else bool(running) and all(c.spec_hash == record.spec_hash for c in containers)
    )
    ports = sorted(
        {f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.key}" for c in containers for p in c.ports}
    )
    image = (record.spec.get("image") if record else None) or (
        containers[0].image if containers else ""
    )
    return AppView(
        app=name,
        project=record.project if record else containers[0].project,
        state=state,
        desired=desired,
        running=len(running),
        replicas=f"{ready}/{desired}",
        image=str(image),
        ports=ports,
        domains=[str(d) for d in (record.spec.get("domains") or [])] if record else [],
        spec_hash=spec_id(spec_hash),
        in_sync=in_sync,
        containers=[_container_dict(c) for c in containers],
        last_deployment=_deployment_dict(last),
    )


def _fill_health(
    ctx: Context,
    rows: list[AppView],
    observed: Observed,
    snapshot: LedgerSnapshot,
    pace: float = 0.0,
) -> None:
    """Health of every app, probed in parallel (each probe has its own timeout, so a slow
    one holds up no other); the probes are written to the ledger in one transaction.

    `pace` > 0 (the health loop of `diplo serve`): the probes start one after the other
    over that many seconds instead of all at once, as the kubelet spreads its probe
    workers. Started at once, 100 probes kept 8 threads wanting the GIL together, and
    the API's event loop waited behind them: `GET /apps` p99 went from 13 ms without the
    health loop to 31-61 ms with it at 100 apps; one probe at a time, 16-21 ms."""
    recorded: list[ProbeNote] = []

    def one(row: AppView) -> None:
        containers = observed.of_app(row.app)
        live = [c for c in containers if c.state in RUNNING] or list(containers)
        current = max(live, key=lambda c: c.created) if live else None
        ports = tuple(
            ResolvedPort(a.key, a.host_ip, a.host_port) for a in snapshot.ports_of(row.app)
        )
        health = health_spec_of(snapshot.apps.get(row.app))
        # With replicas, each is looked at (the newest container of each number) and the
        # app is as healthy as its worst replica.
        newest: dict[int, ObservedContainer] = {}
        for one_of in sorted(live, key=lambda c: c.created):
            newest[one_of.replica] = one_of
        targets: list[tuple[int, ObservedContainer | None]] = (
            list(newest.items()) if row.desired > 1 else [(0, current)]
        )
        worst: tuple[Health, str, ContainerState | None] | None = None
        try:
            for replica, target in sorted(targets, key=lambda t: t[0]):
                verdict, detail, state = check_health(
                    ctx, row.app, target, health, ports, recorded=recorded
                )
                if replica:
                    detail = f"replica {replica}: {detail}"
                if worst is None or verdict > worst[0]:
                    worst = (verdict, detail, state)
        except DiploError as exc:
            row.health, row.health_detail = Health.UNKNOWN.label, exc.message
            return
        assert worst is not None
        verdict, detail, state = worst
        row.health, row.health_detail = verdict.label, detail
        if state is not None:
            row.restarts = state.restart_count
            row.exit_code = state.exit_code if state.status != "running" else None

    began, step = time.monotonic(), pace / len(rows) if pace > 0 and rows else 0.0
    with ThreadPoolExecutor(max_workers=8) as pool:
        started = []
        for i, row in enumerate(rows):
            if step:
                time.sleep(max(0.0, began + i * step - time.monotonic()))
            started.append(pool.submit(one, row))
        for future in started:
            future.result()
    if recorded:
        ctx.ledger.record_probes(recorded)


def _container_dict(c: ObservedContainer) -> dict[str, Any]:
    return {
        "id": c.short_id,
        "name": c.name,
        "state": c.state,
        "status": c.status,
        "image_id": c.image_id[:19],
        "spec_hash": spec_id(c.spec_hash),
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


@dataclass(frozen=True)
class SourceState:
    """What the controller knows of its sources, for sync status."""

    desired: dict[str, DesiredApp]  # what the sources ask for (before pins)
    commits: dict[str, str | None]  # app -> the source's newest commit
    manifest_ok: bool
    pins: dict[str, int]  # app -> the deployment a rollback pinned it to


# app -> (its record, its desired spec, the paths where they differ): kept by a caller
# that asks often (the health loop, every app each tick), and used while both are equal
DiffMemo = dict[str, tuple[AppRecord, DesiredApp, list[str]]]


def sync_views(
    ctx: Context,
    names: set[str],
    source: SourceState,
    rows: dict[str, AppView],
    memo: DiffMemo | None = None,
) -> dict[str, dict[str, Any]]:
    """The sync fields of each app in `names` (Argo CD's column): Synced when what runs is
    what the source's newest valid revision asks for; OutOfSync with what differs;
    Unknown when the newest revision could not be read. `memo` keeps each app's spec
    diff across calls (at 500 apps, diffing them all is 130 ms)."""
    snapshot = ctx.ledger.snapshot()
    deployed = ctx.ledger.deployed(names)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        want = source.desired.get(name)
        record = snapshot.apps.get(name)
        row = rows.get(name)
        differs: list[str] = []
        if not source.manifest_ok:
            sync = "Unknown"
            differs = ["the source's newest revision is refused: see manifest.error"]
        elif name in source.pins:
            sync, differs = "OutOfSync", [f"pinned to deployment {source.pins[name]}"]
        elif want is None:
            sync, differs = "OutOfSync", ["not in the source (to be pruned)"]
        elif record is None:
            sync, differs = "OutOfSync", ["not deployed"]
        else:
            differs = list(_spec_differs(name, record, want, memo))
            if row is not None and row.in_sync is False:
                differs.append("running container differs (drift)")
            sync = "OutOfSync" if differs else "Synced"
        dep = deployed.get(name)
        pin = source.pins.get(name)
        out[name] = {
            "sync": {"status": sync, "differs": differs},
            "revision": None
            if dep is None
            else {
                "deployment": dep.id,
                "commit": dep.commit_sha,
                "subject": dep.commit_subject,
                "dirty": bool(dep.dirty),
            },
            "source_revision": source.commits.get(name) if want is not None else None,
            "pinned": None if pin is None else {"deployment": pin},
        }
    return out


def _spec_differs(
    name: str, record: AppRecord, want: DesiredApp, memo: DiffMemo | None
) -> list[str]:
    kept = None if memo is None else memo.get(name)
    if kept is not None and _same(kept[0], record) and _same(kept[1], want):
        return kept[2]
    differs = [c.path for c in diff_specs(record.spec, want.public_spec())]
    if record.spec_hash != want.spec_hash and not differs:
        differs = ["file contents"]
    if memo is not None:
        memo[name] = (record, want, differs)
    return differs


def _same(a: object, b: object) -> bool:
    """Equal, and cheaply so when the very same (a reload makes equal apps anew)."""
    return a is b or a == b


def project_sources(ctx: Context) -> dict[str, set[str]]:
    """Which sources deployed the apps each project has on this host now (by their last
    successful deployment): a project belongs to the source that deployed it."""
    recorded = ctx.ledger.snapshot().apps
    out: dict[str, set[str]] = {}
    for name, dep in ctx.ledger.deployed().items():
        if name in recorded and dep.source:
            out.setdefault(recorded[name].project, set()).add(dep.source)
    return out


def history(ctx: Context, app: str, last: int) -> list[Deployment]:
    """`app`'s deployments, newest first."""
    return ctx.ledger.deployments(app, last)


def probes(ctx: Context, app: str, last: int) -> list[ProbeRecord]:
    """`app`'s recent health probes, newest first."""
    return ctx.ledger.probes(app, last)


def disk_free(ctx: Context) -> int:
    """Free bytes on the disk that holds the ledger."""
    return shutil.disk_usage(ctx.ledger.path.parent).free
