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
from diplo.controller.sources import FolderSource, GitSource, Loaded, Source, merge
from diplo.controller.workqueue import WorkQueue
from diplo.errors import DiploError, EngineUnavailable, InputError, ManifestError
from diplo.executor import Executor
from diplo.health import Backoff
from diplo.model import DesiredApp, DesiredState, Revision
from diplo.planner import diff_specs
from diplo.revisions import apply_pins, restore, target
from diplo.service import AppStatus, Context, plan_state, status

log = structlog.get_logger("diplo.controller")

ALL = "*"  # queue key: reload the manifests and look at every app (resync)
RELOAD = "~"  # queue key: reload the manifests and look at the apps that changed
DEBOUNCE = 0.1  # an editor's save or a checkout arrives within this


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
        sources: Path | Source | list[Source],
        ctx: Context,
        *,
        resync: float = 60.0,
        workers: int = 4,
        health_every: float = 5.0,
        poll_every: float = 60.0,
    ) -> None:
        if isinstance(sources, Path):
            sources = [FolderSource(sources)]
        self.sources: list[Source] = sources if isinstance(sources, list) else [sources]
        folders = [s.folder for s in self.sources if isinstance(s, FolderSource)]
        self.manifests: Path | None = folders[0] if folders else None
        self.poll_every = poll_every
        self.ctx = ctx
        self.resync = resync
        self.workers = workers
        self.health_every = health_every
        self.queue = WorkQueue()
        self.bus = Bus()
        self.desired = DesiredState()  # what is deployed: the source's, with pins applied
        self.source_desired = DesiredState()  # what the sources ask for
        self.loaded: Loaded = Loaded(DesiredState(), Revision(""))
        self.rollback_of: dict[str, int] = {}  # pinned app -> the deployment it restores
        self.blocked: dict[str, str] = {}  # pinned apps that cannot be restored, and why
        self.pinned_revisions: dict[str, Revision] = {}
        self.sync_status: dict[str, dict[str, Any]] = {}
        self.known: dict[str, DesiredApp] = {}  # every app seen in the folder, last spec
        self.projects: set[str] = set()  # projects seen in the folder during this run
        # Apps whose last good deployment came from one of our sources: when they are not
        # there any more (deleted while serve was down, say), they are ours to prune.
        self.deployed_from_us: dict[str, str] = {}  # app -> project
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
        self._due = threading.Condition()
        self._listing: bytes | None = None
        self._observer: Any = None

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        names = {s.name for s in self.sources}
        self.deployed_from_us = {
            app: dep.project
            for app, dep in self.ctx.ledger.deployed().items()
            if dep.source in names and json.loads(dep.record_json or "{}").get("prune", True)
        }
        self._reload()
        for i in range(self.workers):
            self._spawn(f"diplo-worker-{i}", self._work)
        self._spawn("diplo-engine-events", self._watch_engine)
        self._spawn("diplo-resync", self._resync_loop)
        self._spawn("diplo-health", self._health_loop)
        self._spawn("diplo-debounce", self._debounce_loop)
        if any(isinstance(s, GitSource) for s in self.sources):
            self._spawn("diplo-git-poll", self._poll_loop)
        if self.manifests is not None:
            self._watch_files()
        self.queue.add(ALL)
        log.info(
            "controller.started",
            sources=[s.name for s in self.sources],
            workers=self.workers,
        )

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

        assert self.manifests is not None
        self.manifests.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.manifests), recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def file_changed(self) -> None:
        """Debounced: an editor's atomic save or a checkout of many files is one reload."""
        with self._due:
            self._reload_at = time.monotonic() + DEBOUNCE
            self._due.notify()

    def _debounce_loop(self) -> None:
        while not self._stop.is_set():
            with self._due:
                if self._reload_at is None:
                    self._due.wait(0.5)  # woken by file_changed; the timeout sees a stop
                    continue
                wait = self._reload_at - time.monotonic()
                if wait > 0:
                    self._due.wait(wait)  # a later save pushes the deadline back
                    continue
                self._reload_at = None
            self.queue.add(RELOAD)

    def _poll_loop(self) -> None:
        """Polling keeps working where webhooks cannot reach the host."""
        while not self._stop.wait(self.poll_every):
            self.queue.add(RELOAD)

    def poll_now(self) -> None:
        """A push webhook: fetch and reconcile what changed, now."""
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
        """Load the sources; returns the apps whose desired state changed."""
        try:
            loaded = merge([s.load() for s in self.sources])
        except ManifestError as exc:
            self._manifest_failed(exc.message, [i.__dict__ for i in exc.issues])
            return set()
        except InputError as exc:
            self._manifest_failed(exc.message, [])
            return set()
        except DiploError as exc:  # a repository out of reach: the last good state stays
            if self.manifest.error != exc.message:
                log.warning("source.unreachable", error=exc.message)
                self.bus.publish("source.unreachable", error=exc.message)
            self.manifest = ManifestState(
                self.manifest.ok, exc.message, [], self.manifest.loaded_at, self.manifest.files
            )
            self.changed()
            return set()
        was_ok = self.manifest.ok and not self.manifest.error
        if not was_ok:
            log.info("manifest.valid_again")
            self.bus.publish("manifest.valid")
        self.manifest = ManifestState(True, None, [], time.time(), list(loaded.desired.files))
        self.loaded, self.source_desired = loaded, loaded.desired
        self.projects |= set(loaded.desired.projects)
        for app in loaded.desired.apps:
            self.known[app.name] = app
        self.last_resync = time.time()
        return self._repin(everything=not was_ok)

    def _repin(self, everything: bool = True) -> set[str]:
        """Apply rollback pins to the sources' state; returns the apps that changed (whose
        sync status is recomputed, or every app's with `everything`)."""
        pinned = apply_pins(self.ctx, self.source_desired)
        before = {a.name: a for a in self.desired.apps}
        after = {a.name: a for a in pinned.desired.apps}
        changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
        self.desired, self.rollback_of, self.blocked = (
            pinned.desired,
            pinned.rollback_of,
            pinned.blocked,
        )
        self.pinned_revisions = pinned.revisions
        self._compute_sync(None if everything else changed)
        return changed

    def _manifest_failed(self, message: str, issues: list[dict[str, Any]]) -> None:
        if message != self.manifest.error:  # logged once per distinct error, not in a loop
            log.error("manifest.invalid", error=message)
            self.bus.publish("manifest.invalid", error=message, issues=issues)
        self.manifest = ManifestState(
            False, message, issues, self.manifest.loaded_at, self.manifest.files
        )
        self._compute_sync()
        self.changed()

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
        if app in self.blocked:
            self._failed(app, self.blocked[app], bound, retry=False)
            return
        if spec is None:
            last = self.known.get(app)
            if last is not None and not last.prune:
                return  # `prune: false`: an app that left the folder is left running
        projects = set(self.projects)
        loaded = self.manifest.ok and self.manifest.loaded_at is not None
        if spec is None and app in self.deployed_from_us and loaded:
            projects.add(self.deployed_from_us[app])
        scope = DesiredState(desired.apps, desired.files, tuple(sorted(projects)))
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
        executor = Executor(
            self.ctx.runtime,
            self.ctx.ledger,
            _BusReporter(self.bus),
            workers=1,
            revision=self.loaded.of(app),
            rollback_of=self.rollback_of,
            revisions=self.pinned_revisions,
        )
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
        if app in self.rollback_of and app_plan.kind == "update" and not outcome.cancelled:
            # The restored deployment did not come up (the previous one was kept): the app
            # follows its source again rather than staying pinned to a broken state.
            self.ctx.ledger.unpin(app)
            self._repin()
            self.bus.publish("rollback.failed", app, error=outcome.message)
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
        self._compute_sync(None if apps is None else set(apps))

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
                    "sources": [s.describe() for s in self.sources],
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
        out.update(self.sync_status.get(app, {}))
        return out

    def _compute_sync(self, apps: set[str] | None = None) -> None:
        """Each app's sync status (Argo CD's column): Synced when what runs is what the
        source's newest valid revision asks for; OutOfSync with what differs; Unknown when
        the newest revision could not be read. Only `apps` when given (an app's status
        depends on nothing but its own spec, record and containers)."""
        try:
            snapshot = self.ctx.ledger.snapshot()
            deployed = self.ctx.ledger.deployed()
        except DiploError:
            return
        out: dict[str, dict[str, Any]] = {} if apps is None else dict(self.sync_status)
        names = set(self.views) | {a.name for a in self.source_desired.apps} | set(self.known)
        for name in names if apps is None else names & apps:
            want = self.source_desired.app(name)
            record = snapshot.apps.get(name)
            row = self.views.get(name)
            differs: list[str] = []
            if not self.manifest.ok:
                sync = "Unknown"
                differs = ["the source's newest revision is refused: see manifest.error"]
            elif name in self.rollback_of:
                sync, differs = "OutOfSync", [f"pinned to deployment {self.rollback_of[name]}"]
            elif want is None:
                sync, differs = "OutOfSync", ["not in the source (to be pruned)"]
            elif record is None:
                sync, differs = "OutOfSync", ["not deployed"]
            else:
                changes = diff_specs(record.spec, want.public_spec())
                differs = [c.path for c in changes]
                if record.spec_hash != want.spec_hash and not differs:
                    differs = ["file contents"]
                if row is not None and row.in_sync is False:
                    differs.append("running container differs (drift)")
                sync = "OutOfSync" if differs else "Synced"
            dep = deployed.get(name)
            pin = self.rollback_of.get(name)
            out[name] = {
                "sync": {"status": sync, "differs": differs},
                "revision": None
                if dep is None
                else {
                    "deployment": dep.id,
                    "commit": dep.commit_sha,
                    "subject": dep.commit_subject,
                    "dirty": bool(dep.dirty),
                },
                "source_revision": self.loaded.of(name).commit if want is not None else None,
                "pinned": None if pin is None else {"deployment": pin},
            }
        for gone in set(out) - names:
            out.pop(gone)
        self.sync_status = out
        self.changed()

    def changed(self) -> None:
        """Something the API shows changed outside refresh_views."""
        with self._lock:
            self._listing = None

    def sync(self, app: str, resume: bool = False) -> bool:
        """Reconcile now (an explicit sync retries a failed release); `resume` drops a
        rollback's pin first. Returns whether a pin was dropped."""
        resumed = False
        if resume:
            with self.ctx.locks.hold([app], timeout=60):
                resumed = self.ctx.ledger.unpin(app)
                self._repin()
        self.failed_release.pop(app, None)
        self.queue.add(app)
        return resumed

    def rollback(self, app: str, to: int | None = None) -> int:
        """Pin the app to an earlier deployment (default: the last good one with another
        spec) and reconcile it there; returns the deployment ID. Raises InputError when it
        cannot be restored (nothing is changed then)."""
        with self.ctx.locks.hold([app], timeout=60):
            dep = target(self.ctx, app, to)
            restore(self.ctx, dep.id, self.source_desired.app(app))  # fails before the pin
            self.ctx.ledger.pin(app, dep.id, f"rolled back to deployment {dep.id}")
            self._repin()
        self.bus.publish("rollback.started", app, deployment=dep.id)
        self.failed_release.pop(app, None)
        self.queue.add(app)
        return dep.id

    def restart(self, app: str, reason: str = "restarted through the API") -> bool:
        """Restart the app's container in place (under its lock)."""
        with self.ctx.locks.hold([app], timeout=60):
            containers = [c for c in self.ctx.runtime.observe(containers_only=True).of_app(app)]
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
