"""Small builders of model values for pure tests."""

from __future__ import annotations

from typing import Any

from diplo.manifest.hashing import with_spec_hash
from diplo.model import (
    DesiredApp,
    DesiredState,
    HealthSpec,
    ObservedContainer,
    PortSpec,
    PublishedPort,
)

IMAGE_ID = "sha256:" + "a" * 64


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
