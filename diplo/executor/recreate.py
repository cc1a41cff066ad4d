"""The `recreate` strategy: stop the old container (it publishes the same host port),
start the new one, wait until it is healthy, then remove the old one; with replicas, one
replica after the other. If a new one crashes, turns unhealthy, misses the deadline or is
cancelled, every new one is removed and the old ones are started again: a failed release
never leaves the app worse off."""

from __future__ import annotations

import contextlib
import math
import threading
from functools import partial

import structlog

from diplo.errors import DiploError
from diplo.executor import traffic
from diplo.executor.containers import container_spec
from diplo.executor.job import POLL, Job, StepFailed, guard
from diplo.executor.strategy import DeployContext
from diplo.model import ObservedContainer, RunContainer, container_name

log = structlog.get_logger("diplo.executor")

KILL_WAIT = 5.0  # after a kill, how long the engine gets to report the stop done


class Recreate:
    """Brief downtime, no second copy: the old container frees its name and host ports
    before the new one is created."""

    def __init__(self, ctx: DeployContext) -> None:
        self.ctx = ctx

    def deploy(self, job: Job, action: RunContainer) -> str:
        """Replica by replica: its old container stops, its new one starts and must pass
        the health gate before the next replica's turn. Any failure rolls every replica
        back to the old release."""
        runtime, reporter = self.ctx.runtime, self.ctx.reporter
        spec = action.spec
        app = action.app
        timeout = math.ceil(spec.stop_grace_period)
        stopped: list[ObservedContainer] = []
        renamed: dict[str, str] = {}
        created: list[str] = []
        try:
            for replica in action.replicas:
                name = (
                    action.name
                    if replica == action.replicas[0]
                    else container_name(spec.project, app, replica)
                )
                # The old containers of this replica (all of them, for a single replica:
                # whatever the plan replaces publishes its host ports).
                olds = [
                    c for c in action.replaces if len(action.replicas) == 1 or c.replica == replica
                ]
                for old in olds:
                    if old.state in ("running", "restarting", "paused"):
                        job.step = "stop-old"
                        reporter.step(app, "stop-old", old.name)
                        stopped.append(old)  # from now on a rollback starts it again
                        self._stop(job, old, timeout)
                    if old.name == name:
                        # Aside, not removed: the name is needed now, the container maybe
                        # later.
                        aside = f"{old.name}-old-{old.short_id}"
                        guard("rename old container", partial(runtime.rename, old.id, aside))
                        renamed[old.id] = old.name
                job.check("create")
                job.step = "create"
                reporter.step(app, "create", name)
                new_id = guard(
                    "create",
                    partial(runtime.create, container_spec(action, timeout, replica, name)),
                )
                created.append(new_id)
                job.step = "start"
                reporter.step(app, "start", name)
                guard("start", partial(runtime.start, new_id))
                if self.ctx.wait:
                    self.ctx.gate.await_healthy(job, app, spec, new_id, action.ports)
                else:
                    state = guard("start", partial(runtime.state, new_id))
                    if state.status != "running":
                        raise StepFailed("start", self.ctx.gate.exit_reason(new_id, state))
            serving = [*created, *(c.id for c in action.keeps)]
            traffic.switch(self.ctx, spec, traffic.upstreams(self.ctx, spec, serving))
        except BaseException:
            # Any failure, not only the expected ones: a bug or an unexpected exception in
            # a probe must leave the app as it was, never half-deployed.
            self._roll_back(action, created, stopped, renamed)
            raise
        for old in action.replaces:
            reporter.step(app, "cleanup", old.name)
            try:
                runtime.remove(old.id)
            except DiploError as exc:  # the new container runs; a leftover is only noise
                log.warning("app.cleanup_failed", app=app, container=old.name, error=exc.message)
        return created[0]

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
        action: RunContainer,
        created: list[str],
        stopped: list[ObservedContainer],
        renamed: dict[str, str],
    ) -> None:
        """Put the app back as it was: the new containers go, the old ones come back (and
        the proxy, when there is one, is sent to them again: a restart may move an IP)."""
        app, spec = action.app, action.spec
        runtime, ledger = self.ctx.runtime, self.ctx.ledger
        self.ctx.reporter.step(
            app, "rollback", "restoring the previous revision" if stopped else ""
        )
        try:
            for new_id in created:
                runtime.remove(new_id)
            for old_id, name in renamed.items():
                runtime.rename(old_id, name)
            for old in stopped:
                runtime.start(old.id)
            if stopped:
                serving = [*(c.id for c in action.replaces), *(c.id for c in action.keeps)]
                traffic.switch(self.ctx, spec, traffic.upstreams(self.ctx, spec, serving))
        except Exception as exc:
            why = exc.message if isinstance(exc, DiploError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, StepFailed):
                why = exc.cause
            log.error("app.rollback_failed", app=app, error=why)
            with contextlib.suppress(Exception):
                ledger.event("rollback.failed", why, app)
            return
        if stopped:
            ledger.event("rollback", "previous revision restarted", app)
