"""The controller behind `diplo serve`: keeps a host converged onto its sources.

Level-based, after Kubernetes controller-runtime: a trigger (a file change, an engine
event, the periodic resync, an API call) only says "look at app X again"; the reconcile
re-reads the desired state, the engine and the ledger every time, through the operations
layer (`ops.apply`). One app is never reconciled by two workers at once (the work
queue), nor by `diplo apply` at the same time (the per-app host locks). A reconcile
returns a `Result`, read in one place: a failing app is retried with backoff when its
error may go away, and never blocks the others."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from diplo.controller.bus import Bus, BusReporter
from diplo.controller.healing import Healer
from diplo.controller.memo import NothingToDo, fingerprint
from diplo.controller.sources import FolderSource, GitSource, Source
from diplo.controller.state import DesiredStore
from diplo.controller.triggers import Triggers
from diplo.controller.view import View
from diplo.controller.workqueue import ALL, RELOAD, WorkQueue
from diplo.errors import DiploError
from diplo.metrics.prom import OwnMetrics
from diplo.model import DesiredApp, Observed
from diplo.ops import lifecycle, rollback
from diplo.ops import proxy as routed
from diplo.ops.apply import ApplyReport, DeployHandle, Reporter, Watch, apply
from diplo.ops.context import Context
from diplo.ops.listing import SharedListing
from diplo.ops.plan import Prepared

log = structlog.get_logger("diplo.controller")

RECONCILE_LOCK_WAIT = 3600.0  # a reconcile waits this long for a `diplo apply` of its app
COMMAND_LOCK_WAIT = 2.0  # an API command waits this long for a deploy in flight (then 409)
HEALTH_PACE = 0.6  # the share of the health period that a tick's probes are spread over


@dataclass(frozen=True)
class Result:
    """What one reconcile came to."""

    error: str | None = None  # None: the app is as desired, or is left alone
    retry: bool = False  # the error may go away: try again after a backoff
    retry_after: float | None = None  # ...or after this many seconds, when the error says
    held: bool = False  # a release that failed is held back: nothing to report


class Controller:
    def __init__(
        self,
        sources: Path | Source | list[Source],
        ctx: Context,
        *,
        resync: float = 60.0,
        workers: int = 4,
        health_every: float = 5.0,
        poll_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(sources, Path):
            sources = [FolderSource(sources)]
        self.sources: list[Source] = sources if isinstance(sources, list) else [sources]
        folders = [s.folder for s in self.sources if isinstance(s, FolderSource)]
        self.manifests: Path | None = folders[0] if folders else None
        self.ctx = ctx
        self.workers = workers
        self.health_every = health_every
        self.queue = WorkQueue(clock)
        self.listing = SharedListing(ctx)  # the engine as the reconciles share it
        self.quiet = NothingToDo()  # what a resync's look may skip (controller/memo.py)
        self.bus = Bus()
        self.state = DesiredStore(self.sources, ctx, self.bus, self._sync_changed)
        self.view = View(ctx, self.bus, self.state, self.sources)
        self.healer = Healer(clock)
        self.meter = OwnMetrics()  # what GET /metrics says of the controller itself
        self.meter.watch_queue(lambda: len(self.queue))
        self._stop = threading.Event()
        self.triggers = Triggers(
            ctx, self.queue, self.bus, self.view, self._stop, resync=resync,
            poll_every=poll_every, clock=clock, on_event=self.listing.event,
        )  # fmt: skip
        # app -> the release whose deploy failed (`_release`: its spec hash and replicas)
        self.failed_release: dict[str, str] = {}
        self.inflight: dict[str, DeployHandle] = {}
        self.started_at = time.time()
        self._threads: list[threading.Thread] = []
        self._restarting: dict[str, threading.Thread] = {}  # apps a heal is restarting
        self._restart_lock = threading.Lock()

    def _sync_changed(self, apps: set[str] | None) -> None:
        self.view.compute_sync(apps)

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.state.remember_deployed()
        self.reload()
        for i in range(self.workers):
            self._spawn(f"diplo-worker-{i}", self._work)
        self._spawn("diplo-engine-events", self.triggers.engine_loop)
        self._spawn("diplo-resync", self.triggers.resync_loop)
        self._spawn("diplo-health", self._health_loop)
        self._spawn("diplo-debounce", self.triggers.debounce_loop)
        if any(isinstance(s, GitSource) for s in self.sources):
            self._spawn("diplo-git-poll", self.triggers.poll_loop)
        if self.manifests is not None:
            self.triggers.watch_folder(self.manifests)
        self.queue.add(ALL)
        log.info("controller.started", sources=[s.name for s in self.sources], workers=self.workers)

    def stop(self, timeout: float = 4.0) -> None:
        """Stop watching and working; apps keep running. Deploys in flight are cancelled
        (their previous revisions stay)."""
        self._stop.set()
        for handle in list(self.inflight.values()):
            handle.cancel("diplo serve stopping")
        self.queue.shutdown()
        self.triggers.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.wait_restarts(max(0.0, deadline - time.monotonic()))
        log.info("controller.stopped")

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _health_loop(self) -> None:
        self.view.refresh()
        # A tick's probes are spread over most of the period (3 s of 5 by default): they
        # then never want the GIL together, which the API's event loop felt as a tail.
        # Each app is still probed once a period; ticks start a period apart.
        pace = self.health_every * HEALTH_PACE
        due = time.monotonic() + self.health_every
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + self.health_every, time.monotonic())  # an overrun: no catching up
            try:
                self.view.refresh(pace=pace)
                self.heal()
                self._proxy(routed.heal)
            except Exception as exc:  # a bug must not end the health loop for good
                log.exception("health.loop_crashed", error=str(exc))

    def _proxy(self, step: Callable[[Context], object]) -> None:
        """Keep the proxy serving every route (a resync), or bring it back (a health
        tick); a failure is logged and tried again next time."""
        try:
            step(self.ctx)
        except DiploError as exc:
            log.warning("proxy.failed", error=exc.message)
            self.bus.publish("proxy.failed", error=exc.message)

    def heal(self) -> None:
        """Restart the apps that turned unhealthy, with backoff."""
        self.healer.tick(
            list(self.view.rows.values()),
            leave_alone=lambda a: (
                a in self.inflight or a in self._restarting or self.state.desired.app(a) is None
            ),
            restart=self._restart_aside,
        )

    def _restart_aside(self, app: str, reason: str) -> None:
        """A heal's restart in a thread of its own: stopping a container can take its
        whole grace period (a PID 1 that ignores SIGTERM), and the health loop must go on
        for every other app meanwhile."""

        def run() -> None:
            self.meter.health_restarts.inc()
            try:
                self.restart(app, reason)
            except DiploError as exc:
                log.warning("app.restart_failed", app=app, error=exc.message)
            except Exception as exc:  # a bug must not pass silently either
                log.exception("app.restart_crashed", app=app, error=str(exc))
            finally:
                with self._restart_lock:
                    self._restarting.pop(app, None)

        with self._restart_lock:
            if app in self._restarting:
                return
            thread = threading.Thread(target=run, name=f"diplo-restart-{app}", daemon=True)
            self._restarting[app] = thread
        thread.start()

    def wait_restarts(self, timeout: float) -> bool:
        """Wait for the heals' restarts in flight; False if some still run."""
        deadline = time.monotonic() + timeout
        with self._restart_lock:
            threads = list(self._restarting.values())
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    # --- work ----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            try:
                self.handle(key)
            except Exception as exc:  # a bug must not kill the worker
                log.exception("reconcile.crashed", app=key, error=str(exc))
            finally:
                self.queue.done(key)

    def handle(self, key: str) -> None:
        """What a worker does with a key of the queue: a reload queues the apps to look
        at (all of them on a resync); an app is reconciled and its result settled."""
        if key in (ALL, RELOAD):
            changed = self.reload()
            if key == ALL:
                self.listing.renew()  # the resync's batch shares one new listing
                self._proxy(routed.converge)
            everything = set(self.state.known) | set(self.view.rows)
            for name in sorted(everything if key == ALL else changed):
                # a resync's look comes after everything else, a worker at a time; an
                # app whose desired state changed is a deploy to make now
                self.queue.add(name, background=key == ALL and name not in changed)
        elif self.queue.in_background(key) and self._unchanged(key):
            self.meter.resync_skips.inc()
            self._settle(key, Result())
        else:
            self._settle(key, self.reconcile(key))

    def _unchanged(self, app: str) -> bool:
        """Whether a resync's look at `app` would find what its last full look found:
        nothing to do (see controller/memo.py)."""
        spec = self.state.desired.app(app)
        if spec is None or app not in self.quiet:
            return False
        observed = self.listing.peek(app)
        if observed is None:
            return False
        record = self.ctx.ledger.snapshot().apps.get(app)
        return self.quiet.still(app, fingerprint(spec, observed, record)) and self._as_shown(
            app, observed
        )

    def reload(self) -> set[str]:
        """Load the sources; returns the apps whose desired state changed."""
        return self.state.reload()

    def reconcile(self, app: str) -> Result:
        rid = uuid.uuid4().hex[:8]
        bound = log.bind(app=app, reconcile_id=rid)
        with structlog.contextvars.bound_contextvars(reconcile_id=rid):
            scope = self.state.scope_for(app)
            if scope is None:
                return Result()  # `prune: false`: an app that left the source keeps running
            # A create or start of an app deployed before is a heal; of a new app, not.
            before = self.view.rows.get(app)
            deployed = before is not None and before.last_deployment is not None
            began = time.monotonic()
            try:
                report = apply(
                    self.ctx,
                    scope,
                    only=frozenset({app}),
                    prune=True,
                    owners=frozenset(s.name for s in self.sources),
                    parallel=1,
                    revision=self.state.loaded.of(app),
                    watch=self._watch(app),
                    skip=lambda prepared: self._hold(app, prepared) or self._defer(app, prepared),
                    lock_wait=RECONCILE_LOCK_WAIT,
                    listing=self.listing,
                    listing_wait=self.queue.in_background(app),  # a heal waits for none
                )
            except DiploError as exc:
                self.listing.invalidate()  # it may be what failed: the retry lists anew
                self.quiet.remember(app, None)
                return Result(exc.message, retry=exc.retryable, retry_after=exc.retry_after)
            self._remember(app, report)
            result = self._outcome(app, report, bound, time.monotonic() - began, deployed)
        if report.result is not None or not self._as_shown(app, report.prepared.observed):
            self.view.refresh([app])
        return result

    def _remember(self, app: str, report: ApplyReport) -> None:
        """A full look that found nothing to do is what later looks compare with."""
        app_plan = report.plan.app(app)
        spec = report.prepared.desired.app(app)
        quiet = report.result is None and app_plan is not None and not app_plan.actions
        seen = None
        if quiet and spec is not None:
            record = report.prepared.snapshot.apps.get(app)
            seen = fingerprint(spec, report.prepared.observed, record)
        self.quiet.remember(app, seen)

    def _as_shown(self, app: str, observed: Observed) -> bool:
        """Whether the app's containers (listed after its lock) are those the view shows, in
        the same states: then a reconcile that did nothing leaves the view as it is (the
        health loop looks at health), and a resync of N apps probes none of them."""
        row = self.view.rows.get(app)
        if row is None:
            return False
        shown = sorted((c["id"], c["state"]) for c in row.containers)
        return shown == sorted((c.short_id, c.state) for c in observed.of_app(app))

    def _watch(self, app: str) -> Watch:
        """A deploy's progress goes to the event bus; its handle is kept for a cancel."""

        @contextlib.contextmanager
        def watching(_: ApplyReport, handle: DeployHandle) -> Iterator[Reporter]:
            self.inflight[app] = handle
            try:
                yield BusReporter(self.bus)
            finally:
                self.inflight.pop(app, None)

        return watching

    def _hold(self, app: str, prepared: Prepared) -> bool:
        """Nothing to do, or a release that failed: not retried until it changes."""
        app_plan = prepared.plan.app(app)
        if app_plan is None or not app_plan.actions:
            return True
        spec = prepared.desired.app(app)
        if spec is None or self.failed_release.get(app) != _release(spec):
            return False
        running = app_plan.current is not None or any(
            c.state == "running" for c in prepared.observed.of_app(app)
        )
        return running or app_plan.kind == "update"

    def _defer(self, app: str, prepared: Prepared) -> bool:
        """A resync's look (one worker at a time) that finds work to do hands it to the
        normal lane, where deploys run side by side: after an engine restart, a resync
        may find every app to start again."""
        app_plan = prepared.plan.app(app)
        if app_plan is None or not app_plan.actions or not self.queue.in_background(app):
            return False
        self.queue.add(app)  # handed out again, in the normal lane, once this one is done
        return True

    def _outcome(
        self, app: str, report: ApplyReport, bound: Any, took: float = 0.0, deployed: bool = True
    ) -> Result:
        app_plan = report.plan.app(app)
        if report.result is None:  # nothing to do, or held back
            held = app_plan is not None and bool(app_plan.actions)
            return Result(held=held)
        assert app_plan is not None
        outcome = report.result.outcomes.get(app)
        self.meter.deployed(app_plan.kind, outcome is None or outcome.ok, took)
        spec = report.prepared.desired.app(app)
        if outcome is None or outcome.ok:
            drift = app_plan.kind in ("create", "start") and deployed
            self.failed_release.pop(app, None)
            self.healer.healthy(app)
            kind = "drift.healed" if drift else f"app.{app_plan.kind}"
            if drift:
                self.meter.drift_heals.inc()
            bound.info(kind, reason=app_plan.reason)
            self.bus.publish(kind, app, reason=app_plan.reason)
            if drift and app_plan.kind == "start":
                # A container that stopped by itself is restarted with backoff next time.
                self.healer.failed(app)
            if report.proxy_error:  # deployed, but not served yet: tried again
                bound.warning("proxy.failed", error=report.proxy_error)
                return Result(report.proxy_error, retry=True)
            return Result()
        if spec is not None and app_plan.kind in ("create", "update"):
            self.failed_release[app] = _release(spec)
        if app in report.unpinned:
            self.state.repin()
            bound.warning("rollback.failed", error=outcome.message)
            self.bus.publish("rollback.failed", app, error=outcome.message)
        return Result(outcome.message, retry=app_plan.kind in ("create", "start"))

    def _settle(self, app: str, result: Result) -> None:
        """The one place a reconcile's result is acted on."""
        self.meter.reconciled("held" if result.held else "ok" if result.error is None else "error")
        if result.held:
            return
        if result.error is None:
            if self.view.errors.pop(app, None) is not None:
                self.bus.publish("app.ok", app)
                self.view.changed({app})
            return
        delay = self.healer.failed(app)
        if result.retry_after is not None:
            delay = result.retry_after
        if self.view.errors.get(app) != result.error:
            log.warning(
                "reconcile.failed",
                app=app,
                error=result.error,
                retry_in=delay if result.retry else None,
            )
            self.bus.publish("app.error", app, error=result.error)
            self.view.errors[app] = result.error
            self.view.changed({app})
        if result.retry:
            self.queue.add_after(app, delay)

    # --- commands (the API's) --------------------------------------------------------------

    def poll_now(self) -> None:
        """A push webhook: fetch and reconcile what changed, now."""
        self.queue.add(RELOAD)

    def sync(self, app: str, resume: bool = False) -> bool:
        """Reconcile now (an explicit sync retries a failed release); `resume` drops a
        rollback's pin first. Returns whether a pin was dropped."""
        resumed = False
        if resume:
            resumed = rollback.resume(self.ctx, app, lock_wait=COMMAND_LOCK_WAIT)
            self.state.repin()
        self.failed_release.pop(app, None)
        self.queue.add(app)
        return resumed

    def rollback(self, app: str, to: int | None = None) -> int:
        """Pin the app to an earlier deployment (default: the last good one with another
        spec) and reconcile it there; returns the deployment ID. Raises InputError when it
        cannot be restored (nothing is changed then)."""
        current = self.state.source_desired.app(app)
        dep, _ = rollback.pin(self.ctx, app, to, current, lock_wait=COMMAND_LOCK_WAIT)
        self.state.repin()
        log.info("rollback.started", app=app, deployment=dep.id)
        self.bus.publish("rollback.started", app, deployment=dep.id)
        self.failed_release.pop(app, None)
        self.queue.add(app)
        return dep.id

    def restart(self, app: str, reason: str = "restarted through the API") -> bool:
        """Restart the app's container in place (under its lock)."""
        spec = self.state.desired.app(app)
        grace = int(spec.stop_grace_period) if spec else 10
        restarted = lifecycle.restart(
            self.ctx, app, grace=grace, reason=reason, lock_wait=COMMAND_LOCK_WAIT
        )
        if restarted:
            self.bus.publish("app.restarted", app, reason=reason)
            self.view.refresh([app])
        return restarted

    def cancel(self, app: str) -> bool:
        handle = self.inflight.get(app)
        if handle is None:
            return False
        handle.cancel("the API")
        return True


def _release(spec: DesiredApp) -> str:
    """What a failed deploy is held back by: a change of the spec or of the replica count
    (which is not in the spec hash) is a new attempt."""
    return f"{spec.spec_hash}/{spec.replicas}"
