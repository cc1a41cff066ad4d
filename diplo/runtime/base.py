"""The engine interface the executor and the service layer program against."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Protocol

from diplo.model import BuildSpec, ContainerSpec, ContainerState, Observed

LineSink = Callable[[str], None]
StopCheck = Callable[[], bool]  # True: abandon the operation (cancel or deadline)


class Runtime(Protocol):
    def observe(
        self, containers_only: bool = False, apps: Collection[str] | None = None
    ) -> Observed:
        """What the engine holds; `containers_only` skips images, networks and volumes
        (status needs only containers, and each listing is an engine round trip). With
        `apps`, only those apps' containers are listed (and no foreign names): one app's
        is a filtered listing the engine answers without the others'."""
        ...

    def version(self) -> str: ...

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None: ...

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None: ...

    def build(
        self,
        tag: str,
        build: BuildSpec,
        labels: Mapping[str, str],
        on_line: LineSink | None,
        stop: StopCheck | None = None,
    ) -> str: ...

    def pull(self, image: str, on_line: LineSink | None) -> str: ...

    def image_id(self, image: str) -> str | None: ...

    def tag_image(self, image_id: str, ref: str) -> None: ...

    def untag_image(self, ref: str) -> None:
        """Remove the tag; the image goes too when nothing else tags or uses it."""
        ...

    def create(self, spec: ContainerSpec) -> str: ...

    def start(self, container_id: str) -> None: ...

    def stop(self, container_id: str, timeout: int) -> None: ...

    def kill(self, container_id: str) -> None:
        """SIGKILL the container now (a stop that must not wait for its grace period)."""
        ...

    def rename(self, container_id: str, name: str) -> None: ...

    def remove(self, container_id: str) -> None: ...

    def state(self, container_id: str, listed: str | None = None) -> ContainerState:
        """The container inspected. `listed` (how a listing just showed it): an earlier
        answer may do while the engine reports no change of the container."""
        ...

    def logs(
        self, container_id: str, *, tail: int | None, follow: bool, timestamps: bool = False
    ) -> Iterator[bytes]: ...

    def exec(self, container_id: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        """Run `cmd` in the container; past `timeout` it is killed (RuntimeFailure), and
        no second command starts in that container while one still runs."""
        ...

    def remove_volume(self, name: str) -> None: ...

    def remove_network(self, name: str) -> None: ...

    def volumes_of(self, project: str, app: str) -> list[str]: ...

    def events(self, stop: StopCheck) -> Iterator[tuple[str, str]]:
        """(app, action) for each event of a container Diplo owns, until `stop()`."""
        ...
