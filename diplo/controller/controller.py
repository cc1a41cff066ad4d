"""The controller behind `diplo serve`: keeps a host converged onto a manifest folder.

Level-based, after Kubernetes controller-runtime: a trigger (a file change, an engine
event, the periodic resync, an API call) only says "look at app X again"; the reconcile
re-reads the desired state, the engine and the ledger every time. One app is never
reconciled by two workers at once (the work queue), nor by `diplo apply` at the same
time (the per-app host locks). A failing app is retried with backoff and never blocks
the others. An invalid manifest leaves the last good desired state in force."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from diplo.controller.bus import Bus
from diplo.controller.workqueue import WorkQueue
from diplo.errors import DiploError, EngineUnavailable, InputError, ManifestError
from diplo.executor import Executor
from diplo.health import Backoff
from diplo.manifest.load import load_manifests
from diplo.model import DesiredApp, DesiredState
from diplo.service import AppStatus, Context, plan_state, status

log = structlog.get_logger("diplo.controller")

ALL = "*"  # queue key: reload the manifests and look at every app (resync)
RELOAD = "~"  # queue key: reload the manifests and look at the apps that changed
DEBOUNCE = 0.15  # an editor's save or a checkout arrives within this


@dataclass
class ManifestState:
    ok: bool = True
    error: str | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)
    loaded_at: float | None = None
    files: list[str] = field(default_factory=list)


class Controller:
    def __init__(
        self,
        manifests: Path,
        ctx: Context,
        *,
        resync: float = 60.0,
        workers: int = 4,
        health_every: float = 5.0,
    ) -> None:
        self.manifests = manifests
        self.ctx = ctx
        self.resync = resync
        self.workers = workers
        self.health_every = health_every
        self.queue = WorkQueue()
        self.bus = Bus()
        self.desired = DesiredState()
        self.known: dict[str, DesiredApp] = {}  # every app seen in the folder, last spec
        self.projects: set[str] = set()  # projects seen in the folder during this run
        self.manifest = ManifestState()
        self.views: dict[str, AppStatus] = {}
        self.errors: dict[str, str] = {}  # app -> last reconcile error
        self.backoffs: dict[str, Backoff] = {}
        self.failed_release: dict[str, str] = {}  # app -> spec hash whose deploy failed
        self.restart_after: dict[str, float] = {}  # app -> monotonic time of the next restart
        self.inflight: dict[str, Executor] = {}
        self.started_at = time.time()
        self.last_resync: float | None = None
        self.engine_ok = True
        self.engine_version = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._reload_at: float | None = None
        self._listing: bytes | None = None
        self._observer: Any = None

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._reload()
        for i in range(self.workers):
            self._spawn(f"diplo-worker-{i}", self._work)
        self._spawn("diplo-engine-events", self._watch_engine)
        self._spawn("diplo-resync", self._resync_loop)
        self._spawn("diplo-health", self._health_loop)
        self._spawn("diplo-debounce", self._debounce_loop)
        self._watch_files()
        self.queue.add(ALL)
        log.info("controller.started", manifests=str(self.manifests), workers=self.workers)

    def stop(self, timeout: float = 4.0) -> None:
        """Stop watching and working; apps keep running. Deploys in flight are cancelled
        (their previous revisions stay)."""
        self._stop.set()
        for ex in list(self.inflight.values()):
            ex.cancel("diplo serve stopping")
        self.queue.shutdown()
        if self._observer is not None:
            self._observer.stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        log.info("controller.stopped")

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # --- triggers ------------------------------------------------------------------------

    def _watch_files(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        controller = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                controller.file_changed()

        self.manifests.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.manifests), recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def file_changed(self) -> None:
        """Debounced: an editor's atomic save or a checkout of many files is one reload."""
        with self._lock:
            self._reload_at = time.monotonic() + DEBOUNCE

    def _debounce_loop(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                due = self._reload_at is not None and time.monotonic() >= self._reload_at
                if due:
                    self._reload_at = None
            if due:
                self.queue.add(RELOAD)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync):
            self.queue.add(ALL)

    def _watch_engine(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.engine_version = self.ctx.runtime.version()
                if not self.engine_ok:
                    log.info("engine.reconnected")
                    self.bus.publish("engine.reconnected")
                    self.queue.add(ALL)  # the engine may have changed while away
                self.engine_ok, delay = True, 1.0
                for app, action in self.ctx.runtime.events(self._stop.is_set):
                    if action.startswith(("exec_", "health_status")) and action != (
                        "health_status: unhealthy"
                    ):
                        continue
                    self.queue.add(app)
            except DiploError as exc:
                if self._stop.is_set():
                    return
                if self.engine_ok:
                    log.warning("engine.unavailable", error=exc.message)
                    self.bus.publish("engine.unavailable", error=exc.message)
                self.engine_ok = False
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _health_loop(self) -> None:
        self.refresh_views()
        while not self._stop.wait(self.health_every):
            self.refresh_views()
            self._restart_unhealthy()

    def _restart_unhealthy(self) -> None:
        """An app that turns unhealthy after a good deploy is restarted, with backoff
        (1 s doubling to 5 min; reset after 10 min healthy). Exits are Docker's restart
        policy's to handle; a crash loop shows in status with its restart count."""
        now = time.monotonic()
        for name, row in list(self.views.items()):
            backoff = self.backoffs.get(name, Backoff())
            if row.health == "healthy":
                self.backoffs[name] = backoff.healthy(now)
                continue
            if row.health != "unhealthy" or name in self.inflight or self.desired.app(name) is None:
                continue
            if now < self.restart_after.get(name, 0.0):
                continue
            self.restart_after[name] = now + backoff.delay()
            self.backoffs[name] = backoff.failed()
            log.warning(
                "app.unhealthy_restart",
                app=name,
                restarts=backoff.restarts + 1,
                next_wait=backoff.failed().delay(),
            )
            try:
                self.restart(name, reason=f"unhealthy: {row.health_detail}")
            except DiploError as exc:
                log.warning("app.restart_failed", app=name, error=exc.message)

    # --- work ----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            try:
                if key in (ALL, RELOAD):
                    changed = self._reload()
                    names = set(self.known) | set(self.views) if key == ALL else changed
                    for name in sorted(names):
                        self.queue.add(name)
                else:
                    self.reconcile(key)
            except Exception as exc:  # a bug must not kill the worker
                log.exception("reconcile.crashed", app=key, error=str(exc))
            finally:
                self.queue.done(key)

    def _reload(self) -> set[str]:
        """Load the folder; returns the apps whose desired state changed."""
        try:
            desired = load_manifests([str(self.manifests)])
        except ManifestError as exc:
            self._manifest_failed(exc.message, [i.__dict__ for i in exc.issues])
            return set()
        except InputError as exc:  # an empty folder: nothing is desired
            if "no manifest files" not in exc.message:
                self._manifest_failed(exc.message, [])
                return set()
            desired = DesiredState()
        if not self.manifest.ok:
            log.info("manifest.valid_again")
            self.bus.publish("manifest.valid")
        before = {a.name: a for a in self.desired.apps}
        after = {a.name: a for a in desired.apps}
        changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
        self.manifest = ManifestState(True, None, [], time.time(), list(desired.files))
        self.desired = desired
        self.projects |= set(desired.projects)
        for app in desired.apps:
            self.known[app.name] = app
        self.last_resync = time.time()
        self.changed()
        return changed

    def _manifest_failed(self, message: str, issues: list[dict[str, Any]]) -> None:
        if message != self.manifest.error:  # logged once per distinct error, not in a loop
            log.error("manifest.invalid", error=message)
            self.bus.publish("manifest.invalid", error=message, issues=issues)
        self.manifest = ManifestState(
            False, message, issues, self.manifest.loaded_at, self.manifest.files
        )

    def reconcile(self, app: str) -> None:
        rid = uuid.uuid4().hex[:8]
        bound = log.bind(app=app, reconcile_id=rid)
        with (
            structlog.contextvars.bound_contextvars(reconcile_id=rid),
            self.ctx.locks.hold([app], timeout=3600),
        ):
            self._reconcile_locked(app, bound)
        self.refresh_views([app])

    def _reconcile_locked(self, app: str, bound: Any) -> None:
        desired = self.desired
        spec = desired.app(app)
        if spec is None:
            last = self.known.get(app)
            if last is not None and not last.prune:
                return  # `prune: false`: an app that left the folder is left running
        scope = DesiredState(desired.apps, desired.files, tuple(sorted(self.projects)))
        try:
            prepared = plan_state(self.ctx, scope, prune=True, only=frozenset({app}))
        except DiploError as exc:
            self._failed(app, exc.message, bound, retry=True)
            return
        app_plan = prepared.plan.app(app)
        if app_plan is None or not app_plan.actions:
            if self.errors.pop(app, None) is not None:
                self.bus.publish("app.ok", app)
            return
        if spec is not None and self.failed_release.get(app) == spec.spec_hash:
            running = app_plan.current is not None or any(
                c.state == "running" for c in prepared.observed.of_app(app)
            )
            if running or app_plan.kind == "update":
                return  # a release that failed is not retried until it changes
        drift = app_plan.kind in ("create", "start") and app in self.views
        executor = Executor(self.ctx.runtime, self.ctx.ledger, _BusReporter(self.bus), workers=1)
        self.inflight[app] = executor
        try:
            result = executor.run(prepared.plan)
        finally:
            self.inflight.pop(app, None)
        outcome = result.outcomes.get(app)
        if outcome is None or outcome.ok:
            self.errors.pop(app, None)
            self.changed()
            self.failed_release.pop(app, None)
            self.backoffs[app] = self.backoffs.get(app, Backoff()).healthy(time.monotonic())
            kind = "drift.healed" if drift else f"app.{app_plan.kind}"
            bound.info(kind, reason=app_plan.reason)
            self.bus.publish(kind, app, reason=app_plan.reason)
            if drift and app_plan.kind == "start":
                # A container that stopped by itself is restarted with backoff next time.
                self.backoffs[app] = self.backoffs[app].failed()
            return
        if spec is not None and app_plan.kind in ("create", "update"):
            self.failed_release[app] = spec.spec_hash
        self._failed(app, outcome.message, bound, retry=app_plan.kind in ("create", "start"))

    def _failed(self, app: str, message: str, bound: Any, *, retry: bool) -> None:
        backoff = self.backoffs.get(app, Backoff())
        delay = backoff.delay()
        self.backoffs[app] = backoff.failed()
        if self.errors.get(app) != message:
            bound.warning("reconcile.failed", error=message, retry_in=delay if retry else None)
            self.bus.publish("app.error", app, error=message)
        self.errors[app] = message
        self.changed()
        if retry:
            self.queue.add_after(app, delay)

    # --- the in-memory view --------------------------------------------------------------

    def refresh_views(self, apps: list[str] | None = None) -> None:
        """Recompute the status rows of `apps` (all when None) into the in-memory view."""
        try:
            rows = status(self.ctx, only=None if apps is None else set(apps))
        except EngineUnavailable:
            self.engine_ok = False
            return
        except DiploError as exc:
            log.warning("status.failed", error=exc.message)
            return
        fresh = {r.app: r for r in rows}
        with self._lock:
            views = dict(self.views)
            for name in apps if apps is not None else list(views):
                if name not in fresh:
                    views.pop(name, None)
            for name, row in fresh.items():
                old = views.get(name)
                if old is not None and old.health != row.health:
                    self.bus.publish(
                        "health.changed",
                        name,
                        health=row.health,
                        was=old.health,
                        detail=row.health_detail,
                    )
                views[name] = row
            self.views = views
            self._listing = None

    def listing(self) -> bytes:
        """GET /apps, serialised once per change rather than once per request."""
        with self._lock:
            if self._listing is None:
                names = sorted(set(self.views) | {a.name for a in self.desired.apps})
                body = {
                    "apps": [self.summary(n) for n in names],
                    "manifest": {
                        "ok": self.manifest.ok,
                        "error": self.manifest.error,
                        "issues": self.manifest.issues,
                        "files": self.manifest.files,
                    },
                }
                self._listing = json.dumps(body).encode()
            return self._listing

    def summary(self, app: str) -> dict[str, Any]:
        """An app's line in GET /apps: its view without the spec and container details."""
        out = self.view(app) or {}
        for key in ("spec", "containers"):
            out.pop(key, None)
        return out

    def view(self, app: str) -> dict[str, Any] | None:
        """One app as the API shows it, or None when there is no such app."""
        row = self.views.get(app)
        spec = self.desired.app(app)
        if row is None and spec is None:
            return None
        out: dict[str, Any] = (
            row.as_dict()
            if row is not None
            else {"app": app, "state": "missing", "health": "missing", "running": 0}
        )
        out["spec"] = spec.public_spec() if spec is not None else None
        out["last_error"] = self.errors.get(app)
        return out

    def changed(self) -> None:
        """Something the API shows changed outside refresh_views."""
        with self._lock:
            self._listing = None

    def sync(self, app: str) -> None:
        self.failed_release.pop(app, None)  # an explicit sync retries a failed release
        self.queue.add(app)

    def restart(self, app: str, reason: str = "restarted through the API") -> bool:
        """Restart the app's container in place (under its lock)."""
        with self.ctx.locks.hold([app], timeout=60):
            containers = [c for c in self.ctx.runtime.observe().of_app(app)]
            if not containers:
                return False
            current = max(containers, key=lambda c: c.created)
            spec = self.desired.app(app)
            grace = int(spec.stop_grace_period) if spec else 10
            self.ctx.runtime.stop(current.id, grace)
            self.ctx.runtime.start(current.id)
        self.ctx.ledger.event("app.restarted", reason, app)
        self.bus.publish("app.restarted", app, reason=reason)
        self.refresh_views([app])
        return True

    def cancel(self, app: str) -> bool:
        executor = self.inflight.get(app)
        if executor is None:
            return False
        executor.cancel("the API")
        return True


class _BusReporter:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def step(self, app: str, step: str, detail: str = "") -> None:
        self.bus.publish("deploy.step", app, step=step, detail=detail)

    def done(self, app: str, ok: bool, message: str) -> None:
        self.bus.publish("deploy.succeeded" if ok else "deploy.failed", app, message=message)
