"""The controller's read model: the app views the API and the dashboard read, kept
current by reconciles, engine events and the health loop, never by calling the engine
per request. `GET /apps` is serialised by the thread that changed something (a health
tick, a reconcile), one app's line at a time, and only the lines that changed: the API's
event loop only hands out the bytes (built there, the whole body stalled every client for
tens of ms after each health tick)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from diplo.controller.bus import Bus
from diplo.controller.sources import Source
from diplo.controller.state import DesiredStore
from diplo.errors import DiploError, EngineUnavailable
from diplo.ops.context import Context
from diplo.ops.status import AppView, DiffMemo, SourceState, status, sync_views

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
        self._listing: bytes | None = None  # GET /apps, up to date unless _stale
        self._lines: dict[str, bytes] = {}  # app -> its line in GET /apps, serialised
        self._stale: set[str] | None = set()  # lines to serialise again (None: all)
        self._lock = threading.Lock()
        self._differs: DiffMemo = {}  # each app's spec diff, while its inputs stay the same
        # Given each new GET /apps body, in order (under the lock): serve's front reads it.
        self.publish: Callable[[bytes], None] | None = None

    def refresh(self, apps: list[str] | None = None, pace: float = 0.0) -> None:
        """Look at `apps` (all when None) on the host again: containers, ledger, a probe
        (spread over `pace` seconds)."""
        try:
            only = None if apps is None else set(apps)
            fresh = {r.app: r for r in status(self.ctx, only=only, pace=pace)}
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
            fresh = sync_views(
                self.ctx, names if apps is None else names & apps, source, self.rows, self._differs
            )
        except DiploError:
            self.changed(apps)  # the rows may have changed all the same
            return
        if apps is None:  # apps gone from everywhere: their diffs go too
            for gone in set(self._differs) - names:
                self._differs.pop(gone, None)
        out = fresh if apps is None else {**self.sync, **fresh}
        self.sync = {n: v for n, v in out.items() if n in names}
        self.changed(apps)

    def changed(self, apps: set[str] | None = None) -> None:
        """What the API shows of `apps` (of every app when None) changed: GET /apps is
        serialised again now, in the caller's thread."""
        with self._lock:
            if apps is None or self._stale is None:
                self._stale = None
            else:
                self._stale |= apps
            self._build()

    def app(self, name: str, *, with_spec: bool = True) -> AppView | None:
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
        out.spec = spec.public_spec() if spec is not None and with_spec else None
        out.last_error = self.errors.get(name)
        sync = self.sync.get(name, {})
        out.sync, out.revision = sync.get("sync"), sync.get("revision")
        out.source_revision, out.pinned = sync.get("source_revision"), sync.get("pinned")
        return out

    def summary(self, name: str) -> dict[str, Any]:
        """An app's line in GET /apps: its view without the spec and container details."""
        view = self.app(name, with_spec=False)
        out = {} if view is None else view.as_dict()
        for key in ("spec", "containers", "reconciling"):
            out.pop(key, None)
        return out

    def listing(self) -> bytes:
        """GET /apps: built already, unless nothing changed since the view was made. No
        lock when it is: a reader never waits for a build in progress."""
        body = self._listing
        if body is not None:
            return body
        with self._lock:
            if self._listing is None:
                self._build()
            assert self._listing is not None
            return self._listing

    def _build(self) -> None:
        """Serialise the stale lines and join them with the rest (under `_lock`)."""
        names = sorted(set(self.rows) | {a.name for a in self.state.desired.apps})
        stale = self._stale
        lines = {
            n: self._lines[n]
            for n in names
            if n in self._lines and stale is not None and n not in stale
        }
        for name in names:
            if name not in lines:
                lines[name] = json.dumps(self.summary(name)).encode()
        self._lines, self._stale = lines, set()
        m = self.state.manifest
        rest = {
            "manifest": {"ok": m.ok, "error": m.error, "issues": m.issues, "files": m.files},
            "sources": [s.describe() for s in self.sources],
        }
        tail = json.dumps(rest).encode()[1:]  # its opening brace: after the apps'
        self._listing = b'{"apps": [' + b", ".join(lines[n] for n in names) + b"], " + tail
        if self.publish is not None:
            self.publish(self._listing)
