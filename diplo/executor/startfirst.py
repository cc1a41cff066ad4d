"""The `start-first` strategy: the new release starts beside the old one, and takes over
only once every new replica is healthy.

1. start the new replicas (named `project-app-k` where that name is free, else
   `project-app-k-next-HASH`, see `model.next_name`), beside the old ones;
2. wait for every new replica's health gate;
3. switch the proxy's upstreams to them, in one `Router.switch` call;
4. drain the old replicas: wait until the proxy serves none of their requests, at most
   `deploy.drain`;
5. stop and remove the old replicas, and give the new ones their settled names.

Until step 3 the old replicas are never touched: a new release that fails its gate, or a
cancel, removes the new containers and the old release goes on serving. A cancel while
draining sends the traffic back to the old replicas. Without a router (no proxy on the
host, or an app without domains) the same order holds, without the switch and the drain.
"""

from __future__ import annotations

import math
from functools import partial

import structlog

from diplo.errors import DiploError
from diplo.executor import traffic
from diplo.executor.containers import container_spec
from diplo.executor.job import Cancelled, Job, StepFailed, guard
from diplo.executor.strategy import DeployContext
from diplo.model import RunContainer, container_name, next_name

log = structlog.get_logger("diplo.executor")


class StartFirst:
    """No downtime, twice the containers for a moment: for apps that can run twice."""

    def __init__(self, ctx: DeployContext) -> None:
        self.ctx = ctx

    def deploy(self, job: Job, action: RunContainer) -> str:
        ctx, spec, app = self.ctx, action.spec, action.app
        runtime, reporter = ctx.runtime, ctx.reporter
        grace = math.ceil(spec.stop_grace_period)
        taken = {c.name for c in (*action.replaces, *action.keeps)}
        created: dict[int, tuple[str, str]] = {}  # replica -> (id, name)
        old_live = [c for c in action.replaces if c.state in ("running", "restarting")]
        switched = False
        old_upstreams: list[str] = []
        try:
            if traffic.router_of(ctx, spec) is not None:
                old_upstreams = traffic.upstreams(
                    ctx, spec, [*(c.id for c in old_live), *(c.id for c in action.keeps)]
                )
            for replica in action.replicas:
                settled = container_name(spec.project, app, replica)
                name = (
                    settled
                    if settled not in taken
                    else next_name(spec.project, app, replica, spec.spec_hash)
                )
                job.check("create")
                job.step = "create"
                reporter.step(app, "create", name)
                cid = guard(
                    "create", partial(runtime.create, container_spec(action, grace, replica, name))
                )
                created[replica] = (cid, name)
                job.step = "start"
                reporter.step(app, "start", name)
                guard("start", partial(runtime.start, cid))
            for cid, _ in created.values():
                if ctx.wait:
                    ctx.gate.await_healthy(job, app, spec, cid, action.ports)
                else:
                    state = guard("start", partial(runtime.state, cid))
                    if state.status != "running":
                        raise StepFailed("start", ctx.gate.exit_reason(cid, state))
            job.check("switch")
            job.step = "switch"
            serving = [*(cid for cid, _ in created.values()), *(c.id for c in action.keeps)]
            new_upstreams = traffic.upstreams(ctx, spec, serving)
            try:
                traffic.switch(ctx, spec, new_upstreams)
            except Exception as exc:
                why = exc.message if isinstance(exc, DiploError) else f"{type(exc).__name__}: {exc}"
                raise StepFailed("switch", f"the proxy refused the new upstreams: {why}") from exc
            switched = True
            job.step = "drain"
            retired = [u for u in old_upstreams if u not in new_upstreams]
            by = traffic.drain(ctx, job, spec, retired)
            if by is not None:
                raise Cancelled("drain", by)
        except BaseException:
            self._roll_back(action, created, old_upstreams if switched else None)
            raise
        self._retire(job, action, created)
        first = created[action.replicas[0]][0]
        return first

    def _retire(self, job: Job, action: RunContainer, created: dict[int, tuple[str, str]]) -> None:
        """The new release serves: stop and remove the old replicas, then give the new
        ones their settled names. Failures here are logged: nothing serves from them."""
        ctx, spec, app = self.ctx, action.spec, action.app
        runtime = ctx.runtime
        grace = min(math.ceil(spec.stop_grace_period), max(1, math.floor(job.remaining())))
        for old in action.replaces:
            job.step = "stop-old"
            ctx.reporter.step(app, "stop-old", old.name)
            try:
                if old.state in ("running", "restarting", "paused"):
                    runtime.stop(old.id, grace)
                runtime.remove(old.id)
            except DiploError as exc:
                log.warning("app.cleanup_failed", app=app, container=old.name, error=exc.message)
        for replica, (cid, name) in sorted(created.items()):
            settled = container_name(spec.project, app, replica)
            if name == settled:
                continue
            try:
                runtime.rename(cid, settled)
            except DiploError as exc:  # it serves under its -next- name; the plan is fine
                log.warning("app.rename_failed", app=app, container=name, error=exc.message)

    def _roll_back(
        self,
        action: RunContainer,
        created: dict[int, tuple[str, str]],
        old_upstreams: list[str] | None,
    ) -> None:
        """The old release never stopped: traffic goes back to it if it had moved, and
        the new containers are removed."""
        ctx, app = self.ctx, action.app
        ctx.reporter.step(app, "rollback", "the previous revision keeps serving")
        try:
            if old_upstreams is not None:
                traffic.switch(ctx, action.spec, old_upstreams)
        except Exception as exc:
            why = exc.message if isinstance(exc, DiploError) else f"{type(exc).__name__}: {exc}"
            log.error("app.rollback_failed", app=app, error=why)
            with_event(ctx, "rollback.failed", f"traffic not switched back: {why}", app)
        for cid, name in created.values():
            try:
                ctx.runtime.remove(cid)
            except DiploError as exc:
                log.warning("app.cleanup_failed", app=app, container=name, error=exc.message)
        if created:
            with_event(ctx, "rollback", "new release removed; the previous one kept serving", app)


def with_event(ctx: DeployContext, kind: str, message: str, app: str) -> None:
    try:
        ctx.ledger.event(kind, message, app)
    except Exception as exc:  # only bookkeeping
        log.warning("app.event_failed", app=app, error=str(exc))
