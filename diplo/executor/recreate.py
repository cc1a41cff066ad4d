"""The `recreate` strategy: stop the old container (it publishes the same host port),
start the new one, wait until it is healthy, then remove the old one. If the new one
crashes, turns unhealthy, misses the deadline or is cancelled, it is removed and the old
one is started again: a failed release never leaves the app worse off."""

from __future__ import annotations

import contextlib
import math
import threading
from functools import partial

import structlog

from diplo.errors import DiploError
from diplo.executor.containers import container_spec
from diplo.executor.job import POLL, Job, StepFailed, guard
from diplo.executor.strategy import DeployContext
from diplo.model import ObservedContainer, RunContainer

log = structlog.get_logger("diplo.executor")

KILL_WAIT = 5.0  # after a kill, how long the engine gets to report the stop done


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
                    stopped.append(old)  # from now on a rollback starts it again
                    self._stop(job, old, timeout)
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

    def _stop(self, job: Job, old: ObservedContainer, grace: int) -> None:
        """Stop the old container within the deploy's deadline, and give up waiting as soon
        as the deploy is cancelled: a PID 1 that ignores SIGTERM must not hold a cancel or
        the deadline for its whole grace period. The stop runs in a helper thread while
        this one watches the job; on a cancel or past the deadline the container is
        killed (the rollback then starts it again)."""
        runtime = self.ctx.runtime
        grace = min(grace, math.floor(job.remaining()))
        outcome: dict[str, BaseException] = {}

        def stop() -> None:
            try:
                runtime.stop(old.id, grace)
            except BaseException as exc:  # handed to the deploy's thread below
                outcome["error"] = exc

        worker = threading.Thread(target=stop, name="diplo-stop", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(POLL)
            if worker.is_alive() and job.should_stop():
                try:
                    runtime.kill(old.id)
                except DiploError as exc:
                    log.warning(
                        "app.kill_failed", app=job.app, container=old.name, error=exc.message
                    )
                worker.join(KILL_WAIT)
                job.check("stop-old", f"stopping {old.name}")
        error = outcome.get("error")
        if isinstance(error, DiploError):
            raise StepFailed("stop old container", error.message) from error
        if error is not None:
            raise error

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
