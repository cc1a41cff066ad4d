"""The controller's read model: the app views the API and the dashboard read, kept
current by reconciles, engine events and the health loop, never by calling the engine
per request. `GET /apps` is serialised once per change, not once per request."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any

import structlog

from diplo.controller.bus import Bus
from diplo.controller.sources import Source
from diplo.controller.state import DesiredStore
from diplo.errors import DiploError, EngineUnavailable
from diplo.ops.context import Context
from diplo.ops.status import AppView, SourceState, status, sync_views

log = structlog.get_logger("diplo.controller")


class View:
    def __init__(self, ctx: Context, bus: Bus, state: DesiredStore, sources: list[Source]):
        self.ctx, self.bus, self.state, self.sources = ctx, bus, state, sources
        self.rows: dict[str, AppView] = {}  # what the host says of each app
        self.errors: dict[str, str] = {}  # app -> its last reconcile's error
        self.sync: dict[str, dict[str, Any]] = {}  # app -> its sync fields
        self.engine_ok = True
        self.engine_version = ""
        self.refreshed_at: float | None = None  # the first full look at the host, and since
        self._listing: bytes | None = None
        self._lock = threading.Lock()

    def refresh(self, apps: list[str] | None = None) -> None:
        """Look at `apps` (all when None) on the host again: containers, ledger, a probe."""
        try:
            fresh = {r.app: r for r in status(self.ctx, only=None if apps is None else set(apps))}
        except EngineUnavailable:
            self.engine_ok = False
            return
        except DiploError as exc:
            log.warning("status.failed", error=exc.message)
            return
        with self._lock:
            rows = dict(self.rows)
            for name in apps if apps is not None else list(rows):
                if name not in fresh:
                    rows.pop(name, None)
            for name, row in fresh.items():
                old = rows.get(name)
                if old is not None and old.health != row.health:
                    self.bus.publish(
                        "health.changed",
                        name,
                        health=row.health,
                        was=old.health,
                        detail=row.health_detail,
                    )
                rows[name] = row
            self.rows = rows
            self._listing = None
            if apps is None:
                self.refreshed_at = time.time()
        self.compute_sync(None if apps is None else set(apps))

    def compute_sync(self, apps: set[str] | None = None) -> None:
        """Each app's sync status, for `apps` only when given (an app's status depends on
        nothing but its own spec, record and containers)."""
        state = self.state
        names = set(self.rows) | {a.name for a in state.source_desired.apps} | set(state.known)
        source = SourceState(
            desired={a.name: a for a in state.source_desired.apps},
            commits={a.name: state.loaded.of(a.name).commit for a in state.source_desired.apps},
            manifest_ok=state.manifest.ok,
            pins=dict(state.rollback_of),
        )
        try:
            fresh = sync_views(self.ctx, names if apps is None else names & apps, source, self.rows)
        except DiploError:
            return
        out = fresh if apps is None else {**self.sync, **fresh}
        self.sync = {n: v for n, v in out.items() if n in names}
        self.changed()

    def changed(self) -> None:
        """Something the API shows changed outside `refresh`."""
        with self._lock:
            self._listing = None

    def app(self, name: str) -> AppView | None:
        """One app as the API shows it, or None when there is no such app."""
        row = self.rows.get(name)
        spec = self.state.desired.app(name)
        if row is None and spec is None:
            return None
        if row is not None:
            out = replace(row)
        else:  # desired, and nothing of it on the host yet
            assert spec is not None
            out = AppView(
                name,
                spec.project,
                desired=spec.replicas,
                replicas=f"0/{spec.replicas}",
                health="missing",
            )
        out.spec = spec.public_spec() if spec is not None else None
        out.last_error = self.errors.get(name)
        sync = self.sync.get(name, {})
        out.sync, out.revision = sync.get("sync"), sync.get("revision")
        out.source_revision, out.pinned = sync.get("source_revision"), sync.get("pinned")
        return out

    def summary(self, name: str) -> dict[str, Any]:
        """An app's line in GET /apps: its view without the spec and container details."""
        view = self.app(name)
        out = {} if view is None else view.as_dict()
        for key in ("spec", "containers", "reconciling"):
            out.pop(key, None)
        return out

    def listing(self) -> bytes:
        """GET /apps, serialised once per change rather than once per request."""
        with self._lock:
            if self._listing is None:
                names = sorted(set(self.rows) | {a.name for a in self.state.desired.apps})
                m = self.state.manifest
                body = {
                    "apps": [self.summary(n) for n in names],
                    "manifest": {
                        "ok": m.ok,
                        "error": m.error,
                        "issues": m.issues,
                        "files": m.files,
                    },
                    "sources": [s.describe() for s in self.sources],
                }
                self._listing = json.dumps(body).encode()
            return self._listing
