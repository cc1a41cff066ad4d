"""Traffic of an app behind the proxy, as deploys move it: the replicas' upstreams, the one
switch to a new set, and the drain of the replicas that left it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import structlog

from diplo.executor.job import POLL, Job, guard
from diplo.executor.strategy import DeployContext, Router
from diplo.model import DesiredApp

log = structlog.get_logger("diplo.executor")

# The old replicas keep running this long after a switch even when the proxy counts no
# request on them: a proxy's reload hands its listener over while the old config may
# still take (and send to the old upstreams) the connections it had accepted. Measured:
# 4 of 1,688 requests refused over 6 redeploys without it, stopping on the first 0.
SETTLE = 1.0


def router_of(ctx: DeployContext, spec: DesiredApp) -> Router | None:
    """The router that serves `spec`, when the host has one and the app has domains."""
    return ctx.router if spec.domains and spec.http_port else None


def upstreams(ctx: DeployContext, spec: DesiredApp, container_ids: Iterable[str]) -> list[str]:
    """ "IP:http_port" of each container on its project network (in the given order)."""
    out = []
    for cid in container_ids:
        state = guard("switch", partial(ctx.runtime.state, cid))
        if state.ip:
            out.append(f"{state.ip}:{spec.http_port}")
    return out


def switch(ctx: DeployContext, spec: DesiredApp, targets: Sequence[str]) -> None:
    """One call: the app's traffic goes to `targets` from now on."""
    router = router_of(ctx, spec)
    if router is None:
        return
    ctx.reporter.step(spec.name, "switch", ", ".join(targets))
    router.switch(spec.key, list(targets))


def drain(ctx: DeployContext, job: Job, spec: DesiredApp, old: Sequence[str]) -> str | None:
    """Wait until the proxy serves no request from `old` any more, or `deploy.drain` has
    passed. Returns who cancelled, when someone did meanwhile (the deploy's deadline
    does not cut a drain short: the drain has its own bound)."""
    router = router_of(ctx, spec)
    if router is None or not old:
        return None
    ctx.reporter.step(spec.name, "drain", f"up to {spec.drain:g}s")
    began = ctx.clock()
    until = began + spec.drain
    settle = min(SETTLE, spec.drain)
    while True:
        by = job.cancelled_by()
        if by is not None:
            return by
        try:
            busy = router.in_flight(list(old))
        except Exception as exc:  # the proxy cannot tell: wait out the drain time
            log.warning("app.drain_unknown", app=spec.name, error=str(exc))
            busy = 1
        left = until - ctx.clock()
        if (busy <= 0 and ctx.clock() - began >= settle) or left <= 0:
            return None
        ctx.sleep(min(POLL, left))
