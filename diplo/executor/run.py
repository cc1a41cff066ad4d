"""The executor: runs a Plan against a Runtime and records it in the Ledger.

Apps run in parallel; `workers` bounds the engine operations in flight, and waiting for
health holds no slot, so one app's slow build or failing health check never delays the
others. An app starts after the apps it depends on are healthy, and is skipped when one
of them failed. Each deploy has a deadline and can be cancelled (Ctrl-C, or
`diplo cancel` from another process, through the ledger).

How a container is replaced is the app's deploy strategy (`strategy.py`: `recreate.py`
and `startfirst.py`). This module schedules apps, runs each one's actions and keeps the
ledger's deployment rows."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial

import structlog
from structlog.typing import FilteringBoundLogger

from diplo.errors import DeployFailed, DiploError
from diplo.executor import images, traffic
from diplo.executor.gate import Gate
from diplo.executor.job import POLL, Cancelled, Job, NullReporter, Reporter, StepFailed, guard
from diplo.executor.recreate import Recreate
from diplo.executor.startfirst import StartFirst
from diplo.executor.strategy import DeployContext, Router, Strategy, StrategyFactory
from diplo.ledger import Ledger
from diplo.model import (
    LABEL_APP,
    LABEL_PROJECT,
    AppPlan,
    BuildImage,
    DesiredApp,
    EnsureVolume,
    Plan,
    PortAllocation,
    PullImage,
    RecordApplied,
    RemoveContainers,
    Revision,
    RunContainer,
    StartContainer,
    app_record,
)
from diplo.runtime.base import Runtime

log = structlog.get_logger("diplo.executor")

MAX_THREADS = 64

# The deploy strategies by the name an app's `deploy.strategy` gives.
STRATEGIES: dict[str, StrategyFactory] = {"recreate": Recreate, "start-first": StartFirst}


def strategy_for(spec: DesiredApp, ctx: DeployContext) -> Strategy:
    return STRATEGIES[spec.strategy](ctx)


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
        router: Router | None = None,
    ) -> None:
        self.runtime = runtime
        self.router = router  # the host's proxy, when it has one
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
        try:
            for dep_id in self.ledger.close_interrupted():
                log.warning("deploy.interrupted", deployment=dep_id)
        except DiploError as exc:  # only bookkeeping: the run goes on
            log.warning("deploy.sweep_failed", error=exc.message)
        for net in plan.networks:
            try:
                self.runtime.ensure_network(net.name, {LABEL_PROJECT: net.project})
            except Exception as exc:  # never an exception out of `run`
                why = exc.message if isinstance(exc, DiploError) else _internal(exc)
                for p in plan.apps:
                    if p.actions:
                        message = str(DeployFailed(p.app, "network", why))
                        result.outcomes[p.app] = AppOutcome(
                            p.app, p.kind, False, message, "network"
                        )
                return result
        todo = {p.app: p for p in plan.apps if p.actions}
        for p in plan.apps:
            if not p.actions:
                result.outcomes[p.app] = AppOutcome(p.app, p.kind, True, p.reason or "in sync")
        self._schedule(todo, result, self._context())
        return result

    def _context(self) -> DeployContext:
        # Built when a run starts, from the attributes as they are then (`wait`, the clock).
        gate = Gate(
            self.runtime,
            self.ledger,
            self.reporter,
            self._slots,
            clock=self._clock,
            sleep=self._sleep,
            wall=self._wall,
        )
        return DeployContext(
            self.runtime,
            self.ledger,
            self.reporter,
            gate,
            self.wait,
            router=self.router,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _run_cancelled(self) -> str | None:
        return self.cancel_reason if self.cancel_all.is_set() else None

    def _schedule(self, todo: dict[str, AppPlan], result: ApplyResult, ctx: DeployContext) -> None:
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
                        running[pool.submit(self._run_app, pending.pop(name), ctx)] = name
                        progressed = True
                if running:
                    done, _ = wait(list(running), timeout=POLL, return_when=FIRST_COMPLETED)
                    for fut in done:
                        name = running.pop(fut)
                        settle(name, fut.result())
                elif not progressed:  # unreachable: cycles are rejected with the manifest
                    raise RuntimeError(f"cannot order apps: {sorted(pending)}")

    # --- one app -------------------------------------------------------------------------

    def _run_app(self, p: AppPlan, ctx: DeployContext) -> AppOutcome:
        with self._slots:
            try:
                return self._run_app_in_slot(p, ctx)
            except Exception as exc:  # e.g. the ledger failed before a deployment row
                return self._internal_error(p, "prepare", exc, None)

    def _run_app_in_slot(self, p: AppPlan, ctx: DeployContext) -> AppOutcome:
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
        job = Job(
            p.app,
            spec.deploy_timeout,
            dep_id,
            clock=self._clock,
            run_cancelled=self._run_cancelled,
            cancel_requested=self.ledger.cancel_requested,
        )
        runtime = self.runtime
        container_id: str | None = None
        image_id: str | None = None
        try:
            for dep in p.depends_on:
                ctx.gate.await_dependency(job, dep, self._plan.app(dep))
            for action in p.actions:
                job.check()
                if isinstance(action, BuildImage):
                    job.step = "build"
                    self.reporter.step(p.app, "build", action.tag)
                    build = partial(images.build, runtime, self.ledger, p, action, job)
                    image_id = guard("build", build)
                elif isinstance(action, PullImage):
                    job.step = "pull"
                    self.reporter.step(p.app, "pull", action.image)
                    image_id = guard("pull", partial(runtime.pull, action.image, None))
                elif isinstance(action, EnsureVolume):
                    self.reporter.step(p.app, "volume", action.name)
                    labels = {
                        **dict(spec.labels),
                        LABEL_PROJECT: action.project,
                        LABEL_APP: action.app,
                    }
                    guard("volume", partial(runtime.ensure_volume, action.name, labels))
                elif isinstance(action, RunContainer):
                    image_id = image_id or action.image_id
                    if image_id is None:
                        image_id = guard("image", partial(runtime.image_id, action.spec.image))
                    container_id = strategy_for(spec, ctx).deploy(job, action)
                elif isinstance(action, StartContainer):
                    self.reporter.step(p.app, "start", action.container.name)
                    if action.rename_to and action.rename_to != action.container.name:
                        rename = partial(runtime.rename, action.container.id, action.rename_to)
                        guard("start", rename)
                    guard("start", partial(runtime.start, action.container.id))
                    self.ledger.event("app.started", f"started {action.container.name}", p.app)
                elif isinstance(action, RemoveContainers) and action.keeps is not None:
                    self._scale_down(job, ctx, spec, action)
                elif isinstance(action, RemoveContainers):
                    self.reporter.step(p.app, "cleanup", action.reason)
                    for c in action.containers:
                        guard("cleanup", partial(runtime.remove, c.id))
                elif isinstance(action, RecordApplied):
                    self.ledger.record_applied(
                        p.app, p.project, action.spec.spec_hash, action.spec.public_spec(), None
                    )
        except Cancelled as exc:
            bound.warning("app.cancelled", step=exc.step, by=exc.by)
            why = f"cancelled by {exc.by}"
            if dep_id is not None:
                self.ledger.finish_deployment(dep_id, "cancelled", step=exc.step, error=why)
            message = f"{p.app}: {exc.step} {why}; the previous revision was kept"
            return AppOutcome(
                p.app, p.kind, False, message, exc.step, cancelled=True, deployment_id=dep_id
            )
        except StepFailed as exc:
            bound.warning("app.failed", step=exc.step, error=exc.cause)
            if dep_id is not None:
                self.ledger.finish_deployment(dep_id, "failed", step=exc.step, error=exc.cause)
            message = str(DeployFailed(p.app, exc.step, exc.cause))
            return AppOutcome(p.app, p.kind, False, message, exc.step, deployment_id=dep_id)
        except Exception as exc:
            # Not a failure we expected (a bug, an odd input): the strategy has rolled
            # back already; the deployment is closed as failed, never left `running`.
            return self._internal_error(p, job.step, exc, dep_id)

        try:
            self._finish_success(p, spec, dep_id, image_id, bound)
        except Exception as exc:  # the ledger could not record it: not a success
            return self._internal_error(p, "record", exc, dep_id)
        bound.info("app.done", result="succeeded")
        return AppOutcome(
            p.app,
            p.kind,
            True,
            _success_message(p),
            deployment_id=dep_id,
            container_id=container_id,
        )

    def _scale_down(
        self, job: Job, ctx: DeployContext, spec: DesiredApp, action: RemoveContainers
    ) -> None:
        """Fewer replicas: the proxy stops sending to the removed ones (and waits for
        their requests to end), then they stop within their grace period and go. The
        replicas that stay are not touched."""
        self.reporter.step(spec.name, "scale-down", action.reason)
        if traffic.router_of(ctx, spec) is not None:
            stay = [c.id for c in action.keeps or ()]
            gone = [c.id for c in action.containers if c.state in ("running", "restarting")]
            retired = traffic.upstreams(ctx, spec, gone)
            kept = traffic.upstreams(ctx, spec, stay)
            guard("switch", partial(traffic.switch, ctx, spec, kept))
            by = traffic.drain(ctx, job, spec, retired)
            if by is not None:  # a cancel: the removed replicas serve again
                guard("switch", partial(traffic.switch, ctx, spec, [*kept, *retired]))
                raise Cancelled("drain", by)
        grace = math.ceil(spec.stop_grace_period)
        for c in action.containers:
            if c.state in ("running", "restarting", "paused"):
                guard("stop", partial(self.runtime.stop, c.id, grace))
            guard("cleanup", partial(self.runtime.remove, c.id))
        names = ", ".join(c.name for c in action.containers)
        self.ledger.event("app.scaled", f"{action.reason}: removed {names}", spec.name)

    def _finish_success(
        self,
        p: AppPlan,
        spec: DesiredApp,
        dep_id: int | None,
        image_id: str | None,
        bound: FilteringBoundLogger,
    ) -> None:
        runtime = self.runtime
        if dep_id is not None:
            run = next(a for a in p.actions if isinstance(a, RunContainer))
            self.ledger.set_ports(
                p.app,
                [
                    PortAllocation(p.app, r.key, r.host_ip, r.host_port)
                    for r in run.ports
                    if r.host_port  # an ephemeral port is the engine's, per container
                ],
            )
            self.ledger.finish_deployment(
                dep_id,
                "succeeded",
                image_id=image_id,
                applied=(p.app, p.project, spec.spec_hash, spec.public_spec()),
            )
            if image_id:
                images.keep_image(
                    runtime, self.ledger, p.app, dep_id, image_id, spec.keep_images, bound
                )

    def _internal_error(
        self, p: AppPlan, step: str, exc: Exception, dep_id: int | None
    ) -> AppOutcome:
        """An unexpected exception during one app's deploy: a failed outcome (never an
        exception out of `run`), and the deployment closed as failed."""
        cause = _internal(exc)
        # The type and message only: a traceback's locals could hold secrets (env values).
        log.error("app.internal_error", app=p.app, step=step, error=cause)
        if dep_id is not None:
            try:
                self.ledger.finish_deployment(dep_id, "failed", step=step, error=cause)
            except Exception as ledger_exc:
                log.error("app.finish_failed", app=p.app, deployment=dep_id, error=str(ledger_exc))
        message = str(DeployFailed(p.app, step, cause))
        return AppOutcome(p.app, p.kind, False, message, step, deployment_id=dep_id)

    def _remove_app(self, p: AppPlan) -> AppOutcome:
        self.reporter.step(p.app, "remove")
        try:
            for action in p.actions:
                if isinstance(action, RemoveContainers):
                    for c in action.containers:
                        guard("remove", partial(self.runtime.remove, c.id))
        except StepFailed as exc:
            return AppOutcome(
                p.app, p.kind, False, str(DeployFailed(p.app, exc.step, exc.cause)), exc.step
            )
        self.ledger.forget_app(p.app)
        images.prune_kept_images(self.runtime, self.ledger, p.app, keep=0)
        return AppOutcome(p.app, p.kind, True, "removed (named volumes kept)")


def _internal(exc: Exception) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"


def _success_message(p: AppPlan) -> str:
    if p.kind == "create":
        return "created"
    if p.kind == "update":
        return f"updated ({p.reason})" if p.reason else "updated"
    if p.kind == "start":
        return "started"
    return "recorded"
