"""The proxy's container: Caddy, owned by Diplo, outliving the `diplo` process.

It runs in host network mode (it reaches app containers by their bridge addresses and
binds the proxy ports on the host itself), restarts unless stopped, keeps Caddy's data
(certificates, its internal CA) and autosaved config in a named volume, and gets one host
folder (mode 0700, under $DIPLO_HOME) mounted on /diplo for its admin socket, its boot
config and the certificate files apps bring. It carries `diplo.role=proxy`, not
`diplo.app`: it is no app, and the planner must never prune it.

The image: the configured one; by default `caddy:2` when it is here or can be pulled,
else `diplo-caddy:<version>`, built here from the host's caddy binary (Debian's package)
and the libraries it links, with `docker import`: no registry needed."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import docker.types

from diplo.errors import EngineUnavailable, ImageUnavailable, RuntimeFailure
from diplo.runtime.docker_engine import mapped

LABEL_ROLE = "diplo.role"
LABEL_PROXY_HASH = "diplo.proxy-hash"
ROLE = "proxy"
OFFICIAL_IMAGE = "caddy:2"
LOCAL_REPO = "diplo-caddy"
BINARY = "/usr/bin/caddy"  # where both images hold it
STATE_MOUNT = "/diplo"
DATA_MOUNT = "/data"
_LIB = re.compile(r"(/\S+)\s+\(0x[0-9a-f]+\)")


@dataclass(frozen=True)
class ProxyContainerSpec:
    name: str
    volume: str  # Caddy's data and config
    state_dir: str  # host folder mounted on /diplo
    command: tuple[str, ...]  # arguments of caddy
    image: str | None = None  # None: caddy:2, else built from the host's caddy
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxyContainerState:
    id: str
    status: str  # running, exited, restarting...
    image: str
    restart_count: int
    spec_hash: str


class ProxyContainer:
    def __init__(self, api: docker.APIClient | None = None, caddy_binary: str | None = None):
        self.api = api or _client()
        self.caddy_binary = caddy_binary

    # --- the container -------------------------------------------------------------------

    @mapped("inspecting the proxy container")
    def state(self, name: str) -> ProxyContainerState | None:
        try:
            info = self.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_ROLE) != ROLE:
            raise RuntimeFailure(
                f"the proxy's container name {name} is taken by a container Diplo does not own",
                hint="rename or remove that container, or configure another proxy name",
            )
        return ProxyContainerState(
            id=str(info["Id"]),
            status=str((info.get("State") or {}).get("Status", "unknown")),
            image=str(info.get("Image", "")),
            restart_count=int(info.get("RestartCount") or 0),
            spec_hash=labels.get(LABEL_PROXY_HASH, ""),
        )

    def ensure(self, spec: ProxyContainerSpec) -> str:
        """Make the container exist, run, and match `spec`. Returns what it did:
        created, recreated, started or unchanged."""
        image = self.resolve_image(spec.image)
        image_id = self._image_id(image) or ""
        wanted = _spec_hash(spec, image, image_id)
        current = self.state(spec.name)
        if current is not None and current.spec_hash != wanted:
            self._remove(current.id)
            action = "recreated"
        elif current is None:
            action = "created"
        else:
            if current.status == "paused":
                self._unpause(current.id)
                return "started"
            if current.status not in ("running", "restarting"):
                self._start(current.id)
                return "started"
            return "unchanged"
        self._ensure_volume(spec)
        self._create(spec, image, wanted)
        self._start(spec.name)
        return action

    @mapped("removing the proxy container")
    def remove(self, name: str, volume: str | None = None) -> None:
        """Remove the container (and the volume, when named: certificates and CA go)."""
        current = self.state(name)
        if current is not None:
            self._remove(current.id)
        if volume is not None:
            with contextlib.suppress(docker.errors.NotFound):
                info = self.api.inspect_volume(volume)
                if (info.get("Labels") or {}).get(LABEL_ROLE) == ROLE:
                    self.api.remove_volume(volume, force=True)

    @mapped("reading the proxy's stored certificates")
    def stored_certificates(self, name: str) -> list[str]:
        """The files under `certificates/` in Caddy's storage (in the volume), as storage
        keys: `certificates/local/app.localhost/app.localhost.crt`..."""
        try:
            stream, _ = self.api.get_archive(name, f"{DATA_MOUNT}/caddy/certificates")
        except docker.errors.NotFound:  # no container, or nothing stored yet
            return []
        data = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=data) as tar:
            return sorted(m.name for m in tar.getmembers() if m.isfile())

    @mapped("killing the proxy container")
    def kill(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.api.kill(name)

    @mapped("creating the proxy's volume")
    def _ensure_volume(self, spec: ProxyContainerSpec) -> None:
        try:
            self.api.inspect_volume(spec.volume)
        except docker.errors.NotFound:
            self.api.create_volume(spec.volume, labels={**spec.labels, LABEL_ROLE: ROLE})

    @mapped("creating the proxy container")
    def _create(self, spec: ProxyContainerSpec, image: str, spec_hash: str) -> None:
        host_config = self.api.create_host_config(
            network_mode="host",
            restart_policy={"Name": "unless-stopped"},
            mounts=[
                docker.types.Mount(DATA_MOUNT, spec.volume, type="volume"),
                docker.types.Mount(STATE_MOUNT, spec.state_dir, type="bind"),
            ],
            log_config=docker.types.LogConfig(
                type="json-file", config={"max-size": "10m", "max-file": "3"}
            ),
        )
        labels = {**spec.labels, LABEL_ROLE: ROLE, LABEL_PROXY_HASH: spec_hash}
        try:
            self.api.create_container(
                image=image,
                name=spec.name,
                entrypoint=[BINARY],
                command=list(spec.command),
                environment=_ENV,
                labels=labels,
                host_config=host_config,
                detach=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # another Diplo process created it meanwhile
                raise

    @mapped("starting the proxy container")
    def _start(self, ident: str) -> None:
        self.api.start(ident)

    @mapped("resuming the proxy container")
    def _unpause(self, ident: str) -> None:
        self.api.unpause(ident)

    @mapped("removing the proxy container")
    def _remove(self, ident: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            # v=True: caddy:2 declares a /config volume; its anonymous volume goes too
            self.api.remove_container(ident, force=True, v=True)

    # --- the image -----------------------------------------------------------------------

    def resolve_image(self, wanted: str | None) -> str:
        """The image to run: `wanted` (pulled when missing), or the default chain."""
        if wanted:
            if self._image_id(wanted) or self._pull(wanted):
                return wanted
            raise ImageUnavailable(
                f"the proxy image {wanted} is not on this host and cannot be pulled",
                hint="load it with `docker load`, or leave the proxy image unset so that "
                "Diplo builds one from the host's caddy",
            )
        if self._image_id(OFFICIAL_IMAGE):
            return OFFICIAL_IMAGE
        binary = self._host_caddy()
        local = f"{LOCAL_REPO}:{_version(binary)}" if binary else None
        if local and self._image_id(local):
            return local
        if self._pull(OFFICIAL_IMAGE):
            return OFFICIAL_IMAGE
        if binary and local:
            return self.build_image(binary, local)
        raise ImageUnavailable(
            f"no Caddy image: {OFFICIAL_IMAGE} cannot be pulled and this host has no caddy",
            hint="install Debian's caddy package (`make engine` does), or `docker load` "
            f"{OFFICIAL_IMAGE}",
        )

    @mapped("building the proxy image")
    def build_image(self, binary: str, ref: str) -> str:
        """Import an image holding `binary` and the libraries it links (ldd), so that the
        host's dynamically linked caddy runs in a container."""
        repo, _, tag = ref.rpartition(":")
        with tempfile.TemporaryDirectory(prefix="diplo-caddy-") as tmp:
            path = os.path.join(tmp, "rootfs.tar")
            with tarfile.open(path, "w") as tar:
                tar.add(os.path.realpath(binary), arcname=BINARY.lstrip("/"))
                for lib in _linked(binary):
                    tar.add(os.path.realpath(lib), arcname=lib.lstrip("/"))
                bundle = "/etc/ssl/certs/ca-certificates.crt"  # to reach an ACME CA
                if os.path.exists(bundle):
                    tar.add(os.path.realpath(bundle), arcname=bundle.lstrip("/"))
                for folder, mode in (("tmp", 0o1777), ("data", 0o755), ("diplo", 0o700)):
                    info = tarfile.TarInfo(folder)
                    info.type = tarfile.DIRTYPE
                    info.mode = mode
                    tar.addfile(info)
            self.api.import_image_from_file(
                path,
                repository=repo,
                tag=tag,
                changes=[
                    f'ENTRYPOINT ["{BINARY}"]',
                    "ENV PATH=/usr/bin",
                    f"LABEL {LABEL_ROLE}=proxy-image",
                ],
            )
        if not self._image_id(ref):
            raise ImageUnavailable(f"importing the proxy image {ref} produced no image")
        return ref

    def _host_caddy(self) -> str | None:
        return self.caddy_binary or shutil.which("caddy")

    @mapped("inspecting an image")
    def _image_id(self, ref: str) -> str | None:
        try:
            return str(self.api.inspect_image(ref)["Id"])
        except docker.errors.NotFound:
            return None

    @mapped("pulling an image")
    def _pull(self, ref: str) -> bool:
        repo, _, tag = ref.rpartition(":")
        try:
            for chunk in self.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    return False
        except docker.errors.APIError:
            return False
        return self._image_id(ref) is not None


# Caddy's data (certificates, CA) and its autosaved config, both in the volume.
_ENV = [f"XDG_DATA_HOME={DATA_MOUNT}", f"XDG_CONFIG_HOME={DATA_MOUNT}/config", f"HOME={DATA_MOUNT}"]


def _client() -> docker.APIClient:
    try:
        return docker.APIClient(version="auto", timeout=120, **docker.utils.kwargs_from_env())
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(str(exc)) from exc


def _spec_hash(spec: ProxyContainerSpec, image: str, image_id: str) -> str:
    doc: dict[str, Any] = {
        "image": image,
        "image_id": image_id,
        "volume": spec.volume,
        "state_dir": spec.state_dir,
        "command": list(spec.command),
        "env": _ENV,
        "labels": dict(sorted(spec.labels.items())),
        "network": "host",
        "restart": "unless-stopped",
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _version(binary: str) -> str:
    """`caddy version` says "2.6.2" (Debian) or "v2.7.6 h1:..." (upstream): a tag. Asked
    once per binary file (an upgrade changes its mtime)."""
    try:
        stat = os.stat(binary)
    except OSError as exc:
        raise ImageUnavailable(f"cannot run {binary} version: {exc.strerror}") from exc
    return _version_of(binary, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _version_of(binary: str, mtime_ns: int, size: int) -> str:
    try:
        out = subprocess.run(
            [binary, "version"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageUnavailable(f"cannot run {binary} version: {exc}") from exc
    words = out.split()
    word = words[0].lstrip("v") if words else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", word)[:100] or "unknown"


def _linked(binary: str) -> list[str]:
    """The shared libraries and loader `binary` needs, from ldd (none when static)."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({m.group(1) for m in _LIB.finditer(out)})
