"""Folders laid out like a host's /sys/fs/cgroup and /proc (cgroup v1 with the cgroupfs
driver, cgroup v2 with the systemd driver), and a fake engine side for the collector."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diplo.errors import NotFound
from diplo.runtime.sampling import EngineStats, Running

V1_CONTROLLERS = ("cpu,cpuacct", "memory", "blkio", "pids", "devices")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class Tree:
    root: Path
    version: int = 1

    def __post_init__(self) -> None:
        if self.version == 2:
            write(self.root / "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
        else:
            # v1 mounts cpu and cpuacct together, with a symlink per name, as Debian does
            base = self.root / "sys/fs/cgroup"
            (base / "cpu,cpuacct").mkdir(parents=True, exist_ok=True)
            (base / "cpuacct").symlink_to("cpu,cpuacct")
        self.host(busy=100, idle=900)

    def container(
        self,
        cid: str,
        pid: int,
        *,
        cpu_ns: int = 0,
        memory: int = 0,
        cache: int = 0,
        limit: int | None = None,
        read: int = 0,
        written: int = 0,
        rx: int = 0,
        tx: int = 0,
    ) -> None:
        """Create or update the counters of container `cid` whose PID 1 is `pid`."""
        if self.version == 2:
            path = f"/system.slice/docker-{cid}.scope"
            write(self.root / f"proc/{pid}/cgroup", f"0::{path}\n")
            cg = self.root / "sys/fs/cgroup" / path.lstrip("/")
            write(cg / "cpu.stat", f"usage_usec {cpu_ns // 1000}\nuser_usec 1\nsystem_usec 1\n")
            write(cg / "memory.current", f"{memory}\n")
            write(cg / "memory.max", f"{limit}\n" if limit else "max\n")
            write(
                cg / "memory.stat", f"anon {memory - cache}\nfile {cache}\ninactive_file {cache}\n"
            )
            write(cg / "io.stat", f"8:0 rbytes={read} wbytes={written} rios=3 wios=4 dbytes=0\n")
        else:
            path = f"/docker/{cid}"
            lines = [f"{i + 1}:{c}:{path}" for i, c in enumerate(V1_CONTROLLERS)]
            write(self.root / f"proc/{pid}/cgroup", "\n".join([*lines, f"0::{path}"]) + "\n")
            base = self.root / "sys/fs/cgroup"
            write(base / f"cpu,cpuacct{path}/cpuacct.usage", f"{cpu_ns}\n")
            mem = base / f"memory{path}"
            write(mem / "memory.usage_in_bytes", f"{memory}\n")
            write(mem / "memory.limit_in_bytes", f"{limit or 9223372036854771712}\n")
            write(
                mem / "memory.stat",
                f"cache {cache}\nrss {memory - cache}\ntotal_inactive_file {cache}\n",
            )
            write(
                base / f"blkio{path}/blkio.throttle.io_service_bytes_recursive",
                f"8:0 Read {read}\n8:0 Write {written}\n8:0 Sync 0\n8:0 Total {read + written}\n"
                f"Total {read + written}\n",
            )
        write(
            self.root / f"proc/{pid}/net/dev",
            "Inter-|   Receive                            |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes ...\n"
            f"    lo:  5000  10 0 0 0 0 0 0  5000 10 0 0 0 0 0 0\n"
            f"  eth0: {rx}  7 0 0 0 0 0 0  {tx} 5 0 0 0 0 0 0\n",
        )

    def host(self, busy: int, idle: int) -> None:
        # user nice system idle iowait irq softirq steal guest guest_nice
        write(
            self.root / "proc/stat",
            f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n"
            "cpu1 1 0 0 1 0 0 0 0 0 0\nintr 1\n",
        )
        write(
            self.root / "proc/meminfo",
            "MemTotal:        4000000 kB\nMemFree:  1000000 kB\nMemAvailable:    3000000 kB\n",
        )
        write(self.root / "proc/loadavg", "0.50 0.25 0.10 1/100 42\n")


@dataclass
class FakeEngine:
    """The collector's engine side: `running` is what the listing says."""

    running_now: list[Running] = field(default_factory=list)
    refreshed: dict[str, Running | None] = field(default_factory=dict)
    engine_stats: dict[str, EngineStats] = field(default_factory=dict)
    root: str | None = None
    stats_calls: int = 0

    def running(self) -> list[Running]:
        return list(self.running_now)

    def refresh(self, container_id: str) -> Running | None:
        if container_id in self.refreshed:
            return self.refreshed[container_id]
        return next((r for r in self.running_now if r.id == container_id), None)

    def stats(self, container_id: str) -> EngineStats:
        self.stats_calls += 1
        if container_id not in self.engine_stats:
            raise NotFound(f"no container {container_id}")
        return self.engine_stats[container_id]

    def data_root(self) -> str | None:
        return self.root


def running(cid: str, pid: int, app: str = "web", replica: int = 1, **kw: object) -> Running:
    fields_ = {"project": "shop", "restarts": 0, "cpus": None, **kw}
    return Running(id=cid, app=app, replica=replica, pid=pid, **fields_)  # type: ignore[arg-type]
