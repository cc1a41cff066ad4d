"""Request metrics from the proxy's access log: the tail (new lines only, through rolls,
truncations and half-written lines), the host -> app mapping, the percentiles, and the
windows the collector stores (one per cycle, an app's figures not multiplied by its
replicas)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, cast

import pytest

from diplo.ledger import Ledger
from diplo.metrics.collector import ContainerSample, RequestSample
from diplo.metrics.requests import (
    AccessLog,
    Entry,
    HostIndex,
    LogTail,
    bare_host,
    parse,
    percentile,
)
from diplo.metricstore import MetricStore
from diplo.ops.context import Context
from diplo.ops.metrics import usage
from diplo.proxy.manager import Proxy
from diplo.runtime.memory import MemoryRuntime
from diplo.serve import request_stats

from .factories import Clock, container_sample


def entry(host: str, status: int = 200, ms: float = 10.0, logger: str = "http.log.access") -> str:
    """An access line as Caddy 2.6 writes it through Diplo's filter encoder."""
    return json.dumps(
        {
            "level": "info",
            "ts": 1795959834.74,
            "logger": logger,
            "msg": "handled request",
            "request": {"proto": "HTTP/1.1", "method": "GET", "host": host},
            "duration": ms / 1000.0,
            "size": 2,
            "status": status,
        }
    )


def append(path: Path, *lines: str, end: str = "\n") -> None:
    with path.open("a") as f:
        f.write("\n".join(lines) + end)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    folder = tmp_path / "access"
    folder.mkdir()
    return folder / "access.log"


# --- the tail -------------------------------------------------------------------------


def test_a_tail_starts_at_the_end_of_what_was_there_and_then_reads_only_new_lines(
    log_path: Path,
):
    append(log_path, "old 1", "old 2")
    tail = LogTail(log_path)
    assert tail.read() == []  # history, not this window
    append(log_path, "new 1", "new 2")
    assert tail.read() == [b"new 1", b"new 2"]
    assert tail.read() == []
    append(log_path, "new 3")
    assert tail.read() == [b"new 3"]


def test_a_half_written_line_waits_for_its_end(log_path: Path):
    log_path.write_text("")
    tail = LogTail(log_path)
    tail.read()
    append(log_path, "whole", '{"half', end="")
    assert tail.read() == [b"whole"]
    append(log_path, '": 1}')
    assert tail.read() == [b'{"half": 1}']


def test_a_rolled_file_is_read_to_its_end_then_the_new_one_from_its_start(log_path: Path):
    append(log_path, "before")
    tail = LogTail(log_path)
    tail.read()
    append(log_path, "late in the old file")
    # what Caddy's writer does: rename aside, open a new file of the same name
    log_path.rename(log_path.with_name("access-2026-11-29T13-43-20.000.log"))
    append(log_path, "first of the new file")
    assert tail.read() == [b"late in the old file", b"first of the new file"]
    append(log_path, "second")
    assert tail.read() == [b"second"]


def test_a_roll_whose_old_file_is_gone_already_loses_only_that_files_rest(log_path: Path):
    append(log_path, "before")
    tail = LogTail(log_path)
    tail.read()
    append(log_path, "lost")
    log_path.rename(log_path.with_name("rolled.log"))
    log_path.with_name("rolled.log").unlink()
    append(log_path, "kept")
    assert tail.read() == [b"kept"]


def test_a_truncated_file_is_read_again_from_its_start(log_path: Path):
    append(log_path, "a long line of history", "another")
    tail = LogTail(log_path)
    tail.read()
    with log_path.open("w") as f:  # same inode, shorter
        f.write("x\n")
    assert tail.read() == [b"x"]


def test_a_file_that_appears_later_is_read_from_its_start(log_path: Path):
    tail = LogTail(log_path)
    assert tail.read() == []  # no file yet: nothing, no error
    append(log_path, "first")
    assert tail.read() == [b"first"]


def test_an_over_long_line_is_skipped_and_reading_goes_on(log_path: Path):
    log_path.write_text("")
    tail = LogTail(log_path)
    tail.read()
    append(log_path, "x" * (70 * 1024))
    append(log_path, "next")
    assert tail.read() == [b"next"]
    assert tail.skipped == 1


def test_a_read_takes_at_most_max_read_bytes_and_the_rest_next_time(log_path: Path):
    log_path.write_text("")
    tail = LogTail(log_path, max_read=16)
    tail.read()
    append(log_path, "line-1", "line-2", "line-3")  # 21 bytes
    assert tail.read() == [b"line-1", b"line-2"]
    assert tail.read() == [b"line-3"]


# --- entries and hosts ---------------------------------------------------------------


def test_only_access_entries_are_parsed():
    assert parse(entry("a.example.com", 503, 20.0).encode()) is not None
    got = parse(entry("a.example.com", 503, 20.0).encode())
    assert got is not None and (got.host, got.status, got.duration_s) == (
        "a.example.com",
        503,
        0.02,
    )
    assert parse(entry("a", logger="http.log.error").encode()) is None
    assert parse(b"not json") is None
    assert parse(b'{"logger": "http.log.access", "status": 200}') is None  # no host
    assert parse(b"[1, 2]") is None


CADDY_26 = (  # verbatim, from Caddy 2.6.2 with Diplo's logging config
    b'{"level":"error","ts":1795959834.836597,"logger":"http.log.access","msg":"handled '
    b'request","request":{"proto":"HTTP/1.1","method":"GET","host":"b.localhost"},'
    b'"duration":0.000428124,"size":0,"status":502}'
)


def test_caddys_lines_are_read_by_pattern_and_odd_ones_decoded():
    assert parse(CADDY_26) == Entry("b.localhost", 502, 0.000428124)
    # an escaped host does not fit the pattern: the line is decoded
    escaped = CADDY_26.replace(b'"b.localhost"', b'"b\\u002elocalhost"')
    assert b"\\u002e" in escaped
    assert parse(escaped) == Entry("b.localhost", 502, 0.000428124)
    late_status = (
        b'{"logger":"http.log.access.x","status":201,"duration":1e-3,"request":{"host":"h"}}'
    )
    assert parse(late_status) == Entry("h", 201, 0.001)
    assert parse(CADDY_26.replace(b"http.log.access", b"http.log.accessory")) is None


@pytest.mark.parametrize(
    ("host", "bare"),
    [
        ("Web.Example.com", "web.example.com"),
        ("web.example.com:8443", "web.example.com"),
        ("web.example.com.", "web.example.com"),
        ("[::1]:8080", "[::1]"),
        ("10.0.0.1:80", "10.0.0.1"),
    ],
)
def test_a_host_header_loses_its_port_and_case(host: str, bare: str):
    assert bare_host(host) == bare


def test_hosts_map_to_apps_as_caddys_host_matcher_does():
    index = HostIndex(
        {"web": ("shop", ["shop.example.com"]), "tenants": ("saas", ["*.example.com"])}
    )
    assert index.app_of("SHOP.example.com:8443") == ("shop", "web")  # exact beats wildcard
    assert index.app_of("acme.example.com") == ("saas", "tenants")
    assert index.app_of("a.b.example.com") is None  # a wildcard is one label
    assert index.app_of("example.com") is None
    assert index.app_of("unknown.test") is None


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


# --- the windows ---------------------------------------------------------------------


ROUTES = {"web": ("shop", ["web.example.com"]), "api": ("shop", ["api.example.com"])}


def test_each_window_gives_rate_percentiles_and_error_ratio_per_app(log_path: Path):
    log_path.write_text(entry("web.example.com") + "\n")  # before serve: not counted
    clock = Clock(100.0)
    stats = AccessLog(log_path, lambda: ROUTES, mono=clock)
    stats.refresh()
    assert stats.of("web") is None  # made and refreshed at one instant: no window yet
    # 100 requests to web over 10 s: 1..100 ms, the slowest 5 answered 502
    lines = [entry("web.example.com", 502 if ms > 95 else 200, ms) for ms in range(1, 101)]
    lines += [entry("nobody.example.com", 404)] * 3  # Caddy's 404 of an unknown host
    append(log_path, *lines)
    clock.now = 110.0
    stats.refresh()
    web = stats.of("web")
    assert web == RequestSample(
        requests_per_second=10.0,
        p50_ms=50.0,
        p95_ms=95.0,
        p99_ms=99.0,
        error_ratio=0.05,
        requests=100,
    )
    # behind the proxy and idle: a zero rate, no latency to speak of
    assert stats.of("api") == RequestSample(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    assert stats.of("worker") is None  # not behind the proxy: the probe's latency stays
    assert stats.unmatched == 3
    totals = stats.totals()
    assert set(totals) == {"web"}
    assert totals["web"].project == "shop" and totals["web"].count == 100
    assert totals["web"].by_class["2xx"] == 95 and totals["web"].by_class["5xx"] == 5
    assert totals["web"].duration_seconds == pytest.approx(5.05)
    # the next window starts empty; totals keep counting
    append(log_path, entry("web.example.com", 200, 4.0))
    clock.now = 120.0
    stats.refresh()
    again = stats.of("web")
    assert again is not None and again.requests == 1 and again.requests_per_second == 0.1
    assert again.error_ratio == 0.0 and again.p99_ms == 4.0
    assert stats.totals()["web"].count == 101


def test_an_app_whose_route_went_has_no_window_and_no_totals(log_path: Path):
    routes = dict(ROUTES)
    clock = Clock(100.0)
    stats = AccessLog(log_path, lambda: routes, mono=clock)
    stats.refresh()
    append(log_path, entry("api.example.com"))
    clock.now += 10
    stats.refresh()
    assert "api" in stats.totals()
    del routes["api"]
    clock.now += 10
    stats.refresh()
    assert stats.of("api") is None and "api" not in stats.totals()


def test_a_garbled_log_costs_its_lines_and_nothing_else(log_path: Path):
    log_path.write_text("")
    clock = Clock(100.0)
    stats = AccessLog(log_path, lambda: ROUTES, mono=clock)
    stats.refresh()
    append(log_path, "\x00\x01garbage", entry("web.example.com", 500, 8.0), "{}")
    clock.now += 10
    stats.refresh()
    web = stats.of("web")
    assert web is not None and web.requests == 1 and web.error_ratio == 1.0


# --- what the history keeps ----------------------------------------------------------


def sample(replica: int, requests: RequestSample | None, at: float = 1000.0) -> ContainerSample:
    return container_sample(
        "web", replica, id=f"c{replica}", project="shop", at=at, memory_bytes=1 << 20,
        memory_limit_bytes=None, cpu_percent=5.0, requests=requests,
    )  # fmt: skip


def test_an_apps_request_figures_are_not_multiplied_by_its_replicas(tmp_path: Path):
    store = MetricStore(tmp_path / "metrics.db")
    busy = RequestSample(12.5, 20.0, 80.0, 120.0, 0.02, 125)
    points = [p for r in (1, 2) if (p := sample(r, busy).point()) is not None]
    store.write(points)
    series = store.series("web", 3600, None, 1010.0)
    assert series.metrics["requests_per_second"] == [12.5]
    assert series.metrics["p99_ms"] == [120.0]
    assert series.metrics["error_ratio"] == [0.02]
    assert series.metrics["cpu_percent"] == [10.0]  # still the sum of the replicas
    (web,) = usage(points)
    assert web.requests_per_second == 12.5 and web.error_ratio == 0.02 and web.p50_ms == 20.0
    store.close()


def test_an_idle_interval_has_a_zero_rate_and_no_latency(tmp_path: Path):
    store = MetricStore(tmp_path / "metrics.db")
    idle = RequestSample(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    store.write([p for p in (sample(1, idle).point(),) if p is not None])
    series = store.series("web", 3600, None, 1010.0)
    assert series.metrics["requests_per_second"] == [0.0]
    assert series.metrics["p50_ms"] == [None] and series.metrics["error_ratio"] == [None]
    store.close()


def test_a_history_of_an_older_diplo_gets_the_request_columns(tmp_path: Path):
    path = tmp_path / "metrics.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE points (tier INTEGER NOT NULL, app TEXT NOT NULL, replica INTEGER NOT "
        "NULL, ts INTEGER NOT NULL, cpu_percent REAL, PRIMARY KEY (tier, app, replica, ts)) "
        "WITHOUT ROWID"
    )
    db.execute("INSERT INTO points VALUES (0, 'web', 1, 1000, 3.0)")
    db.commit()
    db.close()
    store = MetricStore(path)
    store.write(
        [p for p in (sample(1, RequestSample(1.0, 2.0, 3.0, 4.0, 0.0, 10), 1010.0).point(),) if p]
    )
    series = store.series("web", 3600, 10, 1020.0)
    assert series.metrics["cpu_percent"] == [3.0, 5.0]
    assert series.metrics["requests_per_second"] == [None, 1.0]
    store.close()
    assert os.path.getsize(path) > 0


# --- serve's wiring ------------------------------------------------------------------


def test_serve_reads_the_access_log_of_this_homes_proxy_with_the_ledgers_routes(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    home = tmp_path / "home"
    proxy = Proxy(home, runtime=cast(Any, object()))  # never started here
    route = {"domains": ["web.example.com"], "http_port": 8080, "tls": "auto", "replicas": 1}
    ledger.set_route("web", "shop", route)
    assert request_stats(Context(_runtime=MemoryRuntime(), _ledger=ledger)) is None  # no proxy
    stats = request_stats(Context(_runtime=MemoryRuntime(), _ledger=ledger, _proxy=proxy))
    assert isinstance(stats, AccessLog)
    assert stats.tail.path == home / "proxy" / "access" / "access.log"
    assert stats.routes() == {"web": ("shop", ["web.example.com"])}
    ledger.close()
