"""The metrics collector's cost (issue 12): CPU time of one collection cycle over N idle
containers labelled like Diplo's, read from the kernel's counters as `diplo serve` does,
against two baselines measured in the same run:

- an empty cycle: the engine listing of the same containers, no counter read;
- Docker's stats API (one-shot, stream=False) on a few of the containers, extrapolated
  to N: what sampling them through the engine would cost.

The target: at 100 containers every 10 s, under 5 % of one core. The CPU is this
process's (user + system, `time.process_time()`: the SDK's threads included); the engine's
own CPU is shown beside it from /proc (dockerd's, noisy on a shared machine). It also
fills a metrics history for N containers at full retention and prints its size on disk.

Usage: .venv/bin/python benchmarks/metrics.py [--containers 100] [--cycles 20]
       [--stats-sample 5] [--interval 10]"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diplo.metrics.collector import Collector  # noqa: E402
from diplo.metricstore import COLUMNS, MetricStore, Retention  # noqa: E402
from diplo.runtime.sampling import EngineMeter  # noqa: E402

BENCH_LABEL = "diplo-bench"
TARGET = 5.0  # % of one core at the interval


def dockerd_cpu() -> float | None:
    """CPU seconds dockerd has used (None when it is not a process of this machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "dockerd":
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return None


class Bench:
    def __init__(self, n: int) -> None:
        self.api = docker.APIClient(version="auto", timeout=120)
        self.project = f"mb{os.getpid() % 100000}"
        self.n = n
        self.work = Path(tempfile.mkdtemp(prefix="diplo-metrics-bench-"))

    def start(self) -> None:
        def one(i: int) -> None:
            labels = {
                "diplo.project": self.project,
                "diplo.app": f"{self.project}-{i}",
                "diplo.replica": "1",
                BENCH_LABEL: "1",
            }
            c = self.api.create_container(
                "busybox:latest",
                ["sleep", "3600"],
                labels=labels,
                name=f"{self.project}-{i}",
                host_config=self.api.create_host_config(init=True),
            )
            self.api.start(c["Id"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(self.n)))

    def cleanup(self) -> int:
        """Remove every container of this run and its history files (70-100 MB); returns
        how many containers are left (0)."""
        shutil.rmtree(self.work, ignore_errors=True)
        filters = {"label": [f"diplo.project={self.project}", BENCH_LABEL]}

        def rm(cid: str) -> None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.api.remove_container(cid, force=True)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(rm, [c["Id"] for c in self.api.containers(all=True, filters=filters)]))
        return len(self.api.containers(all=True, filters=filters))

    def meter(self) -> EngineMeter:
        return EngineMeter(only={"diplo.project": self.project})


def measure(cycle: Any, cycles: int, pause: float = 0.2) -> dict[str, float]:
    """CPU and wall time per cycle (medians), and dockerd's CPU per cycle (mean)."""
    cpu, wall = [], []
    engine_before = dockerd_cpu()
    for _ in range(cycles):
        c0, w0 = time.process_time(), time.perf_counter()
        cycle()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        time.sleep(pause)  # rates need time between samples, as in serve
    engine_after = dockerd_cpu()
    engine = (
        (engine_after - engine_before) / cycles
        if engine_before is not None and engine_after is not None
        else None
    )
    return {
        "cpu_s": statistics.median(cpu),
        "cpu_max_s": max(cpu),
        "wall_s": statistics.median(wall),
        "engine_cpu_s": engine if engine is not None else float("nan"),
    }


def sample_values(k: int) -> list[float | None]:
    """One row as the collector writes it: percentages with two digits, byte counts and
    rates as integers, no CPU limit, a probe latency, and no request figures (an app
    without domains); in the order of metricstore.COLUMNS, by name, so that a column
    added there is never a row of the wrong width here."""
    cpu = round(random.uniform(0, 100), 2)
    mem = random.randint(5 << 20, 500 << 20)
    row: dict[str, float | None] = {
        "cpu_percent": cpu,
        "cpu_percent_max": cpu,
        "memory_bytes": mem,
        "memory_bytes_max": mem,
        "memory_limit_bytes": 512 << 20,
        "rx_bytes_per_second": random.randint(0, 200_000),
        "tx_bytes_per_second": random.randint(0, 200_000),
        "restarts": 0,
        "latency_ms": round(random.uniform(0.5, 50), 1),
    }
    for name in ("rx_bytes", "tx_bytes", "blk_read_bytes", "blk_write_bytes"):
        row[name] = random.randint(0, 1 << 34) + k * 1000
    return [row.get(name) for name in COLUMNS]


def history_size(n: int, interval: float, work: Path) -> dict[str, Any]:
    """A metrics.db holding every tier full for `n` containers (as after 14 days)."""
    retention = Retention()
    path = work / "metrics.db"
    MetricStore(path, retention, interval).close()
    db = sqlite3.connect(path)
    now = int(time.time())
    names = ", ".join(COLUMNS)
    marks = ", ".join("?" * (4 + len(COLUMNS)))
    rows = 0
    for tier, res, keep in retention.tiers(interval):
        batch = []
        for app in range(n):
            for k in range(int(keep / res)):
                values = sample_values(k)
                batch.append((tier, f"app-{app:03d}", 1, now - int(k * res), *values))
        db.executemany(
            f"INSERT INTO points (tier, app, replica, ts, {names}) VALUES ({marks})", batch
        )
        db.commit()
        rows += len(batch)
    pages = (
        db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    )
    db.close()
    return {"rows": rows, "bytes": pages, "per_container_bytes": pages / n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--stats-sample", type=int, default=5)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()

    bench = Bench(args.containers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {"containers": args.containers, "interval_s": args.interval}
    try:
        print(f"starting {args.containers} idle busybox containers ({bench.project})...")
        bench.start()
        others = len(docker.APIClient(version="auto").containers()) - args.containers
        results["other_running_containers"] = others

        # 1. Diplo's cycle: kernel counters, samples written to a real metrics.db
        meter = bench.meter()
        store = MetricStore(bench.work / "cycle.db", interval=args.interval)
        collector = Collector(meter, store, interval=args.interval)
        collector.cycle()
        collector.cycle()  # warm: every container inspected once, rates from here on
        sampled = len(collector.latest)
        sources = sorted({s.source for s in collector.latest.values()})
        kernel = measure(collector.cycle, args.cycles)
        store.close()

        # 2. an empty cycle: the listing alone
        empty = measure(meter.running, args.cycles)

        # 3. the stats API on a few containers, extrapolated
        some = [r.id for r in meter.running()[: args.stats_sample]]
        per = measure(lambda: [meter.stats(cid) for cid in some], max(3, args.cycles // 4))
        scale = args.containers / max(1, len(some))
        stats = {k: v * scale for k, v in per.items()}
        meter.close()

        size = history_size(args.containers, args.interval, bench.work)
    finally:
        left = bench.cleanup()
    if left:
        print(f"error: {left} benchmark containers are left", file=sys.stderr)
        return 1

    def pct(cpu_s: float) -> float:
        return 100.0 * cpu_s / args.interval

    rows = [
        ("kernel counters (Diplo)", args.containers, kernel),
        ("empty cycle (listing only)", args.containers, empty),
        (f"stats API, {len(some)} sampled x{scale:g}", args.containers, stats),
    ]
    print(
        f"\nsampled {sampled} containers from {', '.join(sources)}; "
        f"{others} other containers ran on the engine\n"
    )
    print(
        "| cycle | containers | CPU per cycle | % of one core at "
        f"{args.interval:g} s | wall per cycle | dockerd CPU per cycle |"
    )
    print("|---|---|---|---|---|---|")
    for name, n, m in rows:
        print(
            f"| {name} | {n} | {m['cpu_s'] * 1000:.1f} ms | {pct(m['cpu_s']):.2f} % | "
            f"{m['wall_s'] * 1000:.0f} ms | {m['engine_cpu_s'] * 1000:.0f} ms |"
        )
    ratio = kernel["cpu_s"] / stats["cpu_s"] if stats["cpu_s"] else float("nan")
    wall_ratio = kernel["wall_s"] / stats["wall_s"] if stats["wall_s"] else float("nan")
    print(
        f"\nDiplo's cycle / the stats API's: {ratio:.3f} of the CPU, "
        f"{wall_ratio:.4f} of the wall time"
    )
    mb = size["bytes"] / 1e6
    print(
        f"metrics.db at full retention for {args.containers} containers: {size['rows']} rows, "
        f"{mb:.1f} MB ({size['per_container_bytes'] / 1e3:.0f} kB per container)"
    )
    ok = pct(kernel["cpu_s"]) < TARGET
    verdict = "PASS" if ok else "MISS"
    print(
        f"{verdict}: {pct(kernel['cpu_s']):.2f} % of one core at {args.containers} containers "
        f"every {args.interval:g} s (target < {TARGET:g} %)"
    )
    results.update(
        sampled=sampled, sources=sources, kernel=kernel, empty=empty, stats_api=stats,
        stats_sampled=len(some), cpu_ratio=ratio, history=size,
        percent_of_core=pct(kernel["cpu_s"]), target_percent=TARGET, verdict=verdict,
    )  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
