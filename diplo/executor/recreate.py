"""The `recreate` strategy: stop the old container (it publishes the same host port),
start the new one, wait until it is healthy, then remove the old one. If the new one
crashes, turns unhealthy, misses the deadline or is cancelled, it is removed and the old
one is started again: a failed release never leaves the app worse off."""

from __future__ import annotations

import contextlib
import math
from functools import partial

import structlog

from diplo.errors import DiploError
from diplo.executor.containers import container_spec
from diplo.executor.job import Job, StepFailed, guard
from diplo.executor.strategy import DeployContext
from diplo.model import ObservedContainer, RunContainer

log = structlog.get_logger("diplo.executor")


class Recreate:
    """Brief downtime, no second copy: the old container frees its name and host ports
    before the new one is created."""

    def __init__(self, ctx: DeployContext) -> None:
        self.ctx = ctx

    def deploy(self, job: Job, action: RunContainer) -> str:
        runtime, reporter = self.ctx.runtime, self.ctx.reporter
        spec = action.spec
        app = action.app
        timeout = math.ceil(spec.stop_grace_period)
        stopped: list[ObservedContainer] = []
        renamed: dict[str, str] = {}
        new_id: str | None = None
        try:
            for old in action.replaces:
                if old.state in ("running", "restarting", "paused"):
                    job.step = "stop-old"
                    reporter.step(app, "stop-old", old.name)
                    guard("stop old container", partial(runtime.stop, old.id, timeout))
                    stopped.append(old)
                if old.name == action.name:
                    # Aside, not removed: the name is needed now, the container maybe later.
                    aside = f"{old.name}-old-{old.short_id}"
                    guard("rename old container", partial(runtime.rename, old.id, aside))
                    renamed[old.id] = old.name
            job.check("create")
            job.step = "create"
            reporter.step(app, "create", action.name)
            new_id = guard("create", partial(runtime.create, container_spec(action, timeout)))
            job.step = "start"
            reporter.step(app, "start", action.name)
            guard("start", partial(runtime.start, new_id))
            if self.ctx.wait:
                self.ctx.gate.await_healthy(job, app, spec, new_id, action.ports)
            else:
                state = guard("start", partial(runtime.state, new_id))
                if state.status != "running":
                    raise StepFailed("start", self.ctx.gate.exit_reason(new_id, state))
        except BaseException:
            # Any failure, not only the expected ones: a bug or an unexpected exception in
            # a probe must leave the app as it was, never half-deployed.
            self._roll_back(app, new_id, stopped, renamed)
            raise
        for old in action.replaces:
            reporter.step(app, "cleanup", old.name)
            try:
                runtime.remove(old.id)
            except DiploError as exc:  # the new container runs; a leftover is only noise
                log.warning("app.cleanup_failed", app=app, container=old.name, error=exc.message)
        return new_id

    def _roll_back(
        self,
        app: str,
        new_id: str | None,
        stopped: list[ObservedContainer],
        renamed: dict[str, str],
    ) -> None:
        """Put the app back as it was: the new container goes, the old ones come back."""
        runtime, ledger = self.ctx.runtime, self.ctx.ledger
        self.ctx.reporter.step(
            app, "rollback", "restoring the previous revision" if stopped else ""
        )
        try:
            if new_id is not None:
                runtime.remove(new_id)
            for old_id, name in renamed.items():
                runtime.rename(old_id, name)
            for old in stopped:
                runtime.start(old.id)
        except Exception as exc:
            why = exc.message if isinstance(exc, DiploError) else f"{type(exc).__name__}: {exc}"
            log.error("app.rollback_failed", app=app, error=why)
            with contextlib.suppress(Exception):
                ledger.event("rollback.failed", why, app)
            return
        if stopped:
            ledger.event("rollback", "previous revision restarted", app)
