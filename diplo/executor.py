"""The executor: runs a Plan against a Runtime and records it in the Ledger.

Apps run in parallel on a bounded pool; an app starts only after the apps it depends on
have finished, and is skipped when one of them failed. A replacement stops the old
container, starts the new one and removes the old one only once the new one runs;
if the new one does not run, it is removed and the old one is started again."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from diplo.errors import DeployFailed, DiploError
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
    EnsureVolume,
    ObservedContainer,
    Plan,
    PortAllocation,
    PullImage,
    RecordApplied,
    RemoveContainers,
    RunContainer,
    StartContainer,
)
from diplo.runtime.base import Runtime

log = structlog.get_logger("diplo.executor")
T = TypeVar("T")

LOG_LINES_ON_FAILURE = 20
# A new container must stay up this long (no exit, no restart) to count as started.
# The health issue replaces this with real health checks.
SETTLE_SECONDS = 1.0
SETTLE_POLL = 0.25
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


class _StepFailed(Exception):
    def __init__(self, step: str, cause: str) -> None:
        super().__init__(cause)
        self.step = step
        self.cause = cause


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        ledger: Ledger,
        reporter: Reporter | None = None,
        *,
        workers: int = 8,
        settle: float = SETTLE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.reporter = reporter or NullReporter()
        self.workers = max(1, workers)
        self.settle = settle
        self._sleep = sleep
        # `workers` bounds the engine calls in flight; waiting for a new container to
        # settle holds no slot, so a hundred apps settle at once rather than in batches.
        self._slots = threading.BoundedSemaphore(self.workers)

    def run(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        for net in plan.networks:
            try:
                self.runtime.ensure_network(net.name, {LABEL_PROJECT: net.project})
            except DiploError as exc:
                for app_plan in plan.apps:
                    if app_plan.actions:
                        result.outcomes[app_plan.app] = AppOutcome(
                            app_plan.app, app_plan.kind, False, f"network: {exc}", "network"
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
        threads = min(MAX_THREADS, max(self.workers, len(todo)))
        with ThreadPoolExecutor(threads, thread_name_prefix="diplo-apply") as pool:
            while pending or running:
                progressed = False
                for name in sorted(pending):
                    deps = [d for d in pending[name].depends_on if d in in_plan]
                    failed = [d for d in deps if finished.get(d) is False]
                    if failed:
                        p = pending.pop(name)
                        message = f"skipped: dependency {failed[0]!r} failed"
                        result.outcomes[name] = AppOutcome(
                            name, p.kind, False, message, "depends_on", skipped=True
                        )
                        finished[name] = False
                        self.reporter.done(name, False, message)
                        progressed = True
                    elif all(finished.get(d) is True for d in deps):
                        running[pool.submit(self._run_app, pending.pop(name))] = name
                        progressed = True
                if running:
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in done:
                        name = running.pop(fut)
                        result.outcomes[name] = fut.result()
                        finished[name] = result.outcomes[name].ok
                elif not progressed:  # unreachable: cycles are rejected with the manifest
                    raise RuntimeError(f"cannot order apps: {sorted(pending)}")

    # --- one app -------------------------------------------------------------------------

    def _run_app(self, p: AppPlan) -> AppOutcome:
        with self._slots:
            return self._run_app_in_slot(p)

    def _run_app_in_slot(self, p: AppPlan) -> AppOutcome:
        bound = log.bind(app=p.app, kind=p.kind)
        if p.kind == "remove":
            return self._remove_app(p)
        dep_id: int | None = None
        spec = p.spec
        mutating = any(isinstance(a, RunContainer) for a in p.actions)
        if mutating and spec is not None:
            dep_id = self.ledger.start_deployment(p.app, p.project, spec.spec_hash)
            bound = bound.bind(deployment=dep_id)
        bound.info("app.apply", reason=p.reason)
        container_id: str | None = None
        image_id: str | None = None
        try:
            for action in p.actions:
                if isinstance(action, BuildImage):
                    self.reporter.step(p.app, "build", action.tag)
                    image_id = self._guard("build", lambda a=action: self._build(p, a))
                elif isinstance(action, PullImage):
                    self.reporter.step(p.app, "pull", action.image)
                    image_id = self._guard(
                        "pull", lambda a=action: self.runtime.pull(a.image, None)
                    )
                elif isinstance(action, EnsureVolume):
                    self.reporter.step(p.app, "volume", action.name)
                    labels = {LABEL_PROJECT: action.project, LABEL_APP: action.app}
                    if spec is not None:
                        labels = {**dict(spec.labels), **labels}
                    self._guard(
                        "volume", lambda a=action, lb=labels: self.runtime.ensure_volume(a.name, lb)
                    )
                elif isinstance(action, RunContainer):
                    if image_id is None:
                        image_id = self._guard(
                            "image", lambda a=action: self.runtime.image_id(a.spec.image)
                        )
                    container_id = self._replace(action)
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
        except _StepFailed as exc:
            bound.warning("app.failed", step=exc.step, error=exc.cause)
            if dep_id is not None:
                self.ledger.finish_deployment(dep_id, "failed", step=exc.step, error=exc.cause)
            message = str(DeployFailed(p.app, exc.step, exc.cause))
            self.reporter.done(p.app, False, message)
            return AppOutcome(p.app, p.kind, False, message, exc.step, deployment_id=dep_id)

        if dep_id is not None and spec is not None:
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
        message = _success_message(p)
        bound.info("app.done", result="succeeded")
        self.reporter.done(p.app, True, message)
        return AppOutcome(
            p.app, p.kind, True, message, deployment_id=dep_id, container_id=container_id
        )

    def _guard(self, step: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DiploError as exc:
            raise _StepFailed(step, exc.message) from exc

    def _build(self, p: AppPlan, action: BuildImage) -> str:
        labels = {LABEL_PROJECT: p.project, LABEL_APP: p.app}
        if p.spec is not None:
            labels = {**dict(p.spec.labels), **labels}
        labels["diplo.build-hash"] = action.build.build_hash
        image_id = self.runtime.build(action.tag, action.build, labels, None)
        self.ledger.record_build(action.tag, action.build.build_hash, image_id)
        return image_id

    def _replace(self, action: RunContainer) -> str:
        spec = action.spec
        app = action.app
        timeout = math.ceil(spec.stop_grace_period)
        stopped: list[ObservedContainer] = []
        renamed: dict[str, str] = {}
        new_id: str | None = None
        try:
            for old in action.replaces:
                if old.state in ("running", "restarting", "paused"):
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
            self.reporter.step(app, "create", action.name)
            cspec = ContainerSpec(
                name=action.name,
                image=spec.image,
                labels={
                    **dict(spec.labels),
                    LABEL_PROJECT: spec.project,
                    LABEL_APP: app,
                    LABEL_SPEC_HASH: spec.spec_hash,
                    LABEL_REPLICA: "1",
                },
                network=action.network,
                aliases=(app,),
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
                stop_timeout=timeout,
                user=spec.user,
                working_dir=spec.working_dir,
            )
            new_id = self._guard("create", lambda: self.runtime.create(cspec))
            self.reporter.step(app, "start", action.name)
            self._guard("start", lambda: self.runtime.start(new_id))
            self._settle(app, new_id)
        except _StepFailed:
            self._roll_back(app, new_id, stopped, renamed)
            raise
        for old in action.replaces:
            self.reporter.step(app, "cleanup", old.name)
            try:
                self.runtime.remove(old.id)
            except DiploError as exc:  # the new container runs; a leftover is only noise
                log.warning("app.cleanup_failed", app=app, container=old.name, error=exc.message)
        return new_id

    def _settle(self, app: str, container_id: str) -> None:
        """Watch the new container for `settle` seconds, holding no engine slot: an exit
        or a restart in that window fails the start."""
        self._slots.release()
        try:
            waited = 0.0
            while True:
                state = self._guard("start", lambda: self.runtime.state(container_id))
                if state.status != "running" or state.restart_count > 0:
                    raise _StepFailed("start", self._exit_reason(container_id, state))
                if waited >= self.settle:
                    return
                step = min(SETTLE_POLL, self.settle - waited)
                self._sleep(step)
                waited += step
        finally:
            self._slots.acquire()

    def _exit_reason(self, container_id: str, state: ContainerState) -> str:
        lines: list[str] = []
        try:
            for chunk in self.runtime.logs(container_id, tail=LOG_LINES_ON_FAILURE, follow=False):
                lines.extend(chunk.decode("utf-8", "replace").splitlines())
        except DiploError:
            pass
        text = f"the container exited with code {state.exit_code}"
        if state.restart_count:
            text += f" and was restarted {state.restart_count} time(s)"
        if state.error:
            text += f" ({state.error})"
        if lines:
            shown = "\n      ".join(lines[-LOG_LINES_ON_FAILURE:])
            text += f"; last log lines:\n      {shown}"
        return text

    def _roll_back(
        self,
        app: str,
        new_id: str | None,
        stopped: list[ObservedContainer],
        renamed: dict[str, str],
    ) -> None:
        """Put the app back as it was: the new container goes, the old ones come back."""
        self.reporter.step(app, "rollback")
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
            self.ledger.event("rollback", "previous container restarted", app)

    def _remove_app(self, p: AppPlan) -> AppOutcome:
        self.reporter.step(p.app, "remove")
        try:
            for action in p.actions:
                if isinstance(action, RemoveContainers):
                    for c in action.containers:
                        self._guard("remove", lambda c=c: self.runtime.remove(c.id))
        except _StepFailed as exc:
            message = str(DeployFailed(p.app, exc.step, exc.cause))
            self.reporter.done(p.app, False, message)
            return AppOutcome(p.app, p.kind, False, message, exc.step)
        self.ledger.forget_app(p.app)
        self.reporter.done(p.app, True, "removed (named volumes kept)")
        return AppOutcome(p.app, p.kind, True, "removed (named volumes kept)")


def _success_message(p: AppPlan) -> str:
    if p.kind == "create":
        return "created"
    if p.kind == "update":
        return f"updated ({p.reason})" if p.reason else "updated"
    if p.kind == "start":
        return "started"
    return "recorded"
