"""`diplo top` and `diplo metrics` as a user meets them: through a running `diplo serve`
(apiworld's, whose collector sampled `web` at 15 % of a core and 40 MiB of 100 MiB), and
without one, from $DIPLO_HOME/metrics.db."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from diplo.metricstore import MetricStore, Point

from .cliworld import CliWorld, ServedWorld, spec


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliWorld:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DIPLO_DEBUG", raising=False)
    monkeypatch.delenv("DIPLO_TOKEN", raising=False)
    return CliWorld(tmp_path)


def test_top_once_shows_each_app_from_the_server(served: ServedWorld):
    result = served.run("top", "--once")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"from diplo serve at {served.url}"
    assert re.match(r"host: CPU .* of 2 cores, memory .*, load 0\.50, docker disk", lines[1])
    assert re.search(
        r"^APP\s+REPLICAS\s+CPU\s+MEMORY\s+MEM %\s+NET RX\s+NET TX\s+REQ/S\s+5XX\s+RESTARTS",
        lines[2],
    )
    # 20 requests in 10 s through the proxy, 2 of them answered 503
    assert re.search(
        r"^web\s+1\s+15\.0%\s+40\.0 MiB\s+40\.0%\s+0 B/s\s+0 B/s\s+2\.0\s+10\.0%\s+0\s*$",
        lines[3],
    )


def test_top_json_is_one_document(served: ServedWorld):
    result = served.run("top", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (web,) = doc["apps"]
    assert web["app"] == "web" and web["cpu_percent"] == 15.0
    assert web["memory_bytes"] == 40 << 20 and web["memory_percent"] == 40.0
    assert web["requests_per_second"] == 2.0 and web["error_ratio"] == 0.1
    assert (web["p50_ms"], web["p95_ms"], web["p99_ms"]) == (10.0, 19.0, 20.0)
    assert doc["host"]["cores"] == 2 and doc["interval_s"] == 10


def test_metrics_of_an_app_from_the_server(served: ServedWorld):
    result = served.run("metrics", "web", "--since", "30m", "--json")
    assert result.exit_code == 0, result.output
    series = json.loads(result.stdout)
    assert series["since"] == 1800 and series["metrics"]["cpu_percent"] == [15.0]
    table = served.run("metrics", "web", "--since", "1h")
    assert table.exit_code == 0, table.output
    assert table.stdout.startswith("web: every 120s over the last 3600s\n")
    assert re.search(
        r"15\.0%\s+15\.0%\s+40\.0 MiB\s+40\.0 MiB\s+0 B/s\s+0 B/s\s+3 ms"
        r"\s+2\.0\s+10 ms\s+20 ms\s+10\.0%",
        table.stdout,
    )
    assert re.search(r"PROBE\s+REQ/S\s+P50\s+P99\s+5XX", table.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("metrics", "nope"), "error: no app named 'nope' on this host"),
        (("metrics", "web", "--since", "soon"), "error: --since: 'soon' is not a duration"),
        (("metrics", "web", "--step", "10ms"), "error: --step: '10ms' is under a second"),
    ],
)
def test_bad_metrics_requests_say_why(served: ServedWorld, args: tuple[str, ...], message: str):
    result = served.run(*args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_without_a_server_top_reads_the_history_the_last_server_wrote(world: CliWorld):
    missing = world.run("top", "--once")
    assert missing.exit_code == 2
    assert "no metrics history at" in missing.stderr and "diplo serve" in missing.stderr
    store = MetricStore(world.home / "metrics.db")
    now = int(time.time())
    old = Point("gone", 1, now - 3600, 99.0, None, 1.0, None, 0, 0, 0, 0, 0, 0, 0)
    store.write([old, *(point("web", now, replica) for replica in (1, 2))])
    store.close()
    doc = json.loads(world.run("top", "--json").stdout)
    assert [a["app"] for a in doc["apps"]] == ["web"]  # an hour-old sample is not "now"
    (web,) = doc["apps"]
    assert web["replicas"] == 2 and web["cpu_percent"] == 50.0
    assert web["rx_bytes_per_second"] == 2048.0
    table = world.run("top", "--once")
    assert table.exit_code == 0, table.output
    assert re.search(r"^web\s+2\s+50\.0%\s+20\.0 MiB\s+-\s+2\.0 KiB/s", table.stdout, re.M)


def test_without_a_server_metrics_reads_the_history(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    store = MetricStore(world.home / "metrics.db")
    now = int(time.time())
    store.write([point("web", now - 20, 1), point("web", now - 10, 1)])
    store.close()
    series = json.loads(world.run("metrics", "web", "--since", "5m", "--json").stdout)
    assert series["step"] == 10 and len(series["timestamps"]) == 2
    assert series["metrics"]["memory_bytes"] == [10 << 20, 10 << 20]
    assert world.run("metrics", "nope").exit_code == 2


def point(app: str, ts: int, replica: int) -> Point:
    return Point(app, replica, ts, 25.0, None, 10 << 20, None, 1024, 0, 0, 0, 0, 0, 0)
