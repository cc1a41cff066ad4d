"""Request metrics of the apps behind the proxy, from Caddy's access log.

Caddy 2.6's Prometheus metrics carry no host label, so they cannot tell apps apart; its
access log can: the proxy writes one JSON line per request with its Host header, status
and duration (diplo/proxy/config.py's `access_logging`). Once per collector cycle,
`AccessLog.refresh` reads the lines appended since the last cycle (`LogTail`: from the
last offset, through a roll or a truncation, never a partial line), maps each host to its
app the way Caddy's host matcher does (exact name, else `*.` and the parent), and turns
the window into a `RequestSample` per app: requests/s, p50/p95/p99 and the 5xx ratio.
It also keeps totals since it started, for the Prometheus counters. Hosts no app serves
(Caddy's 404s for unknown names) are counted apart and otherwise ignored."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog

from diplo.metrics.collector import STATUS_CLASSES, RequestSample, RequestTotals

log = structlog.get_logger("diplo.metrics")

MAX_READ = 32 * 1024 * 1024  # bytes read per refresh at most: the rest waits a cycle
MAX_LINE = 64 * 1024  # a longer line is no entry of ours: skipped
ACCESS_LOGGER = "http.log.access"
_CLASS = {int(c[0]): c for c in STATUS_CLASSES}  # 5 -> "5xx"

# app -> (project, domains): what the proxy serves (the ledger's routes)
Routes = Callable[[], Mapping[str, tuple[str, Sequence[str]]]]


class LogTail:
    """The complete lines appended to a file since the last `read`. Caddy's writer
    (lumberjack) rolls the file by renaming it aside in the same folder and opening a new
    one: the rest of the old file is found by its inode and read first. A file shorter
    than the offset was truncated: it is read from its start. What the file holds when
    the tail is made is history: the first `read` gives what came after."""

    def __init__(self, path: Path, *, max_read: int = MAX_READ) -> None:
        self.path = path
        self.max_read = max_read
        self.skipped = 0  # over-long lines dropped
        self._inode: int | None = None
        self._offset = 0
        with contextlib.suppress(OSError):
            st = os.stat(path)
            self._inode, self._offset = st.st_ino, st.st_size

    def read(self) -> list[bytes]:
        lines: list[bytes] = []
        try:
            f: IO[bytes] | None = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            f = None
        try:
            inode = os.fstat(f.fileno()).st_ino if f is not None else None
            if self._inode is not None and inode != self._inode:  # rolled meanwhile
                lines += self._rest_of_rolled(self._inode)
                self._inode, self._offset = None, 0
            if f is not None:
                if self._inode is None:
                    self._inode, self._offset = inode, 0
                if os.fstat(f.fileno()).st_size < self._offset:  # truncated
                    self._offset = 0
                chunk, self._offset = self._lines(f, self._offset, final=False)
                lines += chunk
        finally:
            if f is not None:
                f.close()
        return lines

    def _rest_of_rolled(self, inode: int) -> list[bytes]:
        try:
            with os.scandir(self.path.parent) as entries:
                rolled = next((e.path for e in entries if e.inode() == inode), None)
        except OSError:
            return []
        if rolled is None:  # gone already (two rolls in one cycle): those are lost
            return []
        try:
            with open(rolled, "rb") as f:
                return self._lines(f, self._offset, final=True)[0]
        except OSError:
            return []

    def _lines(self, f: IO[bytes], offset: int, *, final: bool) -> tuple[list[bytes], int]:
        """The complete lines from `offset` on, and the offset after them. A partial
        last line waits for its end, unless the file is `final` (no one writes to it)."""
        f.seek(offset)
        data = f.read(self.max_read)
        end = data.rfind(b"\n") + 1
        if final or (end == 0 and len(data) >= min(MAX_LINE, self.max_read)):
            end = len(data)  # the whole rest, or a line too long to be ours
        out = []
        for line in data[:end].split(b"\n"):
            if len(line) > MAX_LINE:
                self.skipped += 1
            elif line.strip():
                out.append(line)
        return out, offset + end


@dataclass(frozen=True)
class Entry:
    host: str
    status: int
    duration_s: float


# Caddy writes compact JSON with these keys once per line (URIs and headers deleted): the
# fields are found by pattern, about ten times cheaper than decoding the line; a line
# they do not fit (an escaped host, another layout) is decoded.
_LOGGER = re.compile(rb'"logger":\s*"http\.log\.access[."]')
_HOST = re.compile(rb'"host":\s*"([^"\\]*)"')
_DURATION = re.compile(rb'"duration":\s*([0-9.eE+-]+)[,}]')
_STATUS = re.compile(rb'"status":\s*([0-9]+)[,}]')


def parse(line: bytes) -> Entry | None:
    """An access entry of Caddy's JSON log; None for anything else."""
    if (
        _LOGGER.search(line)
        and (host := _HOST.search(line))
        and (duration := _DURATION.search(line))
        and (status := _STATUS.search(line))
    ):
        try:
            return Entry(host[1].decode(), int(status[1]), float(duration[1]))
        except (ValueError, UnicodeDecodeError):
            pass
    return _decoded(line)


def _decoded(line: bytes) -> Entry | None:
    try:
        data = json.loads(line)
        logger = str(data.get("logger", ""))
        if logger != ACCESS_LOGGER and not logger.startswith(ACCESS_LOGGER + "."):
            return None
        return Entry(
            host=str(data["request"]["host"]),
            status=int(data["status"]),
            duration_s=float(data["duration"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def bare_host(host: str) -> str:
    """A Host header without its port, lower case, without a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[: host.find("]") + 1] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class HostIndex:
    """Host -> (project, app), matched as Caddy's host matcher does: the exact name,
    else a wildcard of its first label (`*.example.com` matches `a.example.com` only)."""

    def __init__(self, routes: Mapping[str, tuple[str, Sequence[str]]]) -> None:
        self.exact: dict[str, tuple[str, str]] = {}
        self.wild: dict[str, tuple[str, str]] = {}
        for app, (project, domains) in routes.items():
            for d in domains:
                name = d.lower().rstrip(".")
                if name.startswith("*."):
                    self.wild[name[2:]] = (project, app)
                else:
                    self.exact[name] = (project, app)

    def app_of(self, host: str) -> tuple[str, str] | None:
        name = bare_host(host)
        if name in self.exact:
            return self.exact[name]
        parent = name.split(".", 1)[1] if "." in name else None
        return self.wild.get(parent) if parent else None


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..1) of sorted values; 0.0 for none."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def window(durations_ms: list[float], errors: int, seconds: float) -> RequestSample:
    ordered = sorted(durations_ms)
    n = len(ordered)
    return RequestSample(
        requests_per_second=round(n / seconds, 3) if seconds > 0 else 0.0,
        p50_ms=round(percentile(ordered, 0.50), 3),
        p95_ms=round(percentile(ordered, 0.95), 3),
        p99_ms=round(percentile(ordered, 0.99), 3),
        error_ratio=round(errors / n, 4) if n else 0.0,
        requests=n,
    )


@dataclass
class _Acc:
    """One app's requests in one window."""

    project: str
    durations_ms: list[float] = field(default_factory=list)
    errors: int = 0
    by_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS_CLASSES, 0))
    duration_seconds: float = 0.0  # of the requests counted in by_class

    def add(self, entry: Entry) -> None:
        self.durations_ms.append(entry.duration_s * 1000.0)
        self.errors += entry.status >= 500
        if 1 <= entry.status // 100 <= 5:  # Caddy logs 0 for a client that went away
            self.by_class[_CLASS[entry.status // 100]] += 1
            self.duration_seconds += entry.duration_s


class AccessLog:
    """The `RequestStats` of diplo/metrics/collector.py, over Caddy's access log."""

    def __init__(
        self, path: Path, routes: Routes, *, mono: Callable[[], float] = time.monotonic
    ) -> None:
        self.tail = LogTail(path)
        self.routes = routes
        self.mono = mono
        self.unmatched = 0  # entries of hosts no app serves, since start
        self._latest: dict[str, RequestSample] = {}
        self._totals: dict[str, RequestTotals] = {}
        self._lock = threading.Lock()
        self._last = mono()  # the first window starts now, with the tail

    def refresh(self) -> None:
        """Read what the proxy logged since the last call: the window of `of`."""
        now = self.mono()
        routes = self.routes()  # first: if the ledger fails, no line is read and lost
        lines = self.tail.read()
        index = HostIndex(routes)
        owners: dict[str, tuple[str, str] | None] = {}  # Host header as sent -> its app
        accs: dict[str, _Acc] = {}
        unmatched = 0
        for line in lines:
            entry = parse(line)
            if entry is None:
                continue
            if entry.host not in owners:
                owners[entry.host] = index.app_of(entry.host)
            owner = owners[entry.host]
            if owner is None:
                unmatched += 1
                continue
            acc = accs.get(owner[1])
            if acc is None:
                acc = accs[owner[1]] = _Acc(owner[0])
            acc.add(entry)
        with self._lock:
            self.unmatched += unmatched
            for app, acc in accs.items():
                totals = self._totals.get(app)
                if totals is None:
                    totals = self._totals[app] = RequestTotals(acc.project)
                totals.project = acc.project
                for code_class, count in acc.by_class.items():
                    totals.by_class[code_class] += count
                totals.duration_seconds += acc.duration_seconds
            for gone in set(self._totals) - set(routes):
                del self._totals[gone]
        seconds, self._last = now - self._last, now
        # every app behind the proxy has a window, an idle one too
        self._latest = (
            {}
            if seconds <= 0
            else {
                app: window(accs[app].durations_ms, accs[app].errors, seconds)
                if app in accs
                else window([], 0, seconds)
                for app in routes
            }
        )

    def of(self, app: str) -> RequestSample | None:
        return self._latest.get(app)

    def totals(self) -> dict[str, RequestTotals]:
        """A copy of each app's totals since start."""
        with self._lock:
            return {
                app: RequestTotals(t.project, dict(t.by_class), t.duration_seconds)
                for app, t in self._totals.items()
            }
