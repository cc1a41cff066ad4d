"""The ledger: Diplo's memory in one SQLite file (WAL mode, versioned schema,
parameterised statements only, short transactions). The only module that imports sqlite3.

It records what was applied per app (spec with env values redacted, and its hash),
every deployment and its result, an event log, host-port allocations and builds."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from diplo.errors import LedgerError
from diplo.model import (
    AppRecord,
    BuildRecord,
    Deployment,
    Event,
    LedgerSnapshot,
    Pin,
    PortAllocation,
    ProbeNote,
    ProbeRecord,
    Revision,
)
from diplo.paths import default_home

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE apps (
        app TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        image_id TEXT,
        applied_at TEXT NOT NULL
    );
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL,
        project TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        revision INTEGER NOT NULL,
        image_id TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        result TEXT NOT NULL DEFAULT 'running',
        step TEXT,
        error TEXT
    );
    CREATE INDEX deployments_app ON deployments (app, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        app TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        deployment_id INTEGER
    );
    CREATE INDEX events_app ON events (app, id);
    CREATE TABLE ports (
        app TEXT NOT NULL,
        key TEXT NOT NULL,
        host_ip TEXT NOT NULL DEFAULT '',
        host_port INTEGER NOT NULL,
        PRIMARY KEY (app, key)
    );
    CREATE TABLE builds (
        tag TEXT PRIMARY KEY,
        build_hash TEXT NOT NULL,
        image_id TEXT NOT NULL,
        built_at TEXT NOT NULL
    );
    """,
    # 2: cancellation across processes, the deploying process, health probes
    """
    ALTER TABLE deployments ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN pid INTEGER;
    CREATE TABLE probes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL,
        at TEXT NOT NULL,
        ok INTEGER NOT NULL,
        health TEXT NOT NULL,
        detail TEXT NOT NULL,
        latency_ms REAL,
        deployment_id INTEGER
    );
    CREATE INDEX probes_app ON probes (app, id);
    """,
    # 3: where each deployment came from, what it ran (for rollbacks), and rollback pins
    """
    ALTER TABLE deployments ADD COLUMN source TEXT;
    ALTER TABLE deployments ADD COLUMN commit_sha TEXT;
    ALTER TABLE deployments ADD COLUMN commit_subject TEXT;
    ALTER TABLE deployments ADD COLUMN commit_author TEXT;
    ALTER TABLE deployments ADD COLUMN commit_time TEXT;
    ALTER TABLE deployments ADD COLUMN dirty INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN record_json TEXT;
    ALTER TABLE deployments ADD COLUMN rollback_of INTEGER;
    ALTER TABLE deployments ADD COLUMN kept_image TEXT;
    CREATE TABLE pins (
        app TEXT PRIMARY KEY,
        deployment_id INTEGER NOT NULL,
        pinned_at TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    """,
    # v4: the env values a deployment ran with, sealed with the host's key, so that a
    # rollback to it works when the manifest has changed them since.
    """
    CREATE TABLE sealed_env (
        deployment_id INTEGER PRIMARY KEY,
        blob BLOB NOT NULL
    );
    """,
    # v5: what the reverse proxy serves for each app with domains (domains, its HTTP
    # port, TLS), so that the proxy's whole config can be derived again at any time.
    """
    CREATE TABLE routes (
        app TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        route_json TEXT NOT NULL
    );
    """,
    # v6: alerts, one row per firing (episode) of a rule on a subject: what fires now
    # survives a restart of `diplo serve`, which then sends nothing twice.
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        rule TEXT NOT NULL,
        subject TEXT NOT NULL,
        app TEXT,
        state TEXT NOT NULL,
        since REAL NOT NULL,
        resolved_at REAL,
        value TEXT,
        threshold TEXT,
        message TEXT NOT NULL,
        notified TEXT NOT NULL DEFAULT '',
        notified_at_json TEXT NOT NULL DEFAULT '[]',
        deliveries_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX alerts_state ON alerts (state, id);
    """,
    # v7: this ledger's own name, random, made once: what Diplo puts on the engine for
    # this home alone (kept image tags) carries it, so two homes on one engine never
    # share, retag or untag each other's.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('id', lower(hex(randomblob(4))));
    """,
]
ALERT_FIELDS = (
    *("key", "rule", "subject", "app", "state", "since", "resolved_at", "value", "threshold"),
    *("message", "notified", "notified_at_json", "deliveries_json"),
)
PROBES_KEPT = 50  # per app
EVENTS_KEPT = 20_000  # in all: the newest, trimmed on every insert
DEPLOYMENTS_KEPT = 200  # per app: the newest, and any that keeps an image or is pinned


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _app_record(r: sqlite3.Row) -> AppRecord:
    return AppRecord(
        r["app"], r["project"], r["spec_hash"], json.loads(r["spec_json"]), r["applied_at"]
    )


def _port(r: sqlite3.Row) -> PortAllocation:
    return PortAllocation(r["app"], r["key"], r["host_ip"], r["host_port"])


@dataclass(frozen=True)
class Touches:
    """What a write changes of the reads the ledger keeps for its callers (`snapshot`,
    and each app's newest deployments): the next read reads again only that."""

    apps: frozenset[str] = frozenset()  # these apps' rows of `apps` and `ports`
    builds: bool = False
    deployments: bool = False
    everything: bool = False


NOTHING = Touches()  # probes, events, routes, pins, sealed envs, alerts
EVERYTHING = Touches(everything=True)
DEPLOYMENTS = Touches(deployments=True)


def _apps(*names: str) -> Touches:
    return Touches(apps=frozenset(names))


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=30, check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._lock = threading.RLock()
            # What this connection's commits changed of what `snapshot` reads: some apps'
            # rows (apps, ports), the builds, or anything (`_stale`).
            self._stale = False
            self._dirty_apps: set[str] = set()
            self._dirty_builds = False
            self._snapshot: tuple[int, LedgerSnapshot] | None = None
            # Each app's newest (or newest good) deployment, kept until a write of the
            # deployments: (data_version, writes of deployments, rows) per query
            self._deploy_writes = 0
            self._newest: dict[str, tuple[int, int, dict[str, Deployment]]] = {}
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"cannot open the ledger at {self.path}: {exc}",
                hint="check DIPLO_HOME and that the folder is writable",
            ) from exc

    @classmethod
    def open_default(cls) -> Ledger:
        return cls(default_home() / "ledger.db")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self, touches: Touches = EVERYTHING) -> Iterator[sqlite3.Connection]:
        """One write transaction. Every sqlite3 error comes out as a LedgerError that
        names its cause (a failed BEGIN has nothing to roll back). `touches`: what the
        reads the ledger keeps must read again after it."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise LedgerError(
                    f"ledger write failed: cannot start a transaction in {self.path}: {exc}",
                    hint="another process may hold the ledger locked; try again",
                ) from exc
            try:
                yield self._db
                # before COMMIT: a failed one may have written too
                self._dirty_apps |= touches.apps
                self._dirty_builds |= touches.builds
                self._stale |= touches.everything
                if touches.deployments or touches.everything:
                    self._deploy_writes += 1
                self._db.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):  # the cause below matters, not this
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise LedgerError(f"ledger write failed: {exc}") from exc
                raise

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger read failed: {exc}") from exc

    def _migrate(self) -> None:
        with self._tx(EVERYTHING) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise LedgerError(
                    f"the ledger {self.path} has schema version {version}, newer than this "
                    f"Diplo knows ({len(MIGRATIONS)})",
                    hint="upgrade Diplo",
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(number)}")

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    @cached_property
    def identity(self) -> str:
        """This ledger's name on the engine: 8 hex digits, random, the same for as long as
        the ledger lives (see migration 7)."""
        return str(self._query("SELECT value FROM meta WHERE key = 'id'")[0][0])

    # --- reads ---------------------------------------------------------------------------

    def snapshot(self) -> LedgerSnapshot:
        """Apps, ports and builds as recorded. Read again only after a write: this
        connection's own (only the apps it wrote, at 500 apps a whole read is 25-100 ms of
        JSON parsing, and a heal writes four times), or another process's (SQLite's
        data_version: everything), so a resync of N apps does not parse every app's spec
        N times. Callers share it: it is read-only (Mappings of frozen records)."""
        with self._lock:
            version = self._data_version()
            cached = self._snapshot
            dirty, builds = self._dirty_apps, self._dirty_builds
            if cached is not None and cached[0] == version and not self._stale:
                if not dirty and not builds:
                    return cached[1]
                snapshot = self._patch(cached[1], dirty, builds)
            else:
                snapshot = self._read_snapshot()
            self._stale, self._dirty_apps, self._dirty_builds = False, set(), False
            self._snapshot = (version, snapshot)
            return snapshot

    def _data_version(self) -> int:
        """Changes when another connection commits (SQLite's data_version)."""
        try:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger read failed: {exc}") from exc

    def _read_snapshot(self) -> LedgerSnapshot:
        apps = {r["app"]: _app_record(r) for r in self._query("SELECT * FROM apps")}
        ports = tuple(_port(r) for r in self._query("SELECT * FROM ports ORDER BY app, key"))
        return LedgerSnapshot(apps=apps, ports=ports, builds=self._builds())

    def _builds(self) -> dict[str, BuildRecord]:
        return {
            r["tag"]: BuildRecord(r["tag"], r["build_hash"], r["image_id"])
            for r in self._query("SELECT * FROM builds")
        }

    def _patch(self, old: LedgerSnapshot, dirty: set[str], builds: bool) -> LedgerSnapshot:
        """`old` with the rows of the `dirty` apps (and the builds) read again: the same
        snapshot a whole read gives, the other apps' records kept as they are."""
        names = tuple(sorted(dirty))
        marks = ", ".join("?" for _ in names)
        fresh = {
            r["app"]: _app_record(r)
            for r in self._query(f"SELECT * FROM apps WHERE app IN ({marks})", names)
        }
        apps = {
            name: fresh.get(name, rec)
            for name, rec in old.apps.items()
            if name not in dirty or name in fresh
        }
        apps.update(fresh)
        ports = [p for p in old.ports if p.app not in dirty] + [
            _port(r) for r in self._query(f"SELECT * FROM ports WHERE app IN ({marks})", names)
        ]
        ports.sort(key=lambda p: (p.app, p.key))  # as ORDER BY app, key (binary collation)
        return LedgerSnapshot(
            apps=apps, ports=tuple(ports), builds=self._builds() if builds else old.builds
        )

    def deployments(self, app: str | None = None, limit: int = 20) -> list[Deployment]:
        if app is None:
            rows = self._query("SELECT * FROM deployments ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT * FROM deployments WHERE app = ? ORDER BY id DESC LIMIT ?", (app, limit)
            )
        return [Deployment(**dict(r)) for r in rows]

    def last_deployments(self, apps: Collection[str] | None = None) -> dict[str, Deployment]:
        """Each app's newest deployment (of `apps` only, when given)."""
        return self._newest_of("", apps)

    def deployed(self, apps: Collection[str] | None = None) -> dict[str, Deployment]:
        """Each app's newest successful deployment: the revision that runs (of `apps`
        only, when given)."""
        return self._newest_of("result = 'succeeded'", apps)

    def _newest_of(self, where: str, apps: Collection[str] | None) -> dict[str, Deployment]:
        """The newest deployment per app matching `where`. Every app's is kept until
        deployments are written (at 500 apps, reading them all is 25 ms of a health
        tick); a few apps' are read from the index."""
        if apps is not None and len(apps) <= 16:
            names = tuple(sorted(apps))
            marks = ", ".join("?" for _ in names)
            and_ = f"AND {where} " if where else ""
            rows = self._query(
                "SELECT * FROM deployments WHERE id IN (SELECT MAX(id) FROM deployments "
                f"WHERE app IN ({marks}) {and_}GROUP BY app)",
                names,
            )
            return {r["app"]: Deployment(**dict(r)) for r in rows}
        with self._lock:
            key = (self._data_version(), self._deploy_writes)
            kept = self._newest.get(where)
            if kept is None or kept[:2] != key:
                cond = f"WHERE {where} " if where else ""
                rows = self._query(
                    "SELECT * FROM deployments WHERE id IN (SELECT MAX(id) FROM deployments "
                    f"{cond}GROUP BY app)"
                )
                kept = (*key, {r["app"]: Deployment(**dict(r)) for r in rows})
                self._newest[where] = kept
        every = kept[2]
        if apps is None:
            return dict(every)
        return {a: every[a] for a in apps if a in every}

    def events(self, app: str | None = None, limit: int = 50) -> list[Event]:
        if app is None:
            rows = self._query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT * FROM events WHERE app = ? ORDER BY id DESC LIMIT ?", (app, limit)
            )
        return [Event(**dict(r)) for r in rows]

    # --- writes --------------------------------------------------------------------------

    def start_deployment(
        self,
        app: str,
        project: str,
        spec_hash: str,
        *,
        revision: Revision | None = None,
        record: dict[str, Any] | None = None,
        rollback_of: int | None = None,
    ) -> int:
        rev = revision or Revision(source="")
        with self._tx(DEPLOYMENTS) as db:
            number = db.execute(
                "SELECT COALESCE(MAX(revision), 0) + 1 FROM deployments WHERE app = ?", (app,)
            ).fetchone()[0]
            cur = db.execute(
                "INSERT INTO deployments (app, project, spec_hash, revision, started_at, pid,"
                " source, commit_sha, commit_subject, commit_author, commit_time, dirty,"
                " record_json, rollback_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    app,
                    project,
                    spec_hash,
                    number,
                    now(),
                    os.getpid(),
                    rev.source or None,
                    rev.commit,
                    rev.subject,
                    rev.author,
                    rev.time,
                    int(rev.dirty),
                    None if record is None else json.dumps(record, sort_keys=True),
                    rollback_of,
                ),
            )
            dep_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO events (at, app, kind, message, deployment_id) VALUES (?,?,?,?,?)",
                (now(), app, "deploy.started", f"revision {number}", dep_id),
            )
            _trim_events(db)
            return dep_id

    def finish_deployment(
        self,
        dep_id: int,
        result: str,
        *,
        step: str | None = None,
        error: str | None = None,
        image_id: str | None = None,
        applied: tuple[str, str, str, dict[str, Any]] | None = None,
    ) -> None:
        """Close a deployment. `applied` = (app, project, spec_hash, public spec) records the
        app's new applied spec in the same transaction, so the two never disagree."""
        touches = Touches(apps=frozenset(applied[:1] if applied else ()), deployments=True)
        with self._tx(touches) as db:
            db.execute(
                "UPDATE deployments SET finished_at = ?, result = ?, step = ?, error = ?, "
                "image_id = COALESCE(?, image_id) WHERE id = ?",
                (now(), result, step, error, image_id, dep_id),
            )
            row = db.execute("SELECT app FROM deployments WHERE id = ?", (dep_id,)).fetchone()
            message = result if not error else f"{result} at {step}: {error}"
            db.execute(
                "INSERT INTO events (at, app, kind, message, deployment_id) VALUES (?,?,?,?,?)",
                (now(), row["app"] if row else None, f"deploy.{result}", message, dep_id),
            )
            _trim_events(db)
            _trim_deployments(db, row["app"] if row else None)
            if applied is not None:
                app, project, spec_hash, spec = applied
                self._upsert_app(db, app, project, spec_hash, spec, image_id)

    def record_applied(
        self, app: str, project: str, spec_hash: str, spec: dict[str, Any], image_id: str | None
    ) -> None:
        with self._tx(_apps(app)) as db:
            self._upsert_app(db, app, project, spec_hash, spec, image_id)

    @staticmethod
    def _upsert_app(
        db: sqlite3.Connection,
        app: str,
        project: str,
        spec_hash: str,
        spec: dict[str, Any],
        image_id: str | None,
    ) -> None:
        db.execute(
            "INSERT INTO apps (app, project, spec_hash, spec_json, image_id, applied_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app) DO UPDATE SET project = excluded.project,"
            " spec_hash = excluded.spec_hash, spec_json = excluded.spec_json,"
            " image_id = COALESCE(excluded.image_id, apps.image_id),"
            " applied_at = excluded.applied_at",
            (app, project, spec_hash, json.dumps(spec, sort_keys=True), image_id, now()),
        )

    def forget_app(self, app: str, *, keep_ports: bool = False) -> None:
        """The app was removed: drop its applied spec (and port allocations unless kept)."""
        with self._tx(_apps(app)) as db:
            db.execute("DELETE FROM apps WHERE app = ?", (app,))
            db.execute("DELETE FROM routes WHERE app = ?", (app,))
            db.execute("DELETE FROM probes WHERE app = ?", (app,))
            if not keep_ports:
                db.execute("DELETE FROM ports WHERE app = ?", (app,))
            db.execute(
                "INSERT INTO events (at, app, kind, message) VALUES (?, ?, ?, ?)",
                (now(), app, "app.removed", "removed"),
            )
            _trim_events(db)

    def set_route(self, app: str, project: str, route: dict[str, Any] | None) -> None:
        """What the proxy serves for `app`; None: nothing (it has no domains)."""
        with self._tx(NOTHING) as db:  # routes: not in the snapshot
            if route is None:
                db.execute("DELETE FROM routes WHERE app = ?", (app,))
            else:
                db.execute(
                    "INSERT INTO routes (app, project, route_json) VALUES (?, ?, ?) "
                    "ON CONFLICT (app) DO UPDATE SET project = excluded.project,"
                    " route_json = excluded.route_json",
                    (app, project, json.dumps(route, sort_keys=True)),
                )

    def routes(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """app -> (project, route) for every app the proxy serves."""
        rows = self._query("SELECT app, project, route_json FROM routes ORDER BY app")
        return {r["app"]: (r["project"], json.loads(r["route_json"])) for r in rows}

    def set_ports(self, app: str, allocations: list[PortAllocation]) -> None:
        """Replace the app's host-port allocations."""
        with self._tx(_apps(app, *(a.app for a in allocations))) as db:
            db.execute("DELETE FROM ports WHERE app = ?", (app,))
            db.executemany(
                "INSERT INTO ports (app, key, host_ip, host_port) VALUES (?, ?, ?, ?)",
                [(a.app, a.key, a.host_ip, a.host_port) for a in allocations],
            )

    def record_build(self, tag: str, build_hash: str, image_id: str) -> None:
        with self._tx(Touches(builds=True)) as db:
            db.execute(
                "INSERT INTO builds (tag, build_hash, image_id, built_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tag) DO UPDATE SET build_hash = excluded.build_hash,"
                " image_id = excluded.image_id, built_at = excluded.built_at",
                (tag, build_hash, image_id, now()),
            )

    def keep_image(self, dep_id: int, tag: str) -> None:
        """Deployment `dep_id` keeps its image by `tag`. An earlier deployment of the same
        release (a heal: the same spec and tag) hands the tag over, unless a rollback
        pins it: the history's trim then takes it, and heals of a crashing app do not
        pile up for as long as the image is kept."""
        with self._tx(DEPLOYMENTS) as db:
            db.execute(
                "UPDATE deployments SET kept_image = NULL WHERE kept_image = ? AND id != ? "
                "AND (app, spec_hash) = (SELECT app, spec_hash FROM deployments WHERE id = ?) "
                "AND id NOT IN (SELECT deployment_id FROM pins)",
                (tag, dep_id, dep_id),
            )
            db.execute("UPDATE deployments SET kept_image = ? WHERE id = ?", (tag, dep_id))

    def kept_images(self, app: str) -> list[tuple[int, str]]:
        """(deployment id, tag) of the app's kept images, newest first."""
        rows = self._query(
            "SELECT id, kept_image FROM deployments WHERE app = ? AND kept_image IS NOT NULL "
            "ORDER BY id DESC",
            (app,),
        )
        return [(int(r["id"]), str(r["kept_image"])) for r in rows]

    def kept_tag(self, app: str, image_id: str) -> str | None:
        """The tag that keeps `image_id` for one of `app`'s deployments already, if any."""
        rows = self._query(
            "SELECT kept_image FROM deployments WHERE app = ? AND image_id = ? "
            "AND kept_image IS NOT NULL ORDER BY id DESC LIMIT 1",
            (app, image_id),
        )
        return str(rows[0]["kept_image"]) if rows else None

    def drop_kept_tag(self, app: str, tag: str) -> None:
        """`tag` keeps no deployment of `app`'s image any more."""
        with self._tx(DEPLOYMENTS) as db:
            db.execute(
                "UPDATE deployments SET kept_image = NULL WHERE app = ? AND kept_image = ?",
                (app, tag),
            )

    def seal_env(self, dep_id: int, app: str, blob: bytes) -> None:
        """Keep deployment `dep_id`'s sealed env values; those of `app`'s deployments that
        keep no image any more (no rollback can restore them) go."""
        with self._tx(NOTHING) as db:
            db.execute(
                "INSERT OR REPLACE INTO sealed_env (deployment_id, blob) VALUES (?, ?)",
                (dep_id, blob),
            )
            db.execute(
                "DELETE FROM sealed_env WHERE deployment_id IN (SELECT id FROM deployments "
                "WHERE app = ? AND id != ? AND kept_image IS NULL)",
                (app, dep_id),
            )

    def sealed_env(self, dep_id: int) -> bytes | None:
        rows = self._query("SELECT blob FROM sealed_env WHERE deployment_id = ?", (dep_id,))
        return bytes(rows[0]["blob"]) if rows else None

    # --- rollback pins -------------------------------------------------------------------

    def pin(self, app: str, deployment_id: int, reason: str) -> None:
        with self._tx(NOTHING) as db:
            db.execute(
                "INSERT INTO pins (app, deployment_id, pinned_at, reason) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app) DO UPDATE SET deployment_id = excluded.deployment_id,"
                " pinned_at = excluded.pinned_at, reason = excluded.reason",
                (app, deployment_id, now(), reason),
            )
            db.execute(
                "INSERT INTO events (at, app, kind, message, deployment_id) VALUES (?,?,?,?,?)",
                (now(), app, "app.pinned", reason, deployment_id),
            )
            _trim_events(db)

    def unpin(self, app: str) -> bool:
        with self._tx(NOTHING) as db:
            cur = db.execute("DELETE FROM pins WHERE app = ?", (app,))
            if cur.rowcount:
                db.execute(
                    "INSERT INTO events (at, app, kind, message) VALUES (?, ?, ?, ?)",
                    (now(), app, "app.resumed", "following the source again"),
                )
                _trim_events(db)
            return bool(cur.rowcount)

    def pins(self) -> dict[str, Pin]:
        return {r["app"]: Pin(**dict(r)) for r in self._query("SELECT * FROM pins")}

    # --- cancellation --------------------------------------------------------------------

    def request_cancel(self, app: str) -> list[Deployment]:
        """Flag the app's in-flight deployments for cancellation; returns them. A
        deployment whose process is gone is closed as interrupted instead."""
        flagged = []
        for dep in self.in_flight(app):
            if dep.pid is not None and not _alive(dep.pid):
                self.finish_deployment(dep.id, "interrupted", error="the deploying process died")
                continue
            with self._tx(DEPLOYMENTS) as db:
                db.execute("UPDATE deployments SET cancel_requested = 1 WHERE id = ?", (dep.id,))
                db.execute(
                    "INSERT INTO events (at, app, kind, message, deployment_id) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (now(), app, "deploy.cancel_requested", "cancel requested", dep.id),
                )
                _trim_events(db)
            flagged.append(dep)
        return flagged

    def close_interrupted(self) -> list[int]:
        """Close the deployments left `running` by a process that died (a crash, kill -9,
        a reboot) as interrupted; returns their ids."""
        rows = self._query("SELECT id, pid FROM deployments WHERE result = 'running'")
        dead = [int(r["id"]) for r in rows if r["pid"] is not None and not _alive(r["pid"])]
        for dep_id in dead:
            self.finish_deployment(dep_id, "interrupted", error="the deploying process died")
        return dead

    def in_flight(self, app: str) -> list[Deployment]:
        rows = self._query(
            "SELECT * FROM deployments WHERE app = ? AND result = 'running' ORDER BY id", (app,)
        )
        return [Deployment(**dict(r)) for r in rows]

    def cancel_requested(self, dep_ids: list[int]) -> set[int]:
        if not dep_ids:
            return set()
        marks = ",".join("?" * len(dep_ids))
        rows = self._query(
            f"SELECT id FROM deployments WHERE cancel_requested = 1 AND id IN ({marks})",
            tuple(dep_ids),
        )
        return {int(r["id"]) for r in rows}

    def deployment(self, dep_id: int) -> Deployment | None:
        rows = self._query("SELECT * FROM deployments WHERE id = ?", (dep_id,))
        return Deployment(**dict(rows[0])) if rows else None

    # --- probes --------------------------------------------------------------------------

    def record_probe(
        self,
        app: str,
        ok: bool,
        health: str,
        detail: str,
        latency_ms: float | None,
        deployment_id: int | None = None,
    ) -> None:
        self.record_probes([ProbeNote(app, ok, health, detail, latency_ms, deployment_id)])

    def record_probes(self, notes: Iterable[ProbeNote]) -> None:
        """Probes, in one transaction (a health tick's, for every app at once); each app
        keeps its newest PROBES_KEPT."""
        at = now()
        with self._tx(NOTHING) as db:  # a health tick's: the apps' records stay read
            for n in notes:
                db.execute(
                    "INSERT INTO probes (app, at, ok, health, detail, latency_ms, deployment_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (n.app, at, int(n.ok), n.health, n.detail, n.latency_ms, n.deployment_id),
                )
                db.execute(
                    "DELETE FROM probes WHERE app = ? AND id <= "
                    "(SELECT id FROM probes WHERE app = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (n.app, n.app, PROBES_KEPT),
                )

    def probes(self, app: str, limit: int = 20) -> list[ProbeRecord]:
        rows = self._query(
            "SELECT * FROM probes WHERE app = ? ORDER BY id DESC LIMIT ?", (app, limit)
        )
        return [ProbeRecord(**dict(r)) for r in rows]

    def event(self, kind: str, message: str, app: str | None = None) -> None:
        with self._tx(NOTHING) as db:
            db.execute(
                "INSERT INTO events (at, app, kind, message) VALUES (?, ?, ?, ?)",
                (now(), app, kind, message),
            )
            _trim_events(db)

    def save_alert(self, row: dict[str, Any], keep_resolved: int = 500) -> int:
        """Insert (no `id`) or update one alert; returns its id. Resolved alerts beyond
        the newest `keep_resolved` are dropped."""
        values = tuple(row.get(f) for f in ALERT_FIELDS)
        with self._tx(NOTHING) as db:
            if row.get("id") is None:
                cols = ", ".join(ALERT_FIELDS)
                marks = ", ".join("?" for _ in ALERT_FIELDS)
                cur = db.execute(f"INSERT INTO alerts ({cols}) VALUES ({marks})", values)
                alert_id = int(cur.lastrowid or 0)
            else:
                sets = ", ".join(f"{f} = ?" for f in ALERT_FIELDS)
                db.execute(f"UPDATE alerts SET {sets} WHERE id = ?", (*values, row["id"]))
                alert_id = int(row["id"])
            if row.get("state") == "resolved":
                db.execute(
                    "DELETE FROM alerts WHERE state = 'resolved' AND id NOT IN (SELECT id FROM "
                    "alerts WHERE state = 'resolved' ORDER BY id DESC LIMIT ?)",
                    (keep_resolved,),
                )
        return alert_id

    def alerts(self, resolved: int = 50) -> list[dict[str, Any]]:
        """Every firing alert, then the newest `resolved` ones, newest first."""
        rows = self._query(
            "SELECT * FROM alerts WHERE state != 'resolved' ORDER BY id DESC"
        ) + self._query(
            "SELECT * FROM alerts WHERE state = 'resolved' ORDER BY id DESC LIMIT ?", (resolved,)
        )
        return [dict(r) for r in rows]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _trim_events(db: sqlite3.Connection) -> None:
    db.execute(
        "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (EVENTS_KEPT,),
    )


def _trim_deployments(db: sqlite3.Connection, app: str | None) -> None:
    """Keep the app's newest deployments; older ones go unless a rollback or the history
    needs them (a kept image, a pin, the release that runs) or they are still running."""
    if app is None:
        return
    db.execute(
        "DELETE FROM deployments WHERE app = ? AND result != 'running' AND kept_image IS NULL"
        " AND id NOT IN (SELECT deployment_id FROM pins)"
        " AND id NOT IN (SELECT MAX(id) FROM deployments WHERE app = ? AND result = 'succeeded')"
        " AND id <= (SELECT id FROM deployments WHERE app = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (app, app, app, DEPLOYMENTS_KEPT),
    )
