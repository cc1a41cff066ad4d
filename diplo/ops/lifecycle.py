"""Operations on running apps: take them down, read their logs, restart them in place,
cancel their deploy in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from diplo.errors import InputError
from diplo.executor import drop_kept_images
from diplo.model import Deployment, ObservedContainer
from diplo.ops import proxy as routed
from diplo.ops.context import Context
from diplo.planner import RUNNING, network_name

LOCK_WAIT = 600.0  # how long `down` waits for a deploy of one of its apps to finish


def down(
    ctx: Context, apps: list[str], *, everything: bool = False, volumes: bool = False
) -> list[str]:
    """Remove apps' containers (and named volumes with `volumes`). Returns what was removed."""
    observed = ctx.runtime.observe()
    snapshot = ctx.ledger.snapshot()
    # The apps of this Diplo (this DIPLO_HOME's ledger) and containers of their projects;
    # another ledger's apps on the same engine are not ours to take down.
    ours = {r.project for r in snapshot.apps.values()}
    known = {c.app for c in observed.containers if c.project in ours} | set(snapshot.apps)
    if everything:
        targets = sorted(known)
    else:
        unknown = [a for a in apps if a not in known]
        if unknown:
            theirs = [a for a in unknown if observed.of_app(a)]
            raise InputError(
                f"no app named {', '.join(map(repr, unknown))} on this host; nothing was removed"
                + (
                    f" ({', '.join(theirs)}: of another Diplo home, not this one's to remove)"
                    if theirs
                    else ""
                ),
                hint="`diplo status` lists the apps",
            )
        targets = list(dict.fromkeys(apps))
    routes = ctx.ledger.routes()
    with ctx.locks.hold(targets, timeout=LOCK_WAIT):  # not under a deploy in flight
        removed = _take_down(ctx, targets, volumes=volumes)
    # The others' routes stay; these go. With the last one, the proxy goes too (its volume
    # keeps the certificates unless --volumes).
    dropped = any(t in routes for t in targets) and ctx.proxy_enabled
    if dropped and not routed.converge(ctx, dropped=True) and not ctx.ledger.routes():
        if volumes:
            ctx.proxy.remove(volume=True)
        removed.append(f"proxy {ctx.proxy.name}")
    return removed


def _take_down(ctx: Context, targets: list[str], *, volumes: bool) -> list[str]:
    observed = ctx.runtime.observe()  # again, under the locks
    snapshot = ctx.ledger.snapshot()
    removed: list[str] = []
    touched: set[str] = set()  # the projects of the apps taken down
    for name in targets:
        containers = observed.of_app(name)
        if not containers and name not in snapshot.apps:
            continue  # taken down by another process while this one waited for the lock
        project = snapshot.apps[name].project if name in snapshot.apps else containers[0].project
        touched.add(project)
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
    for project in sorted(touched - remaining):
        ctx.runtime.remove_network(network_name(project))
    return removed


def logs(ctx: Context, app: str, *, follow: bool, tail: int | None) -> Iterator[bytes]:
    observed = ctx.runtime.observe(containers_only=True)
    containers = observed.of_app(app)
    if not containers:
        raise InputError(f"no container for app {app!r}", hint="`diplo status` lists the apps")
    live = [c for c in containers if c.state in RUNNING] or list(containers)
    newest = max(live, key=lambda c: c.created)
    return ctx.runtime.logs(newest.id, tail=tail, follow=follow)


def restart(ctx: Context, app: str, *, grace: int, reason: str, lock_wait: float) -> bool:
    """Restart the app's newest container in place (with replicas: that of each replica,
    one after the other), under its lock; False when it has none. Recorded as an event."""
    with ctx.locks.hold([app], timeout=lock_wait):
        containers = ctx.runtime.observe(containers_only=True).of_app(app)
        if not containers:
            return False
        newest: dict[int, ObservedContainer] = {}
        for c in sorted(containers, key=lambda c: c.created):
            newest[c.replica] = c
        for _, current in sorted(newest.items()):
            ctx.runtime.stop(current.id, grace)
            ctx.runtime.start(current.id)
    ctx.ledger.event("app.restarted", reason, app)
    return True


@dataclass(frozen=True)
class Cancelled:
    """A deployment a cancel was asked of, and its result once it stopped (None while it
    still runs)."""

    deployment: Deployment
    result: str | None


def cancel(ctx: Context, app: str, *, wait: float) -> list[Cancelled]:
    """Ask every deploy of `app` in flight, in any Diplo process on this host, to stop
    (through the ledger, which their executors poll), and wait up to `wait` seconds for
    them to finish. Their new containers go; the previous revisions stay."""
    flagged = ctx.ledger.request_cancel(app)
    if not flagged:
        raise InputError(f"no deploy of {app!r} is in flight; nothing to cancel")
    deadline = time.monotonic() + wait
    out = []
    for dep in flagged:
        while True:
            now = ctx.ledger.deployment(dep.id)
            if now is None or now.result != "running":
                out.append(Cancelled(dep, now.result if now else "gone"))
                break
            if time.monotonic() > deadline:
                out.append(Cancelled(dep, None))
                break
            time.sleep(0.1)
    return out
