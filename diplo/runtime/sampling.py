"""What the metrics collector asks the engine: which of Diplo's containers run, with the
PID 1 of each (its cgroup and network counters are then read from the kernel), and,
only for a container whose counters cannot be read, Docker's one-shot stats call (about
a second per container on a busy engine: the fallback, never the way)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from diplo.errors import NotFound
from diplo.model import LABEL_APP, LABEL_PROJECT, LABEL_REPLICA
from diplo.runtime.docker_engine import mapped


@dataclass(frozen=True)
class Running:
    id: str
    app: str
    project: str
    replica: int
    pid: int
    restarts: int
    cpus: float | None  # the container's CPU limit in cores (None: all of the host's)


@dataclass(frozen=True)
class EngineStats:
    """The same counters as the kernel's, from Docker's stats call."""

    cpu_ns: int
    memory_bytes: int
    memory_limit: int | None
    blk_read: int
    blk_write: int
    rx: int
    tx: int


class EngineMeter:
    """One listing per cycle; a container is inspected once, and again only when its
    counters stop matching it (a restart gives it a new PID 1)."""

    def __init__(self, timeout: int = 10, only: dict[str, str] | None = None) -> None:
        """`only`: more labels a container must have (the benchmark's own project)."""
        try:
            self.api = docker.APIClient(
                version="auto", timeout=timeout, **docker.utils.kwargs_from_env()
            )
        except docker.errors.DockerException as exc:
            from diplo.errors import EngineUnavailable

            raise EngineUnavailable(str(exc)) from exc
        self._known: dict[str, Running] = {}
        self._lock = threading.Lock()
        self._filters = [LABEL_APP, *(f"{k}={v}" for k, v in (only or {}).items())]

    @mapped("listing the running containers")
    def running(self) -> list[Running]:
        listed = self.api.containers(filters={"label": self._filters, "status": "running"})
        ids = {c["Id"] for c in listed}
        with self._lock:
            for gone in set(self._known) - ids:
                del self._known[gone]
        found = []
        for c in listed:
            known = self._known.get(c["Id"])
            if known is None:
                try:
                    known = self.refresh(c["Id"])
                except NotFound:
                    continue  # removed between the listing and the inspect
            if known is not None:
                found.append(known)
        return found

    @mapped("inspecting a container")
    def refresh(self, container_id: str) -> Running | None:
        """Inspect again (after a restart); None when it no longer runs."""
        info = self.api.inspect_container(container_id)
        state = info.get("State") or {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        if not state.get("Running") or not state.get("Pid") or LABEL_APP not in labels:
            with self._lock:
                self._known.pop(container_id, None)
            return None
        try:
            replica = int(labels.get(LABEL_REPLICA, "1"))
        except ValueError:
            replica = 1
        running = Running(
            id=info["Id"],
            app=labels[LABEL_APP],
            project=labels.get(LABEL_PROJECT, ""),
            replica=replica,
            pid=int(state["Pid"]),
            restarts=int(info.get("RestartCount") or 0),
            cpus=_cpus(info.get("HostConfig") or {}),
        )
        with self._lock:
            self._known[container_id] = running
        return running

    @mapped("asking the engine for a container's stats")
    def stats(self, container_id: str) -> EngineStats:
        return engine_stats(self.api.stats(container_id, stream=False))

    @mapped("asking the engine its data root")
    def data_root(self) -> str | None:
        root = self.api.info().get("DockerRootDir")
        return str(root) if root else None

    def close(self) -> None:
        self.api.close()


def _cpus(host: dict[str, Any]) -> float | None:
    if host.get("NanoCpus"):
        return int(host["NanoCpus"]) / 1e9
    quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 0
    if quota > 0 and period > 0:
        return float(quota) / float(period)
    return None


def engine_stats(raw: dict[str, Any]) -> EngineStats:
    """The counters of one answer of Docker's stats call (cgroup v1 or v2 engine)."""
    mem = raw.get("memory_stats") or {}
    mstat = mem.get("stats") or {}
    cache = mstat.get("total_inactive_file", mstat.get("inactive_file", 0))
    limit = mem.get("limit")
    read = write = 0
    for row in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(row.get("op", "")).lower()
        if op == "read":
            read += int(row.get("value", 0))
        elif op == "write":
            write += int(row.get("value", 0))
    nets = (raw.get("networks") or {}).values()
    return EngineStats(
        cpu_ns=int(((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)),
        memory_bytes=max(0, int(mem.get("usage", 0)) - int(cache)),
        memory_limit=int(limit) if limit and int(limit) < (1 << 62) else None,
        blk_read=read,
        blk_write=write,
        rx=sum(int(n.get("rx_bytes", 0)) for n in nets),
        tx=sum(int(n.get("tx_bytes", 0)) for n in nets),
    )
