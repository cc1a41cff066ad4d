"""What `diplo top` and `diplo metrics` show, from the metrics history: each app's newest
usage (its replicas added up) and an app's series. `diplo serve` answers the same from
its collector (GET /system/top, GET /apps/{app}/metrics); without a running server they
are read from $DIPLO_HOME/metrics.db, as the last server left it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

from diplo.errors import InputError
from diplo.metricstore import FILE, REQUEST_COLUMNS, MetricStore, Point, Retention, Series
from diplo.paths import default_home

STALE_AFTER = 3  # intervals: a sample older than this is no longer "now"


@dataclass
class AppUsage:
    app: str
    replicas: int = 0
    cpu_percent: float = 0.0  # of one core
    memory_bytes: float = 0.0
    memory_limit_bytes: float | None = None
    rx_bytes_per_second: float = 0.0
    tx_bytes_per_second: float = 0.0
    restarts: int = 0
    latency_ms: float | None = None
    sampled_at: int = 0
    # through the proxy, over the last interval (None: not behind the proxy, or no
    # request answered for the latencies and the error ratio)
    requests_per_second: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_ratio: float | None = None

    @property
    def memory_percent(self) -> float | None:
        if not self.memory_limit_bytes:
            return None
        return 100.0 * self.memory_bytes / self.memory_limit_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "memory_percent": _round(self.memory_percent)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppUsage:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Top:
    apps: list[AppUsage] = field(default_factory=list)
    host: dict[str, Any] | None = None
    interval: float | None = None
    served_by: str | None = None  # the URL of the `diplo serve` that answered

    def as_dict(self) -> dict[str, Any]:
        return {
            "apps": [a.as_dict() for a in self.apps],
            "host": self.host,
            "interval_s": self.interval,
        }


def usage(points: list[Point]) -> list[AppUsage]:
    """Per app, its containers' newest samples added up."""
    apps: dict[str, AppUsage] = {}
    for p in points:
        u = apps.setdefault(p.app, AppUsage(p.app))
        u.replicas += 1
        u.cpu_percent = round(u.cpu_percent + p.cpu_percent, 2)
        u.memory_bytes += p.memory_bytes
        if p.memory_limit_bytes is not None:
            u.memory_limit_bytes = (u.memory_limit_bytes or 0) + p.memory_limit_bytes
        u.rx_bytes_per_second = round(u.rx_bytes_per_second + p.rx_bytes_per_second, 1)
        u.tx_bytes_per_second = round(u.tx_bytes_per_second + p.tx_bytes_per_second, 1)
        u.restarts += int(p.restarts)
        if p.latency_ms is not None:
            u.latency_ms = p.latency_ms
        for name in REQUEST_COLUMNS:  # the app's, the same in each of its replicas' rows
            if (value := getattr(p, name)) is not None:
                setattr(u, name, value)
        u.sampled_at = max(u.sampled_at, p.ts)
    return sorted(apps.values(), key=lambda u: u.app)


def series_answer(series: Series) -> dict[str, Any]:
    """The JSON of a series, as GET /apps/{app}/metrics answers it."""
    return {
        "app": series.app,
        "since": series.since,
        "step": series.step,
        "resolution": series.resolution,
        "timestamps": series.timestamps,
        "metrics": series.metrics,
    }


def _store(interval: float, retention: Retention | None) -> MetricStore:
    path = default_home() / FILE
    if not path.is_file():
        raise InputError(
            f"no metrics history at {path}",
            hint="metrics are collected by `diplo serve`; start it and wait a little",
        )
    return MetricStore(path, retention, interval)


def local_top(interval: float, retention: Retention | None = None) -> Top:
    store = _store(interval, retention)
    try:
        points = store.latest(time.time(), STALE_AFTER * interval)
    finally:
        store.close()
    return Top(usage(points), None, interval)


def local_series(
    app: str, since: float, step: float | None, interval: float, retention: Retention | None = None
) -> dict[str, Any]:
    store = _store(interval, retention)
    try:
        series = store.series(app, since, step, time.time())
    finally:
        store.close()
    return series_answer(series)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
