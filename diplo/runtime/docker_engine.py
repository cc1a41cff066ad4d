"""The Docker engine adapter: the only module in Diplo that imports `docker`.

It uses the SDK's low-level APIClient (one request per call, no hidden inspects), and maps
every SDK/transport error to Diplo's error tree at this boundary."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import signal
import socket
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
import urllib3.exceptions

from diplo.errors import (
    BuildFailed,
    BuildStopped,
    EngineUnavailable,
    ImageUnavailable,
    NotFound,
    RuntimeFailure,
)
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
from diplo.runtime.statecache import StateCache

P = ParamSpec("P")
T = TypeVar("T")

POOLS_EXHAUSTED = "could not find an available, non-overlapping IPv4 address pool"
OWN_RANGE = "10.213.0.0/16"  # 256 project networks of /24 once the engine's pools run out


def _explain(exc: docker.errors.APIError) -> str:
    text = exc.explanation if isinstance(exc.explanation, str) else str(exc)
    return text.strip() or str(exc)


def mapped(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Turn SDK and transport errors into Diplo errors that say what was being done."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except docker.errors.NotFound as exc:
                raise NotFound(f"{what}: {_explain(exc)}") from exc
            except docker.errors.APIError as exc:
                raise RuntimeFailure(f"{what}: {_explain(exc)}") from exc
            except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
                raise EngineUnavailable(str(exc)) from exc
            except requests.exceptions.Timeout as exc:
                raise RuntimeFailure(f"{what}: the engine did not answer in time") from exc
            except urllib3.exceptions.HTTPError as exc:
                raise RuntimeFailure(f"{what}: the connection to the engine broke") from exc

        return inner

    return wrap


class _BuildClient(docker.APIClient):
    """An API client that keeps the build's HTTP response, so that another thread can
    cut the connection: the engine then stops the build (and its RUN container)."""

    response: Any = None

    def _stream_helper(self, response: Any, decode: bool = False) -> Any:
        self.response = response
        return super()._stream_helper(response, decode)

    def cut(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            self.response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)


class DockerRuntime:
    def __init__(self, timeout: int = 120) -> None:
        self._kwargs = docker.utils.kwargs_from_env()
        self._network_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="diplo-engine")
        self._execs = ExecGuard()
        self._states = StateCache()  # inspects kept while the event stream is quiet
        try:
            self.api = docker.APIClient(version="auto", timeout=timeout, **self._kwargs)
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(str(exc)) from exc
        if self.api.base_url.startswith("http+docker://"):
            # A unix socket: no proxy applies, and requests would read the environment's
            # proxy settings again on every call (a tenth of a resync's time, profiled).
            self.api.trust_env = False

    # --- observation ---------------------------------------------------------------------

    @mapped("listing containers, images, networks and volumes")
    def observe(
        self, containers_only: bool = False, apps: Collection[str] | None = None
    ) -> Observed:
        # The listings are independent round trips: asked at once, not one by one. (The
        # pool's tasks never wait on each other, so any number of callers can share it.)
        if not containers_only:
            images = self._pool.submit(self._images)
            networks = self._pool.submit(lambda: frozenset(n["Name"] for n in self.api.networks()))
            volumes = self._pool.submit(
                lambda: frozenset(v["Name"] for v in self.api.volumes().get("Volumes") or [])
            )
        owned: list[ObservedContainer] = []
        foreign: set[str] = set()
        wanted = None if apps is None else frozenset(apps)
        # One app: the engine filters by its label (a label filter's values are ANDed, so
        # several apps are one whole listing filtered here).
        only = (
            {"label": f"{LABEL_APP}={next(iter(wanted))}"} if wanted and len(wanted) == 1 else None
        )
        for c in self.api.containers(all=True, filters=only):
            labels = c.get("Labels") or {}
            names = [n.lstrip("/") for n in c.get("Names") or []]
            if LABEL_APP not in labels:
                if wanted is None:
                    foreign.update(names)
                continue
            if wanted is None or labels[LABEL_APP] in wanted:
                owned.append(_observed(c, labels, names))
        ordered = tuple(sorted(owned, key=lambda o: (o.app, o.replica, o.created)))
        if containers_only:
            return Observed(containers=ordered, foreign_names=frozenset(foreign))
        return Observed(
            containers=ordered,
            images=images.result(),
            networks=networks.result(),
            volumes=volumes.result(),
            foreign_names=frozenset(foreign),
        )

    def _images(self) -> dict[str, str]:
        images: dict[str, str] = {}
        for img in self.api.images():
            for ref in (img.get("RepoTags") or []) + (img.get("RepoDigests") or []):
                if ref != "<none>:<none>" and ref != "<none>@<none>":
                    images[ref] = img["Id"]
        return images

    @mapped("asking the engine its version")
    def version(self) -> str:
        return str(self.api.version().get("Version", "unknown"))

    # --- networks and volumes ------------------------------------------------------------

    @mapped("creating a network")
    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        # The engine allows two networks of one name (its duplicate check is best effort):
        # one lock per process, and a tidy-up of what another process created meanwhile.
        def exact() -> list[dict[str, Any]]:  # the engine's name filter matches substrings
            return [n for n in self.api.networks(names=[name]) if n["Name"] == name]

        with self._network_lock:
            if not exact():
                try:
                    self.api.create_network(
                        name, driver="bridge", labels=dict(labels), check_duplicate=True
                    )
                except docker.errors.APIError as exc:
                    if POOLS_EXHAUSTED not in _explain(exc):
                        raise
                    self._create_in_own_subnet(name, labels)
            same = exact()
            for extra in sorted(same, key=lambda n: n.get("Created", ""))[1:]:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_network(extra["Id"])

    def _create_in_own_subnet(self, name: str, labels: Mapping[str, str]) -> None:
        """The engine's default address pools give out about 30 bridge networks (a /16 or
        /20 each); past that, a project's network gets a /24 of Diplo's own range."""
        used = [
            ipaddress.ip_network(cfg["Subnet"], strict=False)
            for net in self.api.networks()
            for cfg in ((net.get("IPAM") or {}).get("Config") or [])
            if cfg.get("Subnet")
        ]
        for subnet in ipaddress.ip_network(OWN_RANGE).subnets(new_prefix=24):
            if any(subnet.overlaps(u) for u in used):
                continue
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                self.api.create_network(
                    name, driver="bridge", labels=dict(labels), ipam=ipam, check_duplicate=True
                )
                return
            except docker.errors.APIError as exc:
                if "overlap" not in _explain(exc).lower():  # a host route, say: the next one
                    raise
        raise RuntimeFailure(
            f"creating network {name}: Docker's address pools are exhausted, and so is "
            f"Diplo's own range {OWN_RANGE}",
            hint="remove unused networks (`docker network prune`), or give the engine more "
            'with "default-address-pools" in /etc/docker/daemon.json, e.g. '
            '[{"base": "10.201.0.0/16", "size": 24}]',
        )

    @mapped("creating a volume")
    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None:
        try:
            self.api.inspect_volume(name)
        except docker.errors.NotFound:
            self.api.create_volume(name, labels=dict(labels))

    @mapped("removing a volume")
    def remove_volume(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_volume(name, force=True)

    @mapped("removing a network")
    def remove_network(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_network(name)

    @mapped("listing volumes")
    def volumes_of(self, project: str, app: str) -> list[str]:
        filters = {"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_APP}={app}"]}
        return sorted(v["Name"] for v in self.api.volumes(filters=filters).get("Volumes") or [])

    # --- images --------------------------------------------------------------------------

    @mapped("building an image")
    def build(
        self,
        tag: str,
        build: BuildSpec,
        labels: Mapping[str, str],
        on_line: LineSink | None,
        stop: StopCheck | None = None,
    ) -> str:
        client = _BuildClient(version=self.api._version, timeout=None, **self._kwargs)
        done = threading.Event()
        stopped = threading.Event()

        def watch() -> None:  # cut the connection when asked to stop
            while stop is not None and not done.wait(0.1):
                if stop():
                    stopped.set()
                    client.cut()
                    return

        watcher = threading.Thread(target=watch, name="diplo-build-watch", daemon=True)
        watcher.start()
        tail: list[str] = []
        try:
            stream = client.build(
                path=build.context,
                dockerfile=build.dockerfile,
                tag=tag,
                buildargs=dict(build.args),
                labels=dict(labels),
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise BuildFailed(f"build of {tag} failed: {detail.strip()}" + _tail(tail))
                line = chunk.get("stream")
                if line:
                    tail.append(line)
                    if on_line and line.strip():
                        on_line(line.rstrip())
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            if stopped.is_set():
                raise BuildStopped(f"build of {tag} was stopped") from exc
            raise
        finally:
            done.set()
            client.close()
        if stopped.is_set():
            raise BuildStopped(f"build of {tag} was stopped")
        image_id = self.image_id(tag)
        if image_id is None:
            raise BuildFailed(f"build of {tag} produced no image")
        return image_id

    @mapped("pulling an image")
    def pull(self, image: str, on_line: LineSink | None) -> str:
        repo, tag = _split_ref(image)
        try:
            for chunk in self.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise ImageUnavailable(_pull_message(image, chunk["error"]))
                if on_line and chunk.get("status"):
                    on_line(f"{chunk.get('id', '')} {chunk['status']}".strip())
        except docker.errors.APIError as exc:
            raise ImageUnavailable(_pull_message(image, _explain(exc))) from exc
        image_id = self.image_id(image)
        if image_id is None:
            raise ImageUnavailable(_pull_message(image, "the pull finished without the image"))
        return image_id

    @mapped("inspecting an image")
    def image_id(self, image: str) -> str | None:
        try:
            return str(self.api.inspect_image(image)["Id"])
        except docker.errors.NotFound:
            return None

    @mapped("tagging an image")
    def tag_image(self, image_id: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        self.api.tag(image_id, repo, tag, force=True)

    @mapped("removing an image")
    def untag_image(self, ref: str) -> None:
        try:
            self.api.remove_image(ref, noprune=False)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # still used by a container: the tag is gone anyway
                return
            raise

    # --- containers ----------------------------------------------------------------------

    @mapped("creating a container")
    def create(self, spec: ContainerSpec) -> str:
        port_bindings: dict[str, tuple[str, int | None]] = {}
        exposed: list[tuple[int, str] | int] = []
        for p in spec.ports:
            number, proto = p.key.split("/")
            exposed.append((int(number), proto) if proto != "tcp" else int(number))
            # Host port 0: ephemeral, the engine picks a free one for this container.
            port_bindings[p.key] = (p.host_ip or "0.0.0.0", p.host_port or None)
        mounts = [
            docker.types.Mount(
                target=m.target,
                source=m.source,
                type=m.kind,
                read_only=m.read_only,
            )
            for m in spec.mounts
        ]
        restart: dict[str, Any] = {"Name": "" if spec.restart == "no" else spec.restart}
        host_config = self.api.create_host_config(
            port_bindings=port_bindings or None,
            mounts=mounts or None,
            restart_policy=restart,
            mem_limit=spec.memory,
            nano_cpus=spec.nano_cpus,
            init=spec.init or None,
            network_mode=spec.network,
        )
        networking = self.api.create_networking_config(
            {spec.network: self.api.create_endpoint_config(aliases=list(spec.aliases))}
        )
        created = self.api.create_container(
            image=spec.image,
            name=spec.name,
            command=list(spec.command) if spec.command is not None else None,
            entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
            environment=[f"{k}={v}" for k, v in spec.env],
            labels=dict(spec.labels),
            ports=exposed or None,
            host_config=host_config,
            networking_config=networking,
            stop_signal=spec.stop_signal,
            stop_timeout=spec.stop_timeout,
            user=spec.user,
            working_dir=spec.working_dir,
            detach=True,
        )
        return str(created["Id"])

    @mapped("starting a container")
    def start(self, container_id: str) -> None:
        self.api.start(container_id)

    @mapped("stopping a container")
    def stop(self, container_id: str, timeout: int) -> None:
        self.api.stop(container_id, timeout=timeout)

    @mapped("killing a container")
    def kill(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.kill(container_id)

    @mapped("renaming a container")
    def rename(self, container_id: str, name: str) -> None:
        self.api.rename(container_id, name)

    @mapped("removing a container")
    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container_id, force=True)

    @mapped("inspecting a container")
    def state(self, container_id: str, listed: str | None = None) -> ContainerState:
        mark = None
        if listed is not None:
            kept = self._states.get(container_id, listed)
            if kept is not None:
                return kept
            mark = self._states.mark()
        info = self.api.inspect_container(container_id)
        st = info.get("State") or {}
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), "")
        state = ContainerState(
            status=st.get("Status", "unknown"),
            exit_code=int(st.get("ExitCode") or 0),
            error=st.get("Error") or "",
            restart_count=int(info.get("RestartCount") or 0),
            health=((st.get("Health") or {}).get("Status") or ""),
            ip=ip or "",
            started_at=_epoch(st.get("StartedAt") or ""),
        )
        if listed is not None:
            self._states.put(container_id, listed, state, mark)
        return state

    @mapped("running a command in a container")
    def exec(self, container_id: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        exec_id = self.api.exec_create(container_id, cmd, stdout=True, stderr=True)["Id"]
        what = " ".join(cmd)
        work = functools.partial(self.api.exec_start, exec_id)
        kill = functools.partial(self._kill_exec, container_id, exec_id)
        output = self._execs.run(container_id, what, work, kill, timeout)
        code = self.api.exec_inspect(exec_id).get("ExitCode")
        return int(code if code is not None else -1), output.decode("utf-8", "replace")

    def _kill_exec(self, container_id: str, exec_id: str) -> bool:
        """The engine has no call to kill an exec: signal its process ourselves. Its Pid is
        the engine host's, so it is signalled only when it is ours to signal: on this host,
        in this container's cgroup (an engine elsewhere leaves it running; the guard then
        keeps a second command from starting)."""
        pid = int(self.api.exec_inspect(exec_id).get("Pid") or 0)
        full_id = str(self.api.inspect_container(container_id)["Id"])
        if pid <= 0 or full_id not in _read(f"/proc/{pid}/cgroup"):
            return False
        killed = False
        for target in [*_descendants(pid), pid]:  # children first: a shell's sleep too
            with contextlib.suppress(OSError):
                os.kill(target, signal.SIGKILL)
                killed = True
        return killed

    @mapped("reading logs")
    def logs(
        self, container_id: str, *, tail: int | None, follow: bool, timestamps: bool = False
    ) -> Iterator[bytes]:
        # The SDK's stream itself, not a generator over it: its close() shuts the socket,
        # so that the API can end a follow whose client left while a read still waits.
        stream: Iterator[bytes] = self.api.logs(
            container_id,
            stream=True,
            follow=follow,
            tail="all" if tail is None else tail,
            timestamps=timestamps,
        )
        return stream

    def events(self, stop: StopCheck) -> Iterator[tuple[str, str]]:
        """Container events of Diplo's containers, as one long stream; a watcher closes it
        when `stop()` turns true. A broken stream raises EngineUnavailable."""
        client = docker.APIClient(version=self.api._version, timeout=None, **self._kwargs)
        try:
            stream = client.events(filters={"type": "container", "label": LABEL_APP}, decode=True)
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            client.close()
            raise EngineUnavailable(str(exc)) from exc
        done = threading.Event()
        self._states.watching()

        def watch() -> None:
            while not done.wait(0.1):
                if stop():
                    with contextlib.suppress(Exception):
                        stream.close()
                    return

        threading.Thread(target=watch, name="diplo-events-watch", daemon=True).start()
        try:
            for event in stream:
                action = str(event.get("Action", ""))
                if not action.startswith("exec_"):  # a probe's exec changes nothing kept
                    self._states.event(str(event.get("id", "")))
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                app = attrs.get(LABEL_APP)
                if app:
                    yield app, action
        except Exception as exc:
            if not stop():
                raise EngineUnavailable(f"the event stream broke: {exc}") from exc
        finally:
            self._states.unwatched()
            done.set()
            client.close()
        if not stop():
            raise EngineUnavailable("the event stream ended")


def _observed(c: dict[str, Any], labels: dict[str, str], names: list[str]) -> ObservedContainer:
    ports = tuple(
        PublishedPort(
            f"{p['PrivatePort']}/{p.get('Type', 'tcp')}", p.get("IP", ""), p["PublicPort"]
        )
        for p in c.get("Ports") or []
        if p.get("PublicPort") and ":" not in p.get("IP", "")  # skip the IPv6 twin
    )
    try:
        replica = int(labels.get(LABEL_REPLICA, "1"))
    except ValueError:
        replica = 1
    return ObservedContainer(
        id=c["Id"],
        name=names[0] if names else c["Id"][:12],
        project=labels.get(LABEL_PROJECT, ""),
        app=labels[LABEL_APP],
        replica=replica,
        spec_hash=labels.get(LABEL_SPEC_HASH, ""),
        state=c.get("State", "unknown"),
        status=c.get("Status", ""),
        image=c.get("Image", ""),
        image_id=c.get("ImageID", ""),
        ports=ports,
        created=int(c.get("Created") or 0),
    )


def _epoch(stamp: str) -> float:
    """RFC 3339 with nanoseconds (as the engine writes it) to epoch seconds."""
    if not stamp or stamp.startswith("0001-"):
        return 0.0
    base, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(base).replace(tzinfo=UTC).timestamp()
    return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)


def _tail(lines: list[str]) -> str:
    context = "".join(lines[-5:]).strip()
    if not context:
        return ""
    return "\n    last output:\n      " + context.replace("\n", "\n      ")


def _split_ref(image: str) -> tuple[str, str | None]:
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:
        return image, "latest"
    return repo, tag


def _pull_message(image: str, detail: str) -> str:
    return (
        f"image {image} is not on this host and cannot be pulled: {detail.strip()}. "
        "Build it here (`build:`), load it with `docker load`, or check registry access"
    )


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` on this host, deepest first (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1].isdigit():
                children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []

    def walk(p: int) -> None:
        for child in children.get(p, []):
            walk(child)
            out.append(child)

    walk(pid)
    return out
