"""The metrics history: `$DIPLO_HOME/metrics.db`, a SQLite file of its own beside the
ledger (WAL), so that a sample every few seconds per container never contends with the
ledger's deploy records. Three tiers, each written by the collector itself:

- tier 0: every sample, kept `raw` seconds (default an hour);
- tier 1: 1-minute averages (and maxima) of tier 0, kept `minute` seconds (a day);
- tier 2: 10-minute averages of tier 1, kept `ten_minutes` seconds (14 days).

One row is about 90 bytes on disk, so its size is bounded by the number of containers:
see `rows_per_container` and the README's Metrics section."""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from diplo.errors import LedgerError
from diplo.paths import default_home

FILE = "metrics.db"
MINUTE, TEN_MINUTES = 60, 600
MAX_POINTS = 5000  # per series answer: since / step at most this

# name -> how the 1- and 10-minute tiers aggregate it (the raw column of the same name).
# Rounded: SQLite stores an integral REAL in as few bytes as an integer needs (a byte
# count needs no fraction, a percentage two digits), which keeps rows small.
COLUMNS = {
    "cpu_percent": "ROUND(AVG({c}), 2)",
    "cpu_percent_max": "MAX({c})",
    "cpu_limit_percent": "ROUND(AVG({c}), 2)",
    "memory_bytes": "ROUND(AVG({c}))",
    "memory_bytes_max": "MAX({c})",
    "memory_limit_bytes": "MAX({c})",
    "rx_bytes_per_second": "ROUND(AVG({c}))",
    "tx_bytes_per_second": "ROUND(AVG({c}))",
    "rx_bytes": "MAX({c})",
    "tx_bytes": "MAX({c})",
    "blk_read_bytes": "MAX({c})",
    "blk_write_bytes": "MAX({c})",
    "restarts": "MAX({c})",
    "latency_ms": "ROUND(AVG({c}), 1)",
    # an app's requests through the proxy (each of its replicas' rows holds the app's);
    # a roll-up keeps the mean of the interval's percentiles, not a percentile of all
    "requests_per_second": "ROUND(AVG({c}), 3)",
    "p50_ms": "ROUND(AVG({c}), 1)",
    "p95_ms": "ROUND(AVG({c}), 1)",
    "p99_ms": "ROUND(AVG({c}), 1)",
    "error_ratio": "ROUND(AVG({c}), 4)",
}
REQUEST_COLUMNS = ("requests_per_second", "p50_ms", "p95_ms", "p99_ms", "error_ratio")
# how the replicas of one app add up in a series (the rest are summed)
MEAN_OVER_REPLICAS = {"cpu_limit_percent", "latency_ms", *REQUEST_COLUMNS}

# the host's figures, one row per cycle (the same tiers and retention as the apps')
HOST_COLUMNS = {
    "cpu_percent": "ROUND(AVG({c}), 2)",  # of all cores
    "cpu_percent_max": "MAX({c})",
    "memory_used_bytes": "ROUND(AVG({c}))",
    "memory_used_bytes_max": "MAX({c})",
    "memory_total_bytes": "MAX({c})",
    "load_1m": "ROUND(AVG({c}), 2)",
    "load_5m": "ROUND(AVG({c}), 2)",
    "load_15m": "ROUND(AVG({c}), 2)",
    "docker_disk_free_bytes": "MIN({c})",
    "docker_disk_total_bytes": "MAX({c})",
}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS points (
    tier INTEGER NOT NULL,
    app TEXT NOT NULL,
    replica INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    {", ".join(f"{c} REAL" for c in COLUMNS)},
    PRIMARY KEY (tier, app, replica, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS host_points (
    tier INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    {", ".join(f"{c} REAL" for c in HOST_COLUMNS)},
    PRIMARY KEY (tier, ts)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Retention:
    raw: int = 3600
    minute: int = 86400
    ten_minutes: int = 14 * 86400

    def tiers(self, interval: float) -> list[tuple[int, float, int]]:
        """(tier, resolution in s, kept for s), finest first."""
        return [
            (0, interval, self.raw),
            (1, MINUTE, self.minute),
            (2, TEN_MINUTES, self.ten_minutes),
        ]

    def rows_per_container(self, interval: float) -> int:
        return int(self.raw / interval + self.minute / MINUTE + self.ten_minutes / TEN_MINUTES)


@dataclass(frozen=True)
class Point:
    """One sample of one container, as stored (rates in bytes/s, CPU in % of one core)."""

    app: str
    replica: int
    ts: int
    cpu_percent: float
    cpu_limit_percent: float | None
    memory_bytes: float
    memory_limit_bytes: float | None
    rx_bytes_per_second: float
    tx_bytes_per_second: float
    rx_bytes: float
    tx_bytes: float
    blk_read_bytes: float
    blk_write_bytes: float
    restarts: float
    latency_ms: float | None = None
    requests_per_second: float | None = None  # None: not behind the proxy
    p50_ms: float | None = None  # None too for an interval without requests
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_ratio: float | None = None


@dataclass(frozen=True)
class HostPoint:
    """One sample of the host (CPU in % of all cores; None where it was not read)."""

    ts: int
    cpu_percent: float | None
    memory_used_bytes: float
    memory_total_bytes: float
    load_1m: float
    load_5m: float
    load_15m: float
    docker_disk_free_bytes: float | None
    docker_disk_total_bytes: float | None


@dataclass
class Series:
    app: str
    step: int
    resolution: float  # of the tier the series was read from
    since: int = 0  # seconds of history asked for, at most the longest tier
    timestamps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)


class MetricStore:
    def __init__(
        self, path: str | Path, retention: Retention | None = None, interval: float = 10.0
    ) -> None:
        self.path = Path(path)
        self.retention = retention or Retention()
        self.interval = float(interval)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=30, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._add_missing_columns()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"cannot open the metrics history at {self.path}: {exc}",
                hint="check DIPLO_HOME and that the folder is writable",
            ) from exc

    def _add_missing_columns(self) -> None:
        """A metrics.db of an older Diplo gets the columns it lacks (empty in old rows)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(points)")}
        for name in COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE points ADD COLUMN {name} REAL")

    @classmethod
    def open_default(
        cls, retention: Retention | None = None, interval: float = 10.0
    ) -> MetricStore:
        return cls(default_home() / FILE, retention, interval)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def size_bytes(self) -> int:
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(size)

    # --- writing -------------------------------------------------------------------------

    def write(self, points: list[Point]) -> None:
        if not points:
            return
        names = ["app", "replica", "ts", *_raw_columns()]
        sql = (
            f"INSERT OR REPLACE INTO points (tier, {', '.join(names)}, cpu_percent_max, "
            f"memory_bytes_max) VALUES (0, {', '.join('?' * len(names))}, ?, ?)"
        )
        rows = [(*(getattr(p, n) for n in names), p.cpu_percent, p.memory_bytes) for p in points]
        with self._lock, self._db:
            self._db.executemany(sql, rows)

    def write_host(self, point: HostPoint) -> None:
        names = HOST_POINT_FIELDS
        sql = (
            f"INSERT OR REPLACE INTO host_points (tier, {', '.join(names)}, cpu_percent_max, "
            f"memory_used_bytes_max) VALUES (0, {', '.join('?' * len(names))}, ?, ?)"
        )
        row = (*(getattr(point, n) for n in names), point.cpu_percent, point.memory_used_bytes)
        with self._lock, self._db:
            self._db.execute(sql, row)

    def maintain(self, now: float) -> None:
        """Roll finished minutes into tier 1 and finished 10 minutes into tier 2, then drop
        what each tier keeps no longer. Idempotent: run it as often as you like."""
        with self._lock, self._db:
            for table, keys, columns in (
                ("points", ("app", "replica"), COLUMNS),
                ("host_points", (), HOST_COLUMNS),
            ):
                self._rollup(table, keys, columns, 0, 1, MINUTE, now)
                self._rollup(table, keys, columns, 1, 2, TEN_MINUTES, now)
                for tier, _, keep in self.retention.tiers(self.interval):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE tier = ? AND ts < ?", (tier, int(now) - keep)
                    )

    def _rollup(
        self,
        table: str,
        keys: tuple[str, ...],
        columns: dict[str, str],
        src: int,
        dst: int,
        res: int,
        now: float,
    ) -> None:
        last = self._db.execute(f"SELECT MAX(ts) FROM {table} WHERE tier = ?", (dst,)).fetchone()[0]
        start = last + res if last is not None else 0
        end = int(now) // res * res  # only buckets that are over
        if end <= start:
            return
        aggregates = ", ".join(how.format(c=c) for c, how in columns.items())
        key = "".join(f"{k}, " for k in keys)
        self._db.execute(
            f"INSERT OR REPLACE INTO {table} (tier, {key}ts, {', '.join(columns)}) "
            f"SELECT ?, {key}(ts / ?) * ? AS bucket, {aggregates} FROM {table} "
            f"WHERE tier = ? AND ts >= ? AND ts < ? GROUP BY {key}bucket",
            (dst, res, res, src, start, end),
        )

    # --- reading -------------------------------------------------------------------------

    def pick_tier(self, since: float) -> tuple[int, float]:
        """The finest tier that still keeps `since` seconds (the freshest values: a
        roll-up lags by up to a minute), else the coarsest. Even the finest is cheap to
        read: each tier holds at most a few thousand rows per container."""
        tiers = self.retention.tiers(self.interval)
        tier, res, _ = next((t for t in tiers if t[2] >= since), tiers[-1])
        return tier, res

    def _window(self, since: float, step: float | None) -> tuple[float, int, float, int]:
        """(since, tier, resolution, bucket) of a read: `since` at most the longest tier;
        the bucket never finer than the tier, nor making more than MAX_POINTS values."""
        since = min(since, self.retention.ten_minutes)
        tier, res = self.pick_tier(since)
        return since, tier, res, max(int(step or res), int(res), 1, -(-int(since) // MAX_POINTS))

    def series(self, app: str, since: float, step: float | None, now: float) -> Series:
        """An app's metrics over the last `since` seconds (at most the longest tier), one
        value per `step` (raised to the tier's resolution, and so that there are at most
        MAX_POINTS values); the replicas added up; no value where no sample fell."""
        since, tier, res, bucket = self._window(since, step)
        with self._lock:
            rows = self._db.execute(
                f"SELECT replica, ts, {', '.join(COLUMNS)} FROM points "
                "WHERE tier = ? AND app = ? AND ts >= ? ORDER BY ts",
                (tier, app, int(now - since)),
            ).fetchall()
        # bucket -> replica -> metric -> values
        acc: dict[int, dict[int, dict[str, list[float]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        for replica, ts, *values in rows:
            slot = acc[ts // bucket * bucket][replica]
            for name, value in zip(COLUMNS, values, strict=True):
                if value is not None:
                    slot[name].append(value)
        out = Series(app, bucket, res, int(since), metrics={name: [] for name in COLUMNS})
        for b in sorted(acc):
            out.timestamps.append(b)
            for name in COLUMNS:
                per = [_agg(name, v[name]) for v in acc[b].values() if v[name]]
                if not per:
                    out.metrics[name].append(None)
                elif name in MEAN_OVER_REPLICAS:
                    out.metrics[name].append(round(sum(per) / len(per), 3))
                else:
                    out.metrics[name].append(round(sum(per), 3))
        return out

    def host_series(self, since: float, step: float | None, now: float) -> Series:
        """The host's figures over the last `since` seconds, as `series` reads an app's
        (app "host"); a bucket of several samples holds their mean, or their maximum for
        the `_max` figures and the totals, their minimum for the free disk."""
        since, tier, res, bucket = self._window(since, step)
        with self._lock:
            rows = self._db.execute(
                f"SELECT ts, {', '.join(HOST_COLUMNS)} FROM host_points "
                "WHERE tier = ? AND ts >= ? ORDER BY ts",
                (tier, int(now - since)),
            ).fetchall()
        acc: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for ts, *values in rows:
            for name, value in zip(HOST_COLUMNS, values, strict=True):
                if value is not None:
                    acc[ts // bucket * bucket][name].append(value)
        out = Series("host", bucket, res, int(since), metrics={n: [] for n in HOST_COLUMNS})
        for b in sorted(acc):
            out.timestamps.append(b)
            for name, how in HOST_COLUMNS.items():
                values = acc[b][name]
                if not values:
                    out.metrics[name].append(None)
                elif how.startswith(("MAX", "MIN")):
                    out.metrics[name].append((max if how.startswith("MAX") else min)(values))
                else:
                    out.metrics[name].append(round(sum(values) / len(values), 3))
        return out

    def latest(self, now: float, max_age: float) -> list[Point]:
        """The newest raw sample of each container sampled in the last `max_age` s."""
        names = ["app", "replica", "ts", *_raw_columns()]
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(names)} FROM points WHERE tier = 0 AND ts >= ? ORDER BY ts",
                (int(now - max_age),),
            ).fetchall()
        newest: dict[tuple[str, int], Point] = {}
        for row in rows:
            newest[(row[0], row[1])] = Point(**dict(zip(names, row, strict=True)))
        return sorted(newest.values(), key=lambda p: (p.app, p.replica))


def _agg(name: str, values: list[float]) -> float:
    return max(values) if COLUMNS[name].startswith("MAX") else sum(values) / len(values)


HOST_POINT_FIELDS = [f.name for f in fields(HostPoint)]


def _raw_columns() -> list[str]:
    return [n for n in asdict(Point("", 0, 0, *([0.0] * 11))) if n not in ("app", "replica", "ts")]
