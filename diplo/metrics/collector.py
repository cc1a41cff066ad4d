"""The collector of `diplo serve`: every `interval` seconds it samples each running
container Diplo owns from the kernel's counters (the engine's stats call only where those
cannot be read), turns counters into rates against the previous sample it keeps in
memory, adds each app's request figures when it is behind the proxy (`RequestStats`,
diplo/metrics/requests.py), writes the samples and the host's to the metrics history and
rolls the history up. It runs in a thread of its own; a failing cycle is logged and the
next one runs as usual."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from diplo import kernelstats
from diplo.errors import DiploError, NotFound
from diplo.kernelstats import Unreadable
from diplo.metricstore import HostPoint, MetricStore, Point

if TYPE_CHECKING:  # the engine side is the composition root's to build
    from diplo.runtime.sampling import EngineStats, Running

log = structlog.get_logger("diplo.metrics")

MAINTAIN_EVERY = 30.0  # s between roll-ups and prunes of the history


class ContainerSource(Protocol):
    """The engine side (diplo/runtime/sampling.py's EngineMeter)."""

    def running(self) -> list[Running]: ...

    def refresh(self, container_id: str) -> Running | None: ...

    def stats(self, container_id: str) -> EngineStats: ...

    def data_root(self) -> str | None: ...


@dataclass(frozen=True)
class RequestSample:
    """Request figures of an app behind the proxy over the last collector interval
    (diplo/metrics/requests.py): all 0.0 when it had no request."""

    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_ratio: float  # 5xx answers / all answers
    requests: int = 0  # answered in the interval


STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass
class RequestTotals:
    """An app's requests through the proxy since the collector started (what the
    Prometheus counters and the summary's count and sum show)."""

    project: str
    by_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS_CLASSES, 0))
    duration_seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.by_class.values())


class RequestStats(Protocol):
    """The seam for the proxy's request metrics: None for an app it does not serve."""

    def refresh(self) -> None:
        """Take the next window (once per cycle, before the `of` calls)."""
        ...

    def of(self, app: str) -> RequestSample | None: ...

    def totals(self) -> Mapping[str, RequestTotals]:
        """Each app's totals since start (a copy)."""
        ...


@dataclass(frozen=True)
class ContainerSample:
    id: str
    app: str
    project: str
    replica: int
    at: float  # epoch seconds
    source: str  # cgroup-v1 | cgroup-v2 | docker-stats: where the counters came from
    cpu_seconds: float  # counters since the container started
    rx_bytes: int
    tx_bytes: int
    blk_read_bytes: int
    blk_write_bytes: int
    memory_bytes: int
    memory_limit_bytes: int | None
    restarts: int
    cpus: float | None  # the CPU limit in cores
    # rates: None on a container's first sample
    cpu_percent: float | None = None  # of one core
    rx_bytes_per_second: float | None = None
    tx_bytes_per_second: float | None = None
    latency_ms: float | None = None  # the newest health probe's
    requests: RequestSample | None = None

    @property
    def cpu_limit_percent(self) -> float | None:
        if self.cpu_percent is None or not self.cpus:
            return None
        return self.cpu_percent / self.cpus

    @property
    def memory_percent(self) -> float | None:
        if not self.memory_limit_bytes:
            return None
        return 100.0 * self.memory_bytes / self.memory_limit_bytes

    def point(self) -> Point | None:
        if self.cpu_percent is None:
            return None
        return Point(
            app=self.app,
            replica=self.replica,
            ts=int(self.at),
            cpu_percent=round(self.cpu_percent, 2),
            cpu_limit_percent=_round(self.cpu_limit_percent, 2),
            memory_bytes=self.memory_bytes,
            memory_limit_bytes=self.memory_limit_bytes,
            rx_bytes_per_second=round(self.rx_bytes_per_second or 0.0),
            tx_bytes_per_second=round(self.tx_bytes_per_second or 0.0),
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            blk_read_bytes=self.blk_read_bytes,
            blk_write_bytes=self.blk_write_bytes,
            restarts=self.restarts,
            latency_ms=_round(self.latency_ms, 1),
            **_request_columns(self.requests),
        )


@dataclass(frozen=True)
class HostSample:
    at: float
    cpu_percent: float | None  # of all cores; None on the first sample
    cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    load: tuple[float, float, float]
    docker_root: str | None
    disk_total_bytes: int | None
    disk_free_bytes: int | None

    def point(self) -> HostPoint:
        return HostPoint(
            ts=int(self.at),
            cpu_percent=_round(self.cpu_percent, 2),
            memory_used_bytes=self.memory_total_bytes - self.memory_available_bytes,
            memory_total_bytes=self.memory_total_bytes,
            load_1m=self.load[0],
            load_5m=self.load[1],
            load_15m=self.load[2],
            docker_disk_free_bytes=self.disk_free_bytes,
            docker_disk_total_bytes=self.disk_total_bytes,
        )

    def as_dict(self) -> dict[str, object]:
        used = self.memory_total_bytes - self.memory_available_bytes
        return {
            "cpu_percent": _round(self.cpu_percent),
            "cores": self.cores,
            "memory": {
                "total_bytes": self.memory_total_bytes,
                "available_bytes": self.memory_available_bytes,
                "used_bytes": used,
                "percent": _round(100.0 * used / self.memory_total_bytes)
                if self.memory_total_bytes
                else None,
            },
            "load": {"1m": self.load[0], "5m": self.load[1], "15m": self.load[2]},
            "docker_disk": {
                "path": self.docker_root,
                "total_bytes": self.disk_total_bytes,
                "free_bytes": self.disk_free_bytes,
                "percent_used": _round(
                    100.0 * (1 - self.disk_free_bytes / self.disk_total_bytes)
                    if self.disk_total_bytes and self.disk_free_bytes is not None
                    else None
                ),
            },
            "sampled_at": round(self.at, 3),
        }


def _request_columns(r: RequestSample | None) -> dict[str, float | None]:
    """A point's request columns: the rate of an app behind the proxy (0 when idle), its
    latencies and error ratio only when it answered requests (an idle interval is no
    0 ms answer, and would drag the history's means down)."""
    if r is None:
        return {}
    answered = r.requests > 0
    return {
        "requests_per_second": r.requests_per_second,
        "p50_ms": r.p50_ms if answered else None,
        "p95_ms": r.p95_ms if answered else None,
        "p99_ms": r.p99_ms if answered else None,
        "error_ratio": r.error_ratio if answered else None,
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# source, cpu ns, rx, tx, (blk read, blk write, memory, memory limit)
_Counters = tuple[str, int, int, int, tuple[int, int, int, int | None]]


@dataclass(frozen=True)
class _Prev:
    mono: float
    cpu_ns: int
    rx: int
    tx: int


class Collector:
    def __init__(
        self,
        source: ContainerSource,
        store: MetricStore | None,
        *,
        interval: float = 10.0,
        root: Path = Path("/"),
        latency: Callable[[str], float | None] | None = None,
        requests: RequestStats | None = None,
        owned: Callable[[], Collection[str]] | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.store, self.interval, self.root = source, store, interval, root
        self.latency, self.requests = latency, requests
        # the apps of this Diplo home: another home's containers on the engine are not ours
        self.owned = owned
        self.clock, self.mono = clock, mono
        self.latest: dict[str, ContainerSample] = {}  # container id -> its newest sample
        self.host: HostSample | None = None
        self.cycles = 0
        # called after each cycle with its samples and the host's (the alerts' seam); a
        # listener that raises is logged and does not stop the others or the collector
        self.listeners: list[Callable[[list[ContainerSample], HostSample | None], None]] = []
        self.last_cycle_seconds = 0.0  # wall time of the last cycle
        self._prev: dict[str, _Prev] = {}
        self._host_prev: tuple[int, int] | None = None
        self._data_root: str | None = None
        self._maintained = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    # --- one cycle -----------------------------------------------------------------------

    def cycle(self) -> list[ContainerSample]:
        """Sample everything once; returns the containers' samples."""
        started = self.mono()
        now = self.clock()
        self.host = self._host(now)
        if self.requests is not None:
            try:
                self.requests.refresh()
            except Exception as exc:  # the containers' samples still count
                log.exception("metrics.requests_failed", error=str(exc))
        samples: list[ContainerSample] = []
        latencies: dict[str, float | None] = {}
        owned = set(self.owned()) if self.owned is not None else None
        for running in self.source.running():
            if owned is not None and running.app not in owned:
                continue
            sample = self._container(running, now)
            if sample is None:
                continue
            if self.latency is not None and sample.app not in latencies:
                latencies[sample.app] = self.latency(sample.app)
            requests = self.requests.of(sample.app) if self.requests else None
            samples.append(_with(sample, latency_ms=latencies.get(sample.app), requests=requests))
        seen = {s.id for s in samples}
        for gone in set(self._prev) - seen:
            del self._prev[gone]
        self.latest = {s.id: s for s in samples}
        if self.store is not None:
            self.store.write([p for s in samples if (p := s.point()) is not None])
            if self.host is not None:
                self.store.write_host(self.host.point())
            if now - self._maintained >= MAINTAIN_EVERY:
                self.store.maintain(now)
                self._maintained = now
        self.cycles += 1
        self.last_cycle_seconds = self.mono() - started
        for listener in list(self.listeners):
            try:
                listener(samples, self.host)
            except Exception as exc:
                log.exception("metrics.listener_failed", error=str(exc))
        return samples

    def _container(self, running: Running, now: float) -> ContainerSample | None:
        mono = self.mono()
        counters: _Counters | None
        try:
            counters = self._kernel(running)
        except Unreadable:
            try:
                refreshed = self.source.refresh(running.id)  # a restart: a new PID 1
            except NotFound:
                refreshed = None  # removed meanwhile
            if refreshed is None:
                self._prev.pop(running.id, None)
                return None
            running = refreshed
            try:
                counters = self._kernel(running)
            except Unreadable as exc:
                log.debug("metrics.kernel_unreadable", app=running.app, error=str(exc))
                counters = self._engine(running)
        if counters is None:
            return None
        source, cpu_ns, rx, tx, stats = counters
        prev = self._prev.get(running.id)
        self._prev[running.id] = _Prev(mono, cpu_ns, rx, tx)
        sample = ContainerSample(
            id=running.id,
            app=running.app,
            project=running.project,
            replica=running.replica,
            at=now,
            source=source,
            cpu_seconds=cpu_ns / 1e9,
            rx_bytes=rx,
            tx_bytes=tx,
            blk_read_bytes=stats[0],
            blk_write_bytes=stats[1],
            memory_bytes=stats[2],
            memory_limit_bytes=stats[3],
            restarts=running.restarts,
            cpus=running.cpus,
        )
        dt = mono - prev.mono if prev else 0.0
        if prev is None or dt <= 0 or cpu_ns < prev.cpu_ns:  # first, or counters reset
            return sample
        return _with(
            sample,
            cpu_percent=100.0 * (cpu_ns - prev.cpu_ns) / 1e9 / dt,
            rx_bytes_per_second=max(0, rx - prev.rx) / dt,
            tx_bytes_per_second=max(0, tx - prev.tx) / dt,
        )

    def _kernel(self, running: Running) -> _Counters:
        cg = kernelstats.container_counters(running.pid, running.id, self.root)
        rx, tx = kernelstats.net_counters(running.pid, self.root)
        stats = (cg.blk_read, cg.blk_write, cg.memory_bytes, cg.memory_limit)
        return f"cgroup-v{cg.version}", cg.cpu_ns, rx, tx, stats

    def _engine(self, running: Running) -> _Counters | None:
        try:
            st = self.source.stats(running.id)
        except DiploError as exc:
            log.debug("metrics.stats_failed", app=running.app, error=exc.message)
            return None
        stats = (st.blk_read, st.blk_write, st.memory_bytes, st.memory_limit)
        return "docker-stats", st.cpu_ns, st.rx, st.tx, stats

    def _host(self, now: float) -> HostSample | None:
        try:
            hc = kernelstats.host_counters(self.root)
        except (Unreadable, ValueError, IndexError):
            return None
        cpu = None
        if self._host_prev is not None and hc.cpu_total > self._host_prev[1]:
            busy = hc.cpu_busy - self._host_prev[0]
            cpu = 100.0 * busy / (hc.cpu_total - self._host_prev[1])
        self._host_prev = (hc.cpu_busy, hc.cpu_total)
        if self._data_root is None:
            with contextlib.suppress(DiploError):
                self._data_root = self.source.data_root()
        disk = kernelstats.disk_usage(self._data_root) if self._data_root else None
        return HostSample(
            at=now,
            cpu_percent=cpu,
            cores=hc.cores,
            memory_total_bytes=hc.mem_total,
            memory_available_bytes=hc.mem_available,
            load=hc.load,
            docker_root=self._data_root,
            disk_total_bytes=disk[0] if disk else None,
            disk_free_bytes=disk[1] if disk else None,
        )

    # --- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="diplo-metrics", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, then close the history and the engine client. A cycle still
        running after `timeout` (a slow engine) keeps them: closed under it, its writes
        would fail; the process is ending, and SQLite's WAL survives it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("metrics.stop_timeout", seconds=timeout)
                return
        if self.store is not None:
            self.store.close()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def _loop(self) -> None:
        while True:
            started = self.mono()
            try:
                self.cycle()
                self._warned = False
            except DiploError as exc:
                if not self._warned:  # once per outage, not every 10 s
                    log.warning("metrics.cycle_failed", error=exc.message)
                    self._warned = True
            except Exception as exc:  # a bug must not end the collector for good
                log.exception("metrics.cycle_crashed", error=str(exc))
            if self._stop.wait(max(0.0, self.interval - (self.mono() - started))):
                return


def _with(sample: ContainerSample, **changes: Any) -> ContainerSample:
    return replace(sample, **changes)
