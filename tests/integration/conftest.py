"""Fixtures for tests against the real Docker engine.

Every test gets its own DIPLO_HOME and a unique project name (`dt-<hex>`); every
container, volume, network and image Diplo creates for it carries
`diplo.project=<that name>` and the `diplo-test` label, and is removed by label when the
test ends, pass or fail. There is no skip when the engine is missing: `make test` starts
one, and a missing engine is a failure."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from diplo.runtime.proxy_container import LOCAL_REPO

DIPLO = [sys.executable, "-m", "diplo.cli"]
TEST_LABEL = "diplo-test"


@pytest.fixture(scope="session")
def docker_api() -> docker.APIClient:
    try:
        api = docker.APIClient(version="auto", timeout=60)
        api.ping()
    except Exception as exc:
        pytest.fail(f"no Docker engine answers ({exc}); run `make engine` (or `make test`)")
    try:
        api.inspect_image("busybox:latest")
    except docker.errors.NotFound:
        pytest.fail("busybox:latest is missing; `make engine` seeds it")
    return api


def remove_by_label(api: docker.APIClient, label: str) -> None:
    filters = {"label": label}
    for c in api.containers(all=True, filters=filters):
        try:
            api.remove_container(c["Id"], force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a removal already in progress (Diplo's own)
                raise
    deadline = time.monotonic() + 30  # let such removals end before volumes and networks
    while api.containers(all=True, filters=filters) and time.monotonic() < deadline:
        time.sleep(0.2)
    for v in api.volumes(filters=filters).get("Volumes") or []:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(v["Name"], force=True)
    for n in api.networks(filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_network(n["Id"])
    for img in api.images(filters=filters):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            api.remove_image(img["Id"], force=True)


def remove_kept_images(api: docker.APIClient, test_id: str) -> None:
    """The tags Diplo keeps for rollbacks (`diplo-kept/APP:dN-LEDGER`) of this test's apps."""
    for img in api.images(name="diplo-kept/*"):
        for tag in img.get("RepoTags") or []:
            if test_id in tag:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.remove_image(tag)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: a port from bind(0) is one the
    kernel may give the next outgoing connection (Chromium's, urllib's) before the server
    meant for it binds, and CI saw serve and Caddy fail on a port taken that way."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # Caddy listens on every address of the host
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port below {low}")


class Sandbox:
    """A folder for manifests, a DIPLO_HOME, a unique project, and the CLI to run."""

    def __init__(self, root: Path, api: docker.APIClient) -> None:
        self.root = root
        self.api = api
        self.id = uuid.uuid4().hex[:6]
        self.project = f"dt-{self.id}"
        self.home = root / "home"
        self.dir = root / "manifests"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "DIPLO_HOME": str(self.home), "NO_COLOR": "1"}
        # The tests' sites are beside the manifests (root/www-*): this host policy (given
        # to `diplo serve --policy`) lets serve mount them; the rest stays refused.
        self.policy = root / "policy.yaml"
        roots = f"['.', '{root}']"
        self.policy.write_text(
            f"repository:\n  bind_mounts: {roots}\nfolder:\n  bind_mounts: {roots}\n"
        )
        self.env.pop("DIPLO_DEBUG", None)
        # The proxy an app with domains brings up: this test's own name and free ports,
        # never the host's diplo-proxy on 80/443 (removed by the fixture afterwards).
        self.proxy = f"diplo-proxy-{self.id}"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.yaml").write_text(
            f"proxy:\n  name: {self.proxy}\n  http_port: {free_port()}\n"
            f"  https_port: {free_port()}\n"
        )

    def name(self, base: str) -> str:
        """An app name unique to this test (app names are unique per host)."""
        return f"{base}-{self.id}"

    def manifest(self, apps: dict[str, Any], filename: str = "diplo.yaml", **top: Any) -> Path:
        """Write a manifest; every app gets the test label."""
        doc: dict[str, Any] = {"project": self.project, **top, "apps": {}}
        for name, spec in apps.items():
            spec = dict(spec)
            spec["labels"] = {**spec.get("labels", {}), TEST_LABEL: self.id}
            doc["apps"][name] = spec
        path = self.dir / filename
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def diplo(
        self,
        *args: str,
        check: bool | None = None,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*DIPLO, *args],
            cwd=self.dir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"diplo {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def containers(self, app: str | None = None, all: bool = True) -> list[dict[str, Any]]:
        labels = [f"diplo.project={self.project}"]
        if app:
            labels.append(f"diplo.app={app}")
        return self.api.containers(all=all, filters={"label": labels})

    def status(self) -> dict[str, dict[str, Any]]:
        out = self.diplo("status", "--json", check=True).stdout
        return {row["app"]: row for row in json.loads(out)}

    def host_port(self, app: str, container_port: str = "8080/tcp") -> int:
        (c,) = self.containers(app, all=False)
        for p in c["Ports"]:
            if f"{p['PrivatePort']}/{p['Type']}" == container_port and p.get("PublicPort"):
                return int(p["PublicPort"])
        raise AssertionError(f"{app} publishes no {container_port}: {c['Ports']}")


@pytest.fixture
def sandbox(tmp_path: Path, docker_api: docker.APIClient) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path, docker_api)
    try:
        yield box
    finally:
        remove_by_label(docker_api, f"diplo.project={box.project}")
        remove_by_label(docker_api, f"{TEST_LABEL}={box.id}")
        remove_kept_images(docker_api, box.id)
        for name, remove in (
            (box.proxy, docker_api.remove_container),
            (f"{box.proxy}-data", docker_api.remove_volume),
        ):
            with contextlib.suppress(docker.errors.NotFound):
                remove(name, force=True)
        shutil.rmtree(box.home, ignore_errors=True)


def http_get(port: int, path: str = "/", timeout: float = 10.0, *, status: int = 200) -> str:
    """GET http://127.0.0.1:port/path, retrying while the server starts; the body of a
    response with the expected `status`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                if resp.status == status:
                    return resp.read().decode()
                last = AssertionError(f"status {resp.status}")
        except urllib.error.HTTPError as exc:
            if exc.code == status:
                return exc.read().decode()
            last = exc
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"no answer from port {port}{path} within {timeout}s: {last}")


HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/www"]


def web_spec(box: Sandbox, text: str = "v1", **extra: Any) -> dict[str, Any]:
    """A busybox httpd app serving `text` at /, health-checked over HTTP."""
    return {
        "image": "busybox:latest",
        "command": HTTPD,
        "init": True,
        "ports": ["8080"],
        "volumes": [f"{site(box.root, 'www-' + text, text)}:/www:ro"],
        "health": {"http": {"path": "/", "port": 8080}, "interval": "200ms"},
        **extra,
    }


def site(root: Path, name: str, text: str) -> str:
    """A folder with an index.html, for a busybox httpd to serve; returns its path."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(text + "\n")
    return str(folder)


@pytest.fixture(scope="session")
def proxy_image(docker_api: docker.APIClient) -> Iterator[None]:
    """Leaves the engine's images as it found them: a diplo-caddy image built by these
    tests is removed at the end (unless a container still uses it)."""
    before = {t for i in docker_api.images(name=LOCAL_REPO) for t in i.get("RepoTags") or []}
    yield
    for img in docker_api.images(name=LOCAL_REPO):
        for tag in img.get("RepoTags") or []:
            if tag not in before:
                with contextlib.suppress(docker.errors.APIError):
                    docker_api.remove_image(tag)
