"""The metrics collector over folders laid out like /sys and /proc: the cgroup v1 and v2
parsers, rates between two samples, the stats API fallback, the history's roll-ups and
pruning (with an injected clock), and the Prometheus exposition."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from diplo import kernelstats
from diplo.metrics.collector import Collector
from diplo.metrics.prom import OwnMetrics
from diplo.metricstore import HostPoint, MetricStore, Point, Retention
from diplo.runtime.sampling import EngineStats, engine_stats

from .factories import Clock
from .kerneltree import FakeEngine, Tree, running

CID = "a" * 64
OTHER = "b" * 64
MiB = 1024 * 1024


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_counters_are_read_as_docker_stats_shows_them(tmp_path: Path, version: int):
    tree = Tree(tmp_path, version)
    tree.container(
        CID, 4242, cpu_ns=3_000_000_000, memory=80 * MiB, cache=30 * MiB, limit=256 * MiB,
        read=4096, written=8192,
    )  # fmt: skip
    got = kernelstats.container_counters(4242, CID, tmp_path)
    assert got.version == version
    assert got.cpu_ns == 3_000_000_000
    assert got.memory_bytes == 50 * MiB  # less the page cache the kernel can drop
    assert got.memory_limit == 256 * MiB
    assert (got.blk_read, got.blk_write) == (4096, 8192)


@pytest.mark.parametrize("version", [1, 2])
def test_no_memory_limit_reads_as_none(tmp_path: Path, version: int):
    Tree(tmp_path, version).container(CID, 7, memory=MiB)
    assert kernelstats.container_counters(7, CID, tmp_path).memory_limit is None


def test_a_pid_of_another_container_is_never_read_as_this_one(tmp_path: Path):
    tree = Tree(tmp_path, 1)
    tree.container(OTHER, 7, cpu_ns=5)  # PID 7 was reused by another container
    with pytest.raises(kernelstats.Unreadable, match="not in the"):
        kernelstats.container_counters(7, CID, tmp_path)
    with pytest.raises(kernelstats.Unreadable):
        kernelstats.container_counters(8, CID, tmp_path)  # no such process


def test_network_counters_leave_loopback_out(tmp_path: Path):
    Tree(tmp_path).container(CID, 7, rx=1234, tx=567)
    assert kernelstats.net_counters(7, tmp_path) == (1234, 567)


def test_host_counters(tmp_path: Path):
    tree = Tree(tmp_path)
    tree.host(busy=300, idle=700)
    host = kernelstats.host_counters(tmp_path)
    assert (host.cpu_busy, host.cpu_total, host.cores) == (300, 1000, 2)
    assert (host.mem_total, host.mem_available) == (4_000_000 * 1024, 3_000_000 * 1024)
    assert host.load == (0.5, 0.25, 0.1)


def test_docker_stats_answers_are_read_for_both_cgroup_versions():
    v1 = {
        "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}},
        "memory_stats": {
            "usage": 10 * MiB, "limit": 64 * MiB, "stats": {"total_inactive_file": MiB}
        },
        "blkio_stats": {"io_service_bytes_recursive": [
            {"op": "Read", "value": 10}, {"op": "Write", "value": 20}, {"op": "Total", "value": 30}
        ]},
        "networks": {
            "eth0": {"rx_bytes": 100, "tx_bytes": 50}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}
        },
    }  # fmt: skip
    assert engine_stats(v1) == EngineStats(2_000_000_000, 9 * MiB, 64 * MiB, 10, 20, 101, 52)
    v2 = {"memory_stats": {"usage": 5, "stats": {"inactive_file": 1}}, "blkio_stats": {
        "io_service_bytes_recursive": [{"op": "read", "value": 3}]}}  # fmt: skip
    assert engine_stats(v2) == EngineStats(0, 4, None, 3, 0, 0, 0)


def collector(tmp_path: Path, engine: FakeEngine, store: MetricStore | None = None, **kw):
    mono = Clock(100.0)
    wall = Clock(1_700_000_000.0)
    c = Collector(engine, store, interval=10, root=tmp_path, clock=wall, mono=mono, **kw)
    return c, mono, wall


@pytest.mark.parametrize("version", [1, 2])
def test_rates_come_from_two_samples(tmp_path: Path, version: int):
    tree = Tree(tmp_path, version)
    tree.container(CID, 7, cpu_ns=1_000_000_000, memory=20 * MiB, limit=100 * MiB, rx=1000, tx=0)
    engine = FakeEngine([running(CID, 7, cpus=0.5)], root=str(tmp_path))
    c, mono, wall = collector(tmp_path, engine)
    (first,) = c.cycle()
    assert first.cpu_percent is None and first.point() is None  # one sample: no rate yet
    assert first.source == f"cgroup-v{version}"
    assert first.memory_percent == 20.0
    # 10 s later: 7.5 s of CPU used (75 % of a core, 150 % of its half-core limit), 50 KB in
    tree.container(CID, 7, cpu_ns=8_500_000_000, memory=20 * MiB, limit=100 * MiB, rx=51000, tx=0)
    mono.now += 10
    wall.now += 10
    (second,) = c.cycle()
    assert second.cpu_percent == pytest.approx(75.0)
    assert second.cpu_limit_percent == pytest.approx(150.0)
    assert second.rx_bytes_per_second == pytest.approx(5000.0)
    assert second.tx_bytes_per_second == 0
    assert c.host is not None and c.host.cores == 2


def test_a_restart_is_followed_to_the_new_pid_and_rates_restart(tmp_path: Path):
    tree = Tree(tmp_path)
    tree.container(CID, 7, cpu_ns=9_000_000_000)
    engine = FakeEngine([running(CID, 7)])
    c, mono, _ = collector(tmp_path, engine)
    c.cycle()
    # restarted: PID 7 is gone; the new PID 1 is 8 and its CPU counter starts again
    (tmp_path / "proc/7/cgroup").unlink()
    tree.container(CID, 8, cpu_ns=1_000_000)
    engine.refreshed[CID] = running(CID, 8, restarts=1)
    mono.now += 10
    (sample,) = c.cycle()
    assert sample.restarts == 1
    assert sample.source == "cgroup-v1"
    assert sample.cpu_percent is None  # a counter that went back is no rate


def test_unreadable_counters_fall_back_to_the_stats_api_and_say_so(tmp_path: Path):
    Tree(tmp_path)  # nothing of the container is readable
    engine = FakeEngine(
        [running(CID, 7)], engine_stats={CID: EngineStats(10**9, 5 * MiB, None, 0, 0, 10, 20)}
    )
    c, _, _ = collector(tmp_path, engine)
    (sample,) = c.cycle()
    assert sample.source == "docker-stats"
    assert sample.memory_bytes == 5 * MiB and (sample.rx_bytes, sample.tx_bytes) == (10, 20)
    assert engine.stats_calls == 1


def test_a_container_that_stopped_meanwhile_is_left_out(tmp_path: Path):
    Tree(tmp_path)
    engine = FakeEngine([running(CID, 7)], refreshed={CID: None})
    c, _, _ = collector(tmp_path, engine)
    assert c.cycle() == []
    assert engine.stats_calls == 0


def test_the_health_probe_latency_and_the_proxy_seam_are_in_the_sample(tmp_path: Path):
    tree = Tree(tmp_path)
    tree.container(CID, 7)
    tree.container(OTHER, 8)
    asked: list[str] = []

    def latency(app: str) -> float | None:
        asked.append(app)
        return 12.5

    engine = FakeEngine([running(CID, 7), running(OTHER, 8, replica=2)])
    c, _, _ = collector(tmp_path, engine, latency=latency)
    samples = c.cycle()
    assert [s.latency_ms for s in samples] == [12.5, 12.5]
    assert asked == ["web"]  # once per app, not per replica


def test_only_the_apps_of_this_diplo_home_are_sampled(tmp_path: Path):
    tree = Tree(tmp_path)
    tree.container(CID, 7)
    tree.container(OTHER, 8)
    engine = FakeEngine([running(CID, 7, app="web"), running(OTHER, 8, app="theirs")])
    c, _, _ = collector(tmp_path, engine, owned=lambda: ["web"])
    assert [s.app for s in c.cycle()] == ["web"]


def test_listeners_get_each_cycle_and_a_failing_one_stops_nothing(tmp_path: Path):
    Tree(tmp_path).container(CID, 7, memory=MiB)
    c, _, _ = collector(tmp_path, FakeEngine([running(CID, 7)]))
    got: list[tuple[list[str], int]] = []

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in a listener")

    c.listeners += [
        broken,
        lambda samples, host: got.append(([s.app for s in samples], host.cores)),
    ]
    c.cycle()
    c.cycle()
    assert got == [(["web"], 2), (["web"], 2)]


def point(app: str, ts: int, cpu: float, mem: float = 0.0, replica: int = 1) -> Point:
    return Point(app, replica, ts, cpu, None, mem, None, 100.0, 50.0, 0, 0, 0, 0, 0, None)


def test_history_rolls_up_into_minutes_and_ten_minutes_and_prunes(tmp_path: Path):
    store = MetricStore(tmp_path / "metrics.db", Retention(3600, 86400, 14 * 86400), 10)
    t0 = 1_700_000_400  # a multiple of 600
    store.write([point("web", t0 + i * 10, cpu=float(i), mem=i * 100.0) for i in range(120)])
    store.maintain(t0 + 1200)
    # an hour is read from the raw samples, in steps of a minute
    hour = store.series("web", 3600, 60, t0 + 1200)
    assert hour.resolution == 10 and hour.metrics["cpu_percent"][:2] == [2.5, 8.5]
    # two hours are past the raw tier: from the minutes
    minutes = store.series("web", 7200, 60, t0 + 1200)
    assert minutes.resolution == 60 and minutes.step == 60
    assert minutes.timestamps[:2] == [t0, t0 + 60]
    assert minutes.metrics["cpu_percent"][:2] == [2.5, 8.5]  # means of 0..5 and 6..11
    assert minutes.metrics["cpu_percent_max"][:2] == [5.0, 11.0]
    # a day is read from the minutes, in steps of 10 minutes here
    day = store.series("web", 86400, 600, t0 + 1200)
    assert day.resolution == 60 and day.timestamps == [t0, t0 + 600]
    assert day.metrics["cpu_percent"] == [29.5, 89.5]
    # only tier 2 keeps 3 days: its two 10-minute rows are the same means
    ten = store.series("web", 3 * 86400, 60, t0 + 1200)
    assert ten.resolution == 600 and ten.step == 600
    assert ten.metrics["cpu_percent"] == [29.5, 89.5]
    assert ten.metrics["cpu_percent_max"] == [59.0, 119.0]
    # two hours later the raw samples are gone; the minutes stay for the day
    store.maintain(t0 + 1200 + 7200)
    assert store.series("web", 3600 * 4, 10, t0 + 8400).resolution == 60
    assert store.series("web", 600, 10, t0 + 8400).timestamps == []  # no raw sample left
    # 15 days later nothing is left
    store.maintain(t0 + 15 * 86400)
    assert store.series("web", 14 * 86400, 600, t0 + 15 * 86400).timestamps == []
    store.close()


def host_point(ts: int, cpu: float, free: float) -> HostPoint:
    return HostPoint(ts, cpu, cpu * 1000, 8000.0, cpu / 10, 0.2, 0.1, free, 1e9)


def test_the_host_history_rolls_up_and_prunes_like_the_apps(tmp_path: Path):
    store = MetricStore(tmp_path / "metrics.db", Retention(3600, 86400, 14 * 86400), 10)
    t0 = 1_700_000_400
    store.write_host(HostPoint(t0 - 10, None, 1.0, 8000.0, 0.0, 0.0, 0.0, None, None))
    for i in range(120):
        store.write_host(host_point(t0 + i * 10, cpu=float(i), free=1e6 - i))
    raw = store.host_series(3600, None, t0 + 1200)
    assert raw.resolution == 10 and len(raw.timestamps) == 121
    assert raw.metrics["cpu_percent"][:2] == [None, 0.0]  # the first cycle has no CPU rate
    store.maintain(t0 + 1200)
    minutes = store.host_series(7200, 60, t0 + 1200)
    assert minutes.resolution == 60 and minutes.timestamps[1:3] == [t0, t0 + 60]
    assert minutes.metrics["cpu_percent"][1:3] == [2.5, 8.5]
    assert minutes.metrics["cpu_percent_max"][1:3] == [5.0, 11.0]
    assert minutes.metrics["memory_used_bytes"][1] == 2500.0
    assert minutes.metrics["docker_disk_free_bytes"][1:3] == [1e6 - 5, 1e6 - 11]  # the lowest
    # steps coarser than the tier: means of the means, maxima of maxima, minima of minima
    ten = store.host_series(7200, 600, t0 + 1200)
    assert ten.timestamps[-2:] == [t0, t0 + 600]
    assert ten.metrics["cpu_percent"][-2:] == [29.5, 89.5]
    assert ten.metrics["cpu_percent_max"][-2:] == [59.0, 119.0]
    assert ten.metrics["docker_disk_free_bytes"][-2:] == [1e6 - 59, 1e6 - 119]
    store.maintain(t0 + 15 * 86400)
    assert store.host_series(14 * 86400, 600, t0 + 15 * 86400).timestamps == []
    store.close()


def test_rolling_up_twice_changes_nothing(tmp_path: Path):
    store = MetricStore(tmp_path / "metrics.db", interval=10)
    t0 = 1_700_000_400
    store.write([point("web", t0 + i * 10, cpu=1.0) for i in range(60)])
    store.maintain(t0 + 600)
    once = store.series("web", 3600, 60, t0 + 600)
    store.maintain(t0 + 600)
    assert store.series("web", 3600, 60, t0 + 600) == once
    assert len(once.timestamps) == 10


def test_replicas_add_up_and_steps_are_bounded(tmp_path: Path):
    store = MetricStore(tmp_path / "metrics.db", interval=10)
    now = 1_700_000_000
    store.write([point("web", now - 10, 20.0, 100.0, 1), point("web", now - 10, 30.0, 50.0, 2)])
    series = store.series("web", 60, None, now)
    assert series.metrics["cpu_percent"] == [50.0]
    assert series.metrics["memory_bytes"] == [150.0]
    assert series.metrics["rx_bytes_per_second"] == [200.0]
    # 14 days come from the 10-minute tier: the step is raised to its resolution
    assert store.series("web", 14 * 86400, 10, now).step == 600
    # a week of raw samples at a step of 10 s would be 60480 values: the step is raised
    week = MetricStore(tmp_path / "week.db", Retention(raw=7 * 86400), interval=10)
    assert week.series("web", 7 * 86400, 10, now).step == 7 * 86400 // 5000 + 1


def test_latest_is_the_newest_sample_of_each_container(tmp_path: Path):
    store = MetricStore(tmp_path / "metrics.db", interval=10)
    store.write([point("web", 100, 1.0), point("web", 110, 2.0), point("db", 50, 3.0)])
    assert [(p.app, p.cpu_percent) for p in store.latest(115, 30)] == [("web", 2.0)]


def test_the_size_on_disk_is_bounded_by_the_rows_per_container(tmp_path: Path):
    retention = Retention()
    assert retention.rows_per_container(10) == 360 + 1440 + 2016


def test_the_prometheus_exposition_parses(tmp_path: Path):
    tree = Tree(tmp_path)
    tree.container(CID, 7, cpu_ns=2_500_000_000, memory=3 * MiB, limit=8 * MiB, rx=10, tx=20)
    engine = FakeEngine([running(CID, 7, cpus=1.5, restarts=2)], root=str(tmp_path))
    c, _, _ = collector(tmp_path, engine, latency=lambda app: 40.0)
    c.cycle()
    meter = OwnMetrics()
    meter.reconciled("ok")
    meter.deployed("create", True, 3.2)
    meter.drift_heals.inc()
    meter.watch_queue(lambda: 4)
    text = meter.exposition(c).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("app", "web"), ("project", "shop"), ("replica", "1"))
    assert samples[("diplo_container_cpu_seconds_total", labels)] == 2.5
    assert samples[("diplo_container_memory_bytes", labels)] == 3 * MiB
    assert samples[("diplo_container_memory_limit_bytes", labels)] == 8 * MiB
    assert samples[("diplo_container_cpu_limit_cores", labels)] == 1.5
    assert samples[("diplo_container_network_receive_bytes_total", labels)] == 10
    assert samples[("diplo_container_network_transmit_bytes_total", labels)] == 20
    assert samples[("diplo_container_restarts_total", labels)] == 2
    assert samples[("diplo_app_probe_latency_seconds", (("app", "web"),))] == 0.04
    assert samples[("diplo_reconciles_total", (("result", "ok"),))] == 1
    assert samples[("diplo_deploys_total", (("kind", "create"), ("result", "ok")))] == 1
    assert samples[("diplo_deploy_duration_seconds_count", (("result", "ok"),))] == 1
    assert samples[("diplo_drift_heals_total", ())] == 1
    assert samples[("diplo_workqueue_depth", ())] == 4
    assert samples[("diplo_host_memory_total_bytes", ())] == 4_000_000 * 1024
    assert samples[("diplo_host_docker_disk_total_bytes", ())] > 0


def test_an_in_memory_engine_has_no_collector(tmp_path: Path):
    from diplo.hostconfig import MetricsConfig
    from diplo.ops.context import Context
    from diplo.runtime.memory import MemoryRuntime
    from diplo.serve import metrics_collector

    ctx = Context(_runtime=MemoryRuntime())
    assert ctx.meter is None
    assert metrics_collector(tmp_path, ctx, MetricsConfig()) is None
    assert metrics_collector(tmp_path, ctx, MetricsConfig(enabled=False)) is None
    assert not (tmp_path / "metrics.db").exists()


class StuckEngine(FakeEngine):
    """An engine whose listing hangs until released (a slow engine at shutdown)."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.entered, self.release = threading.Event(), threading.Event()

    def running(self):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(10)
        return super().running()


def test_a_stop_during_a_slow_cycle_leaves_the_history_open_for_it(tmp_path: Path):
    Tree(tmp_path).container(CID, 7)
    engine = StuckEngine([running(CID, 7)])
    store = MetricStore(tmp_path / "metrics.db")
    c = Collector(engine, store, interval=10, root=tmp_path)
    c.start()
    assert engine.entered.wait(5)
    c.stop(timeout=0.1)  # the cycle is still in the engine's listing
    engine.release.set()
    assert c._thread is not None
    c._thread.join(5)
    assert c.cycles == 1  # it ended with its writes, into a history still open
    store.close()
