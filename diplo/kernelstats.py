"""The kernel's own counters of a container and of the host, read from /sys and /proc:
the only module that reads them. A read costs microseconds, where Docker's stats call
costs about a second per container on a loaded engine. `root` is "/" on a real host and
a folder laid out like it in the tests.

A container's cgroup is found from /proc/<pid>/cgroup of its PID 1 (cgroup v1: one path
per controller; v2: one unified path), so both the cgroupfs and the systemd drivers work."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 62  # v1 writes "no limit" as a huge page-rounded number


class Unreadable(Exception):
    """The counters are not there (a container gone, another namespace, no permission)."""


@dataclass(frozen=True)
class CgroupCounters:
    cpu_ns: int  # CPU time used since the container started, all cores
    memory_bytes: int  # in use, less the page cache the kernel can drop (as `docker stats`)
    memory_limit: int | None  # None: no limit
    blk_read: int
    blk_write: int
    version: int  # 1 or 2


@dataclass(frozen=True)
class HostCounters:
    cpu_busy: int  # jiffies, all cores
    cpu_total: int
    cores: int
    mem_total: int
    mem_available: int
    load: tuple[float, float, float]


def _read(path: str | Path) -> str:
    # bytes, not Path.read_text: at 500 containers a collection reads 3,000 of these
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError as exc:
        raise Unreadable(f"{path}: {exc.strerror or exc}") from exc


def _int(path: str | Path) -> int:
    text = _read(path).strip()
    try:
        return int(text)
    except ValueError as exc:
        raise Unreadable(f"{path}: not a number: {text[:40]!r}") from exc


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat) as a dict; odd lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


@functools.lru_cache(maxsize=8)
def is_v2(root: Path) -> bool:  # the host's cgroup layout does not change under a process
    return (root / "sys/fs/cgroup/cgroup.controllers").is_file()


def cgroup_paths(pid: int, root: Path = Path("/")) -> dict[str, str]:
    """Controller -> cgroup path of a process (v2's unified path under the key "")."""
    paths: dict[str, str] = {}
    for line in _read(root / f"proc/{pid}/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            paths[""] = path
        for name in controllers.split(","):
            paths[name] = path
    return paths


def container_counters(pid: int, container_id: str, root: Path = Path("/")) -> CgroupCounters:
    """The cgroup counters of the container whose PID 1 is `pid`. The cgroup path must
    name the container: a PID reused by another process is never read as this one."""
    paths = cgroup_paths(pid, root)  # read every time: it is what proves the PID is ours
    cg = root / "sys/fs/cgroup"
    if is_v2(root):
        path = paths.get("", "")
        if container_id not in path:
            raise Unreadable(f"process {pid} is not in the cgroup of {container_id[:12]}")
        return _v2(f"{cg}/{path.lstrip('/')}")
    for needed in ("cpuacct", "memory", "blkio"):
        if container_id not in paths.get(needed, ""):
            raise Unreadable(f"process {pid} is not in the {needed} cgroup of {container_id[:12]}")
    return _v1(
        _v1_dir(cg, "cpuacct", paths["cpuacct"]),
        _v1_dir(cg, "memory", paths["memory"]),
        _v1_dir(cg, "blkio", paths["blkio"]),
    )


@functools.lru_cache(maxsize=4096)
def _v1_dir(cg: Path, controller: str, path: str) -> str:
    """A container's folder of a v1 controller: kept for its life, as its cgroup path
    (the key) stays, while three looks at the file system per container were a third of
    a collection at 500 containers. A failure is not kept."""
    # cpuacct is often co-mounted as cpu,cpuacct (with a cpuacct symlink, or without).
    for mount in (controller, "cpu,cpuacct", "cpuacct,cpu"):
        folder = cg / mount / path.lstrip("/")
        if folder.is_dir():
            return str(folder)
    raise Unreadable(f"no {controller} cgroup at {path}")


def _v1(cpu: str, memory: str, blkio: str) -> CgroupCounters:
    stat = _keyed(_read(f"{memory}/memory.stat"))
    usage = _int(f"{memory}/memory.usage_in_bytes")
    limit = _int(f"{memory}/memory.limit_in_bytes")
    read = write = 0
    for line in _read(f"{blkio}/blkio.throttle.io_service_bytes_recursive").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2].isdigit():
            if fields[1] == "Read":
                read += int(fields[2])
            elif fields[1] == "Write":
                write += int(fields[2])
    return CgroupCounters(
        cpu_ns=_int(f"{cpu}/cpuacct.usage"),
        memory_bytes=max(0, usage - stat.get("total_inactive_file", 0)),
        memory_limit=limit if limit < UNLIMITED else None,
        blk_read=read,
        blk_write=write,
        version=1,
    )


def _v2(folder: str) -> CgroupCounters:
    cpu = _keyed(_read(f"{folder}/cpu.stat"))
    if "usage_usec" not in cpu:
        raise Unreadable(f"{folder}/cpu.stat: no usage_usec")
    stat = _keyed(_read(f"{folder}/memory.stat"))
    current = _int(f"{folder}/memory.current")
    limit_text = _read(f"{folder}/memory.max").strip()
    read = write = 0
    try:
        io = _read(f"{folder}/io.stat")
    except Unreadable:
        io = ""  # no io controller delegated: no block I/O figures
    for line in io.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                write += int(value)
    return CgroupCounters(
        cpu_ns=cpu["usage_usec"] * 1000,
        memory_bytes=max(0, current - stat.get("inactive_file", 0)),
        memory_limit=int(limit_text) if limit_text.isdigit() else None,
        blk_read=read,
        blk_write=write,
        version=2,
    )


def net_counters(pid: int, root: Path = Path("/")) -> tuple[int, int]:
    """(rx, tx) bytes of every interface but loopback in the process's network namespace."""
    rx = tx = 0
    for line in _read(f"{root}/proc/{pid}/net/dev").splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def host_counters(root: Path = Path("/")) -> HostCounters:
    busy = total = cores = 0
    for line in _read(root / "proc/stat").splitlines():
        if line.startswith("cpu "):
            ticks = [int(v) for v in line.split()[1:]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
            total = sum(ticks[:8])  # guest time is already counted in user
            busy = total - idle
        elif line.startswith("cpu"):
            cores += 1
    mem = {k.rstrip(":"): v * 1024 for k, v in _keyed_kb(_read(root / "proc/meminfo")).items()}
    load = _read(root / "proc/loadavg").split()
    return HostCounters(
        cpu_busy=busy,
        cpu_total=total,
        cores=max(1, cores),
        mem_total=mem.get("MemTotal", 0),
        mem_available=mem.get("MemAvailable", mem.get("MemFree", 0)),
        load=(float(load[0]), float(load[1]), float(load[2])),
    )


def _keyed_kb(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            out[fields[0]] = int(fields[1])
    return out


def disk_usage(path: str) -> tuple[int, int] | None:
    """(total, free) bytes of the filesystem that holds `path`; None when it is not here
    (e.g. Docker's data root seen from inside a container)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
