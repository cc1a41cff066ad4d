"""Small builders of model values for pure tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from diplo.manifest.hashing import with_spec_hash
from diplo.metrics.collector import ContainerSample
from diplo.model import (
    DesiredApp,
    DesiredState,
    HealthSpec,
    ObservedContainer,
    PortSpec,
    PublishedPort,
)

IMAGE_ID = "sha256:" + "a" * 64
MiB = 1 << 20


class Clock:
    """A clock the test moves: it says `now`, monotonic or wall time alike."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def app(name: str, project: str = "shop", **kw: Any) -> DesiredApp:
    kw.setdefault("image", "busybox:latest")
    kw.setdefault("health", HealthSpec(start_period=0))  # healthy once running
    return with_spec_hash(DesiredApp(name=name, project=project, **kw))


def state(*apps: DesiredApp) -> DesiredState:
    return DesiredState(apps=apps, projects=tuple(sorted({a.project for a in apps})))


def running(
    a: DesiredApp, *, state: str = "running", spec_hash: str | None = None, ports=(), **kw: Any
) -> ObservedContainer:
    return ObservedContainer(
        id=kw.pop("id", f"{a.name}-id".ljust(64, "0")),
        name=kw.pop("name", f"{a.project}-{a.name}-1"),
        project=kw.pop("project", a.project),
        app=a.name,
        replica=1,
        spec_hash=a.spec_hash if spec_hash is None else spec_hash,
        state=state,
        status=state,
        image=a.image,
        image_id=kw.pop("image_id", IMAGE_ID),
        ports=tuple(PublishedPort(k, ip, p) for k, ip, p in ports),
        **kw,
    )


def port(container: int, host: int | None = None, ip: str = "") -> PortSpec:
    return PortSpec(container_port=container, host_port=host, host_ip=ip)


def container_sample(app: str = "web", replica: int = 1, **kw: Any) -> ContainerSample:
    """One container's metrics sample: 10 MiB of a 100 MiB limit, 1 % CPU; `kw` changes
    any field."""
    base = ContainerSample(
        id=f"{app}-{replica}",
        app=app,
        project="p",
        replica=replica,
        at=0.0,
        source="cgroup-v2",
        cpu_seconds=1.0,
        rx_bytes=0,
        tx_bytes=0,
        blk_read_bytes=0,
        blk_write_bytes=0,
        memory_bytes=10 * MiB,
        memory_limit_bytes=100 * MiB,
        restarts=0,
        cpus=None,
        cpu_percent=1.0,
    )
    return replace(base, **kw)
