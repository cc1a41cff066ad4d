"""An in-memory engine with the Runtime interface, for fast executor tests: containers,
images, networks and volumes are dicts; every mutating call is recorded in `calls`.
Failures are injected per image (`fail_start`, `hang_exec`) or per build tag (`fail_build`)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

from diplo.errors import BuildFailed, BuildStopped, ImageUnavailable, NotFound, RuntimeFailure
from diplo.model import (
    LABEL_APP,
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SPEC_HASH,
    BuildSpec,
    ContainerSpec,
    ContainerState,
    Observed,
    ObservedContainer,
    PublishedPort,
)
from diplo.runtime.base import LineSink, StopCheck
from diplo.runtime.execguard import ExecGuard


@dataclass
class _Container:
    id: str
    spec: ContainerSpec
    state: str = "created"
    exit_code: int = 0
    logs: list[str] = field(default_factory=list)
    created: int = 0
    started_at: float = 0.0
    ip: str = ""  # its address on the network while it runs


class MemoryRuntime:
    def __init__(
        self, images: Mapping[str, str] | None = None, wall: Callable[[], float] = time.time
    ) -> None:
        self._wall = wall
        self.containers: dict[str, _Container] = {}
        self.images: dict[str, str] = dict(images or {})
        self.registry: dict[str, str] = {}  # what `pull` can fetch
        self.networks: set[str] = set()
        self.volumes: dict[str, dict[str, str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_start: dict[str, str] = {}  # image -> log line of the crash
        self.fail_build: set[str] = set()
        self.slow_build: set[str] = set()
        self.exec_results: dict[str, tuple[int, str]] = {}  # image -> (exit code, output)
        self.hang_exec: set[str] = set()  # images whose commands hang until killed
        self.stuck_exec: set[str] = set()  # ...and never die, until `unstuck` is set
        self.unstuck = threading.Event()
        self._execs = ExecGuard()
        self.slow_stop: set[str] = set()  # images whose stop takes the whole grace period
        # Each container listing asked for: the apps it was filtered to (None: all of them)
        self.listings: list[frozenset[str] | None] = []
        self.stop_timeouts: list[int] = []
        self._killed: dict[str, threading.Event] = {}
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    def _call(self, what: str, target: str) -> None:
        self.calls.append((what, target))

    def observe(
        self, containers_only: bool = False, apps: Collection[str] | None = None
    ) -> Observed:
        self.listings.append(None if apps is None else frozenset(apps))
        out = []
        for c in self.containers.values():
            labels = c.spec.labels
            if apps is not None and labels[LABEL_APP] not in apps:
                continue
            out.append(
                ObservedContainer(
                    id=c.id,
                    name=c.spec.name,
                    project=labels[LABEL_PROJECT],
                    app=labels[LABEL_APP],
                    replica=int(labels.get(LABEL_REPLICA, "1")),
                    spec_hash=labels[LABEL_SPEC_HASH],
                    state=c.state,
                    status=c.state,
                    image=c.spec.image,
                    image_id=self.image_id(c.spec.image) or "",
                    ports=tuple(
                        PublishedPort(p.key, p.host_ip or "0.0.0.0", p.host_port)
                        for p in c.spec.ports
                        if c.state == "running"
                    ),
                    created=c.created,
                )
            )
        return Observed(
            containers=tuple(out),
            images=dict(self.images),
            networks=frozenset(self.networks),
            volumes=frozenset(self.volumes),
        )

    def version(self) -> str:
        return "memory"

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        self._call("ensure_network", name)
        self.networks.add(name)

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None:
        self._call("ensure_volume", name)
        self.volumes.setdefault(name, dict(labels))

    def build(
        self,
        tag: str,
        build: BuildSpec,
        labels: Mapping[str, str],
        on_line: LineSink | None,
        stop: StopCheck | None = None,
    ) -> str:
        self._call("build", tag)
        if tag in self.slow_build:  # a build that runs until stopped
            while not (stop and stop()):
                time.sleep(0.01)
            raise BuildStopped(f"build of {tag} was stopped")
        if tag in self.fail_build:
            raise BuildFailed(f"build of {tag} failed: RUN exited with 1")
        self.images[tag] = f"sha256:{build.build_hash[:12] or next(self._ids)}"
        return self.images[tag]

    def pull(self, image: str, on_line: LineSink | None) -> str:
        self._call("pull", image)
        if image not in self.registry:
            raise ImageUnavailable(f"image {image} is not on this host and cannot be pulled")
        self.images[image] = self.registry[image]
        return self.images[image]

    def image_id(self, image: str) -> str | None:
        if image.startswith("sha256:"):  # by ID, as a rollback runs a kept image
            return image if image in self.images.values() else None
        return self.images.get(image)

    def tag_image(self, image_id: str, ref: str) -> None:
        self._call("tag", ref)
        self.images[ref] = image_id

    def untag_image(self, ref: str) -> None:
        self._call("untag", ref)
        self.images.pop(ref, None)

    def create(self, spec: ContainerSpec) -> str:
        self._call("create", spec.name)
        if any(c.spec.name == spec.name for c in self.containers.values()):
            raise RuntimeFailure(f"creating a container: name {spec.name} is in use")
        if self.image_id(spec.image) is None:
            raise NotFound(f"creating a container: no such image: {spec.image}")
        cid = f"{next(self._ids):064x}"
        n = next(self._clock)
        self.containers[cid] = _Container(
            cid, spec, created=n, ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        )
        return cid

    def _get(self, cid: str) -> _Container:
        if cid not in self.containers:
            raise NotFound(f"no such container: {cid[:12]}")
        return self.containers[cid]

    def start(self, container_id: str) -> None:
        self._call("start", container_id)
        c = self._get(container_id)
        crash = self.fail_start.get(c.spec.image)
        if crash is not None:
            c.state, c.exit_code = "exited", 1
            c.logs.append(crash)
        else:
            c.state = "running"
            c.started_at = self._wall()
            self._killed.pop(container_id, None)

    def stop(self, container_id: str, timeout: int) -> None:
        self._call("stop", container_id)
        self.stop_timeouts.append(timeout)
        c = self._get(container_id)
        if c.spec.image in self.slow_stop:  # PID 1 ignores SIGTERM: the grace period runs out
            killed = self._killed.setdefault(container_id, threading.Event())
            killed.wait(timeout)
        c.state = "exited"

    def kill(self, container_id: str) -> None:
        self._call("kill", container_id)
        self._get(container_id).state = "exited"
        self._killed.setdefault(container_id, threading.Event()).set()

    def rename(self, container_id: str, name: str) -> None:
        self._call("rename", container_id)
        c = self._get(container_id)
        c.spec = ContainerSpec(**{**c.spec.__dict__, "name": name})

    def remove(self, container_id: str) -> None:
        self._call("remove", container_id)
        self.containers.pop(container_id, None)

    def state(self, container_id: str, listed: str | None = None) -> ContainerState:
        c = self._get(container_id)
        ip = c.ip if c.state == "running" else ""
        return ContainerState(c.state, c.exit_code, "", ip=ip, started_at=c.started_at)

    def logs(
        self, container_id: str, *, tail: int | None, follow: bool, timestamps: bool = False
    ) -> Iterator[bytes]:
        lines = self._get(container_id).logs
        for line in lines[-tail:] if tail else lines:
            yield (line + "\n").encode()

    def exec(self, container_id: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        c = self._get(container_id)
        image = c.spec.image
        if image not in self.hang_exec and image not in self.stuck_exec:
            return self.exec_results.get(image, (0, ""))
        killed = threading.Event()

        def work() -> tuple[int, str]:  # a command that never exits by itself
            while not killed.wait(0.01):
                if image in self.stuck_exec and self.unstuck.is_set():
                    break
            return 137, ""

        def kill() -> bool:
            if image in self.stuck_exec:  # e.g. an engine on another host: cannot kill it
                return False
            killed.set()
            return True

        return self._execs.run(container_id, " ".join(cmd), work, kill, timeout)

    def remove_volume(self, name: str) -> None:
        self._call("remove_volume", name)
        self.volumes.pop(name, None)

    def events(self, stop: StopCheck) -> Iterator[tuple[str, str]]:
        """No engine events here: the stream stays open, quiet, until `stop()`."""
        while not stop():
            time.sleep(0.05)
        yield from ()

    def remove_network(self, name: str) -> None:
        self._call("remove_network", name)
        self.networks.discard(name)

    def volumes_of(self, project: str, app: str) -> list[str]:
        return sorted(
            n
            for n, labels in self.volumes.items()
            if labels.get(LABEL_PROJECT) == project and labels.get(LABEL_APP) == app
        )

    @property
    def mutations(self) -> list[tuple[str, str]]:
        return list(self.calls)
