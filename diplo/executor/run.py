"""The executor: runs a Plan against a Runtime and records it in the Ledger.

Apps run in parallel; `workers` bounds the engine operations in flight, and waiting for
health holds no slot, so one app's slow build or failing health check never delays the
others. An app starts after the apps it depends on are healthy, and is skipped when one
of them failed. Each deploy has a deadline and can be cancelled (Ctrl-C, or
`diplo cancel` from another process, through the ledger).

Replacement (the `recreate` strategy): stop the old container (it publishes the same
host port), start the new one, wait until it is healthy, then remove the old one. If
the new one crashes, turns unhealthy, misses the deadline or is cancelled, it is removed
and the old one is started again: a failed release never leaves the app worse off."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from diplo.errors import BuildStopped, DeployFailed, DiploError
from diplo.executor.probes import probe_address, run_probe
from diplo.health import Health, HealthPolicy, Tracker
from diplo.ledger import Ledger
from diplo.model import (
    LABEL_APP,
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SPEC_HASH,
    AppPlan,
    BuildImage,
    ContainerSpec,
    ContainerState,
    DesiredApp,
    EnsureVolume,
    ObservedContainer,
    Plan,
    PortAllocation,
    PullImage,
    RecordApplied,
    RemoveContainers,
    ResolvedPort,
    Revision,
    RunContainer,
    StartContainer,
    app_record,
)
from diplo.runtime.base import Runtime

log = structlog.get_logger("diplo.executor")
T = TypeVar("T")

LOG_LINES_ON_FAILURE = 20
POLL = 0.2  # how often waits look at the clock and at cancel requests
NO_PROBE_LOOK = 1.0  # without a probe, how often a starting container is inspected
FAST_WINDOW = 1.0  # in a container's first second, a failing probe is retried...
FAST_PROBE = 0.02  # ...this often (a probe is a local connect; cheap)
REUSE_LOOK = 0.25  # ...and the engine is asked at most this often meanwhile
MAX_THREADS = 64


class Reporter(Protocol):
    def step(self, app: str, step: str, detail: str = "") -> None: ...

    def done(self, app: str, ok: bool, message: str) -> None: ...


class NullReporter:
    def step(self, app: str, step: str, detail: str = "") -> None:
        pass

    def done(self, app: str, ok: bool, message: str) -> None:
        pass


@dataclass
class AppOutcome:
    app: str
    kind: str
    ok: bool
    message: str = ""
    step: str | None = None
    skipped: bool = False
    cancelled: bool = False
    deployment_id: int | None = None
    container_id: str | None = None


@dataclass
class ApplyResult:
    outcomes: dict[str, AppOutcome] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes.values())

    @property
    def failed(self) -> list[AppOutcome]:
        return [o for o in self.outcomes.values() if not o.ok]

    @property
    def cancelled(self) -> bool:
        return any(o.cancelled for o in self.outcomes.values())


class _StepFailed(Exception):
    def __init__(self, step: str, cause: str) -> None:
        super().__init__(cause)
        self.step = step
        self.cause = cause


class _Cancelled(Exception):
    def __init__(self, step: str, by: str) -> None:
        super().__init__(by)
        self.step = step
        self.by = by


class _Job:
    """One app's deploy: its deadline and its cancel signals."""

    def __init__(self, ex: Executor, app: str, timeout: float, dep_id: int | None) -> None:
        self.ex = ex
        self.app = app
        self.timeout = timeout
        self.deadline = ex._clock() + timeout
        self.dep_id = dep_id
        self._next_poll = 0.0
        self._flagged = False
        self.step = "prepare"

    def cancelled_by(self) -> str | None:
        if self.ex.cancel_all.is_set():
            return self.ex.cancel_reason
        if self.dep_id is not None and not self._flagged and self.ex._clock() >= self._next_poll:
            self._next_poll = self.ex._clock() + POLL
            self._flagged = bool(self.ex.ledger.cancel_requested([self.dep_id]))
        return "diplo cancel" if self._flagged else None

    def expired(self) -> bool:
        return self.ex._clock() > self.deadline

    def check(self, step: str | None = None, detail: str = "") -> None:
        step = step or self.step
        by = self.cancelled_by()
        if by is not None:
            raise _Cancelled(step, by)
        if self.expired():
            why = f"deploy deadline of {self.timeout:g}s exceeded"
            raise _StepFailed(step, why + (f" ({detail})" if detail else ""))

    def should_stop(self) -> bool:
        return self.cancelled_by() is not None or self.expired()


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        ledger: Ledger,
        reporter: Reporter | None = None,
        *,
        workers: int = 8,
        wait: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        revision: Revision | None = None,
        rollback_of: Mapping[str, int] | None = None,
        revisions: Mapping[str, Revision] | None = None,
    ) -> None:
        self.runtime = runtime
        self.revision = revision  # where the desired state came from, for the ledger
        self.rollback_of = dict(rollback_of or {})  # app -> the deployment it restores
        self.revisions = dict(revisions or {})  # per-app revisions (a rollback's own commit)
        self.ledger = ledger
        self.reporter = reporter or NullReporter()
        self.workers = max(1, workers)
        self.wait = wait
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self.cancel_all = threading.Event()
        self.cancel_reason = "Ctrl-C"
        self._plan = Plan()
        # `workers` bounds the engine calls in flight; waiting for health holds no slot.
        self._slots = threading.BoundedSemaphore(self.workers)

    def cancel(self, reason: str = "Ctrl-C") -> None:
        """Cancel every deploy in flight (thread- and signal-safe)."""
        self.cancel_reason = reason
        self.cancel_all.set()

    def run(self, plan: Plan) -> ApplyResult:
        self._plan = plan
        result = ApplyResult()
        for net in plan.networks:
            try:
                self.runtime.ensure_network(net.name, {LABEL_PROJECT: net.project})
            except DiploError as exc:
                for p in plan.apps:
                    if p.actions:
                        message = str(DeployFailed(p.app, "network", exc.message))
                        result.outcomes[p.app] = AppOutcome(
                            p.app, p.kind, False, message, "network"
                        )
                return result
        todo = {p.app: p for p in plan.apps if p.actions}
        for p in plan.apps:
            if not p.actions:
                result.outcomes[p.app] = AppOutcome(p.app, p.kind, True, p.reason or "in sync")
        self._schedule(todo, result)
        return result

    def _schedule(self, todo: dict[str, AppPlan], result: ApplyResult) -> None:
        in_plan = set(todo)
        pending = dict(todo)
        running: dict[Future[AppOutcome], str] = {}
        finished: dict[str, bool] = {}

        def settle(name: str, outcome: AppOutcome) -> None:
            result.outcomes[name] = outcome
            finished[name] = outcome.ok
            self.reporter.done(name, outcome.ok, outcome.message)

        threads = min(MAX_THREADS, max(self.workers, len(todo)))
        with ThreadPoolExecutor(threads, thread_name_prefix="diplo-apply") as pool:
            while pending or running:
                progressed = False
                for name in sorted(pending):
                    deps = [d for d in pending[name].depends_on if d in in_plan]
                    failed = [d for d in deps if finished.get(d) is False]
                    if self.cancel_all.is_set():
                        p = pending.pop(name)
                        message = f"{name}: cancelled ({self.cancel_reason}) before it started"
                        settle(
                            name,
                            AppOutcome(
                                name, p.kind, False, message, "queued", skipped=True, cancelled=True
                            ),
                        )
                        progressed = True
                    elif failed:
                        p = pending.pop(name)
                        message = f"{name}: skipped: dependency {failed[0]!r} failed"
                        settle(
                            name,
                            AppOutcome(name, p.kind, False, message, "depends_on", skipped=True),
                        )
                        progressed = True
                    elif all(finished.get(d) is True for d in deps):
                        running[pool.submit(self._run_app, pending.pop(name))] = name
                        progressed = True
                if running:
                    done, _ = wait(list(running), timeout=POLL, return_when=FIRST_COMPLETED)
                    for fut in done:
                        name = running.pop(fut)
                        settle(name, fut.result())
                elif not progressed:  # unreachable: cycles are rejected with the manifest
                    raise RuntimeError(f"cannot order apps: {sorted(pending)}")

    # --- one app -------------------------------------------------------------------------

    def _run_app(self, p: AppPlan) -> AppOutcome:
        with self._slots:
            return self._run_app_in_slot(p)

    def _run_app_in_slot(self, p: AppPlan) -> AppOutcome:
        if p.kind == "remove":
            return self._remove_app(p)
        spec = p.spec
        assert spec is not None
        mutating = any(isinstance(a, RunContainer) for a in p.actions)
        dep_id = (
            self.ledger.start_deployment(
                p.app,
                p.project,
                spec.spec_hash,
                revision=self.revisions.get(p.app, self.revision),
                record=app_record(spec),
                rollback_of=self.rollback_of.get(p.app),
            )
            if mutating
            else None
        )
        bound = log.bind(app=p.app, kind=p.kind, deployment=dep_id)
        bound.info("app.apply", reason=p.reason)
        job = _Job(self, p.app, spec.deploy_timeout, dep_id)
        container_id: str | None = None
        image_id: str | None = None
        try:
            for dep in p.depends_on:
                self._await_dependency(job, dep)
            for action in p.actions:
                job.check()
                if isinstance(action, BuildImage):
                    job.step = "build"
                    self.reporter.step(p.app, "build", action.tag)
                    image_id = self._guard("build", lambda a=action: self._build(p, a, job))
                elif isinstance(action, PullImage):
                    job.step = "pull"
                    self.reporter.step(p.app, "pull", action.image)
                    image_id = self._guard(
                        "pull", lambda a=action: self.runtime.pull(a.image, None)
                    )
                elif isinstance(action, EnsureVolume):
                    self.reporter.step(p.app, "volume", action.name)
                    labels = {
                        **dict(spec.labels),
                        LABEL_PROJECT: action.project,
                        LABEL_APP: action.app,
                    }
                    self._guard(
                        "volume", lambda a=action, lb=labels: self.runtime.ensure_volume(a.name, lb)
                    )
                elif isinstance(action, RunContainer):
                    image_id = image_id or action.image_id
                    if image_id is None:
                        image_id = self._guard(
                            "image", lambda a=action: self.runtime.image_id(a.spec.image)
                        )
                    container_id = self._replace(job, action)
                elif isinstance(action, StartContainer):
                    self.reporter.step(p.app, "start", action.container.name)
                    self._guard("start", lambda a=action: self.runtime.start(a.container.id))
                    self.ledger.event("app.started", f"started {action.container.name}", p.app)
                elif isinstance(action, RemoveContainers):
                    self.reporter.step(p.app, "cleanup", action.reason)
                    for c in action.containers:
                        self._guard("cleanup", lambda c=c: self.runtime.remove(c.id))
                elif isinstance(action, RecordApplied):
                    self.ledger.record_applied(
                        p.app, p.project, action.spec.spec_hash, action.spec.public_spec(), None
                    )
        except _Cancelled as exc:
            bound.warning("app.cancelled", step=exc.step, by=exc.by)
            why = f"cancelled by {exc.by}"
            if dep_id is not None:
                self.ledger.finish_deployment(dep_id, "cancelled", step=exc.step, error=why)
            message = f"{p.app}: {exc.step} {why}; the previous revision was kept"
            return AppOutcome(
                p.app, p.kind, False, message, exc.step, cancelled=True, deployment_id=dep_id
            )
        except _StepFailed as exc:
            bound.warning("app.failed", step=exc.step, error=exc.cause)
            if dep_id is not None:
                self.ledger.finish_deployment(dep_id, "failed", step=exc.step, error=exc.cause)
            message = str(DeployFailed(p.app, exc.step, exc.cause))
            return AppOutcome(p.app, p.kind, False, message, exc.step, deployment_id=dep_id)

        if dep_id is not None:
            run = next(a for a in p.actions if isinstance(a, RunContainer))
            self.ledger.set_ports(
                p.app, [PortAllocation(p.app, r.key, r.host_ip, r.host_port) for r in run.ports]
            )
            self.ledger.finish_deployment(
                dep_id,
                "succeeded",
                image_id=image_id,
                applied=(p.app, p.project, spec.spec_hash, spec.public_spec()),
            )
            if image_id:
                self._keep_image(p.app, dep_id, image_id, spec.keep_images, bound)
        bound.info("app.done", result="succeeded")
        return AppOutcome(
            p.app,
            p.kind,
            True,
            _success_message(p),
            deployment_id=dep_id,
            container_id=container_id,
        )

    def _keep_image(self, app: str, dep_id: int, image_id: str, keep: int, bound: Any) -> None:
        """Tag the image this deployment runs so that a rollback needs no rebuild or pull,
        and drop the tags of older deployments beyond `keep` (Docker deletes an image once
        no tag and no container holds it). A failure here never fails the deploy."""
        try:
            tag = kept_image_ref(app, dep_id)
            self.runtime.tag_image(image_id, tag)
            self.ledger.keep_image(dep_id, tag)
        except DiploError as exc:
            bound.warning("image.keep_failed", error=exc.message)
        self._drop_kept_images(app, keep)

    def _drop_kept_images(self, app: str, keep: int) -> None:
        try:
            drop_kept_images(self.runtime, self.ledger, app, keep)
        except DiploError as exc:
            log.warning("image.prune_failed", app=app, error=exc.message)

    def _guard(self, step: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DiploError as exc:
            raise _StepFailed(step, exc.message) from exc

    def _build(self, p: AppPlan, action: BuildImage, job: _Job) -> str:
        labels = {LABEL_PROJECT: p.project, LABEL_APP: p.app}
        if p.spec is not None:
            labels = {**dict(p.spec.labels), **labels}
        labels["diplo.build-hash"] = action.build.build_hash
        try:
            image_id = self.runtime.build(action.tag, action.build, labels, None, job.should_stop)
        except BuildStopped:
            job.check("build")  # raises the reason: cancelled or past the deadline
            raise
        self.ledger.record_build(action.tag, action.build.build_hash, image_id)
        return image_id

    def _await_dependency(self, job: _Job, dep: str) -> None:
        """An app starts once what it depends on is healthy. Dependencies deployed in this
        run were health-gated already; others are checked here."""
        dep_plan = self._plan.app(dep)
        if dep_plan is None or dep_plan.actions or dep_plan.spec is None:
            return
        if dep_plan.current is None:
            raise _StepFailed("depends_on", f"dependency {dep!r} has no container")
        self.reporter.step(job.app, "depends_on", f"waiting for {dep} to be healthy")
        try:
            self._await_healthy(
                job, dep, dep_plan.spec, dep_plan.current.id, dep_plan.ports, record=False
            )
        except _StepFailed as exc:
            why = f"dependency {dep!r} is not healthy: {exc.cause}"
            raise _StepFailed("depends_on", why) from exc

    def _replace(self, job: _Job, action: RunContainer) -> str:
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
                    self.reporter.step(app, "stop-old", old.name)
                    self._guard(
                        "stop old container", lambda o=old: self.runtime.stop(o.id, timeout)
                    )
                    stopped.append(old)
                if old.name == action.name:
                    aside = f"{old.name}-old-{old.short_id}"
                    self._guard(
                        "rename old container", lambda o=old, n=aside: self.runtime.rename(o.id, n)
                    )
                    renamed[old.id] = old.name
            job.check("create")
            job.step = "create"
            self.reporter.step(app, "create", action.name)
            cspec = container_spec(action, timeout)
            new_id = self._guard("create", lambda: self.runtime.create(cspec))
            job.step = "start"
            self.reporter.step(app, "start", action.name)
            self._guard("start", lambda: self.runtime.start(new_id))
            if self.wait:
                self._await_healthy(job, app, spec, new_id, action.ports)
            else:
                state = self._guard("start", lambda: self.runtime.state(new_id))
                if state.status != "running":
                    raise _StepFailed("start", self._exit_reason(new_id, state))
        except (_StepFailed, _Cancelled):
            self._roll_back(app, new_id, stopped, renamed)
            raise
        for old in action.replaces:
            self.reporter.step(app, "cleanup", old.name)
            try:
                self.runtime.remove(old.id)
            except DiploError as exc:  # the new container runs; a leftover is only noise
                log.warning("app.cleanup_failed", app=app, container=old.name, error=exc.message)
        return new_id

    def _await_healthy(
        self,
        job: _Job,
        app: str,
        spec: DesiredApp,
        container_id: str,
        ports: tuple[ResolvedPort, ...],
        *,
        record: bool = True,
    ) -> Tracker:
        """Watch the container until it is healthy (returns), crashes or turns unhealthy
        (_StepFailed), or the deadline passes or a cancel arrives. Holds no engine slot."""
        h = spec.health
        policy = HealthPolicy(h.interval, h.timeout, h.retries, h.start_period, h.kind != "none")
        tracker = Tracker()
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
                    state = self._guard("health", lambda: self.runtime.state(container_id))
                    looked_at = self._clock()
                running = state.status == "running" and state.restart_count == 0
                uptime = self._wall() - state.started_at if state.started_at else 0.0
                probe = None
                if running and policy.probed:
                    probe = run_probe(
                        h, probe_address(h, ports, state.ip), self.runtime, container_id
                    )
                    if probe.ok and reuse:
                        state = self._guard("health", lambda: self.runtime.state(container_id))
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
                    raise _StepFailed("start", self._exit_reason(container_id, state))
                if tracker.status == Health.UNHEALTHY:
                    what = "the image's HEALTHCHECK reports unhealthy"
                    if tracker.last is not None:
                        what = (
                            f"unhealthy after {tracker.failures} failed probes "
                            f"(last: {tracker.last.detail})"
                        )
                    raise _StepFailed("health", what + self._log_tail(container_id))
        finally:
            self._slots.acquire()

    def _log_tail(self, container_id: str) -> str:
        lines: list[str] = []
        try:
            for chunk in self.runtime.logs(container_id, tail=LOG_LINES_ON_FAILURE, follow=False):
                lines.extend(chunk.decode("utf-8", "replace").splitlines())
        except DiploError:
            return ""
        if not lines:
            return ""
        return "; last log lines:\n      " + "\n      ".join(lines[-LOG_LINES_ON_FAILURE:])

    def _exit_reason(self, container_id: str, state: ContainerState) -> str:
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
        return text + self._log_tail(container_id)

    def _roll_back(
        self,
        app: str,
        new_id: str | None,
        stopped: list[ObservedContainer],
        renamed: dict[str, str],
    ) -> None:
        """Put the app back as it was: the new container goes, the old ones come back."""
        self.reporter.step(app, "rollback", "restoring the previous revision" if stopped else "")
        try:
            if new_id is not None:
                self.runtime.remove(new_id)
            for old_id, name in renamed.items():
                self.runtime.rename(old_id, name)
            for old in stopped:
                self.runtime.start(old.id)
        except DiploError as exc:
            log.error("app.rollback_failed", app=app, error=exc.message)
            self.ledger.event("rollback.failed", exc.message, app)
            return
        if stopped:
            self.ledger.event("rollback", "previous revision restarted", app)

    def _remove_app(self, p: AppPlan) -> AppOutcome:
        self.reporter.step(p.app, "remove")
        try:
            for action in p.actions:
                if isinstance(action, RemoveContainers):
                    for c in action.containers:
                        self._guard("remove", lambda c=c: self.runtime.remove(c.id))
        except _StepFailed as exc:
            return AppOutcome(
                p.app, p.kind, False, str(DeployFailed(p.app, exc.step, exc.cause)), exc.step
            )
        self.ledger.forget_app(p.app)
        self._drop_kept_images(p.app, keep=0)
        return AppOutcome(p.app, p.kind, True, "removed (named volumes kept)")


def kept_image_ref(app: str, dep_id: int) -> str:
    return f"diplo-kept/{app}:d{dep_id}"


def drop_kept_images(runtime: Runtime, ledger: Ledger, app: str, keep: int) -> list[str]:
    """Untag the kept images of all but the `keep` newest deployments of `app` (an app
    that is removed keeps none); returns the tags dropped."""
    dropped = []
    for dep_id, tag in ledger.kept_images(app)[keep:]:
        runtime.untag_image(tag)
        ledger.drop_kept_image(dep_id)
        dropped.append(tag)
    return dropped


def container_spec(action: RunContainer, stop_timeout: int) -> ContainerSpec:
    spec = action.spec
    return ContainerSpec(
        name=action.name,
        image=spec.image,
        labels={
            **dict(spec.labels),
            LABEL_PROJECT: spec.project,
            LABEL_APP: action.app,
            LABEL_SPEC_HASH: spec.spec_hash,
            LABEL_REPLICA: "1",
        },
        network=action.network,
        aliases=(action.app,),
        command=spec.command,
        entrypoint=spec.entrypoint,
        env=spec.env,
        ports=action.ports,
        mounts=spec.mounts,
        restart=spec.restart,
        memory=spec.memory,
        nano_cpus=spec.nano_cpus,
        init=spec.init,
        stop_signal=spec.stop_signal,
        stop_timeout=stop_timeout,
        user=spec.user,
        working_dir=spec.working_dir,
    )


def _success_message(p: AppPlan) -> str:
    if p.kind == "create":
        return "created"
    if p.kind == "update":
        return f"updated ({p.reason})" if p.reason else "updated"
    if p.kind == "start":
        return "started"
    return "recorded"
