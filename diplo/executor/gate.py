"""The health gate: a deploy succeeds once its new container is healthy, and an app
starts once the apps it depends on are. Waiting here holds no engine slot."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

from diplo.errors import DiploError
from diplo.executor.job import POLL, Job, Reporter, StepFailed, guard
from diplo.executor.probes import probe_address, run_probe
from diplo.health import Health, Tracker, policy_of
from diplo.ledger import Ledger
from diplo.model import AppPlan, ContainerState, DesiredApp, ResolvedPort
from diplo.runtime.base import Runtime

LOG_LINES_ON_FAILURE = 20
NO_PROBE_LOOK = 1.0  # without a probe, how often a starting container is inspected
FAST_WINDOW = 1.0  # in a container's first second, a failing probe is retried...
FAST_PROBE = 0.02  # ...this often (a probe is a local connect; cheap)
REUSE_LOOK = 0.25  # ...and the engine is asked at most this often meanwhile


class Gate:
    """Watches containers until they are healthy. `slots` is the run's semaphore of
    engine calls in flight: the caller holds one, and the wait gives it back."""

    def __init__(
        self,
        runtime: Runtime,
        ledger: Ledger,
        reporter: Reporter,
        slots: threading.Semaphore,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        wall: Callable[[], float],
    ) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.reporter = reporter
        self._slots = slots
        self._clock = clock
        self._sleep = sleep
        self._wall = wall

    def await_dependency(self, job: Job, dep: str, dep_plan: AppPlan | None) -> None:
        """An app starts once what it depends on is healthy. Dependencies deployed in this
        run were health-gated already; others are checked here."""
        if dep_plan is None or dep_plan.actions or dep_plan.spec is None:
            return
        if dep_plan.current is None:
            raise StepFailed("depends_on", f"dependency {dep!r} has no container")
        self.reporter.step(job.app, "depends_on", f"waiting for {dep} to be healthy")
        try:
            self.await_healthy(
                job, dep, dep_plan.spec, dep_plan.current.id, dep_plan.ports, record=False
            )
        except StepFailed as exc:
            why = f"dependency {dep!r} is not healthy: {exc.cause}"
            raise StepFailed("depends_on", why) from exc

    def await_healthy(
        self,
        job: Job,
        app: str,
        spec: DesiredApp,
        container_id: str,
        ports: tuple[ResolvedPort, ...],
        *,
        record: bool = True,
    ) -> Tracker:
        """Watch the container until it is healthy (returns), crashes or turns unhealthy
        (StepFailed), or the deadline passes or a cancel arrives. Holds no engine slot."""
        h = spec.health
        policy = policy_of(h)
        tracker = Tracker()
        look = partial(self.runtime.state, container_id)
        # Look at the engine only when there is something to learn (a probe is due, or
        # once a second without probes): a hundred apps waiting at once must not flood
        # the engine with inspects. Cancel and deadline are checked every POLL.
        next_look = 0.0
        last_running: ContainerState | None = None
        looked_at = 0.0
        job.step = "health"
        self._slots.release()
        try:
            while True:
                last = tracker.last.detail if tracker.last else ""
                job.check("health", f"last probe: {last}" if last else "")
                if self._clock() < next_look:
                    self._sleep(min(POLL, next_look - self._clock()))
                    continue
                # Right after start, probes run faster than the engine is asked: a recent
                # look that saw the container running is reused, and only a success is
                # confirmed with a fresh one (a crash between looks cannot pass).
                reuse = (
                    policy.probed
                    and last_running is not None
                    and self._clock() - looked_at < REUSE_LOOK
                )
                if reuse and last_running is not None:
                    state = last_running
                else:
                    state = guard("health", look)
                    looked_at = self._clock()
                running = state.status == "running" and state.restart_count == 0
                uptime = self._wall() - state.started_at if state.started_at else 0.0
                probe = None
                if running and policy.probed:
                    probe = run_probe(
                        h, probe_address(h, ports, state.ip), self.runtime, container_id
                    )
                    if probe.ok and reuse:
                        state = guard("health", look)
                        looked_at = self._clock()
                        running = state.status == "running" and state.restart_count == 0
                        if not running:
                            probe = None
                    # Probe fast until the first success, then at the normal interval.
                    fast = not tracker.ever_healthy
                    wait = h.start_interval if fast else h.interval
                    if fast and uptime < FAST_WINDOW:
                        wait = min(wait, FAST_PROBE)
                    next_look = self._clock() + wait
                elif policy.start_period > uptime:
                    next_look = self._clock() + min(NO_PROBE_LOOK, policy.start_period - uptime)
                else:
                    next_look = self._clock() + NO_PROBE_LOOK
                last_running = state if running else None
                tracker = tracker.step(
                    policy,
                    running=running,
                    uptime=uptime,
                    probe=probe,
                    engine_health="" if policy.probed else state.health,
                )
                if probe is not None:
                    if record:
                        self.ledger.record_probe(
                            app,
                            probe.ok,
                            tracker.status.label,
                            probe.detail,
                            round(probe.latency * 1000, 1),
                            job.dep_id,
                        )
                    self.reporter.step(app, "health", f"{tracker.status.label}: {probe.detail}")
                if tracker.status == Health.HEALTHY:
                    return tracker
                if tracker.status == Health.CRASHED:
                    raise StepFailed("start", self.exit_reason(container_id, state))
                if tracker.status == Health.UNHEALTHY:
                    what = "the image's HEALTHCHECK reports unhealthy"
                    if tracker.last is not None:
                        what = (
                            f"unhealthy after {tracker.failures} failed probes "
                            f"(last: {tracker.last.detail})"
                        )
                    raise StepFailed("health", what + self.log_tail(container_id))
        finally:
            self._slots.acquire()

    def exit_reason(self, container_id: str, state: ContainerState) -> str:
        """Why the container is not running, with its last log lines."""
        # A restart policy may have started the container again, which resets its exit
        # code to 0: catch it between restarts (the engine backs off from 100 ms).
        for _ in range(20):
            if state.status != "running" or state.exit_code or not state.restart_count:
                break
            self._sleep(0.05)
            try:
                state = self.runtime.state(container_id)
            except DiploError:
                break
        if state.status == "running" and not state.exit_code and state.restart_count:
            text = "the container exited"
        else:
            text = f"the container exited with code {state.exit_code}"
        if state.restart_count:
            text += f" and was restarted {state.restart_count} time(s)"
        if state.error:
            text += f" ({state.error})"
        return text + self.log_tail(container_id)

    def log_tail(self, container_id: str) -> str:
        lines: list[str] = []
        try:
            for chunk in self.runtime.logs(container_id, tail=LOG_LINES_ON_FAILURE, follow=False):
                lines.extend(chunk.decode("utf-8", "replace").splitlines())
        except DiploError:
            return ""
        if not lines:
            return ""
        return "; last log lines:\n      " + "\n      ".join(lines[-LOG_LINES_ON_FAILURE:])
