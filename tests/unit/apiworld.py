"""The API of `diplo serve` over the in-memory engine, for the API tests: a manifest
folder in a temp dir with two apps (one with a secret env value), reconciled by calling
the controller directly (no threads), and a real SQLite ledger under DIPLO_HOME. Its
access is one of two: LOOPBACK (no token chosen: reads open, POSTs need the admin token)
or TOKENS (DIPLO_TOKEN and DIPLO_VIEWER_TOKEN chosen: every read needs one of them)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient

from diplo.alerts.channels import HttpSender
from diplo.alerts.service import AlertService
from diplo.api.access import Access
from diplo.api.app import asgi_app
from diplo.controller.controller import Controller
from diplo.hostconfig import AlertsConfig
from diplo.ledger import Ledger
from diplo.metrics.collector import Collector
from diplo.metrics.requests import AccessLog
from diplo.metricstore import MetricStore
from diplo.model import LABEL_APP
from diplo.ops.context import Context
from diplo.runtime.memory import MemoryRuntime
from diplo.serve import Exposure, server_config

from .factories import IMAGE_ID
from .kerneltree import FakeEngine, Tree, running

TOKEN = "t0ken-for-the-api-tests-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIEWER_TOKEN = "t0ken-for-the-api-tests-viewer"
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
HOST = "localhost"  # a Host name the API answers to (others get 421)
HOOK_TOKEN = "hook-url-token-never-shown"  # in the alert channel's URL


def loopback() -> Access:
    return Access(TOKEN, open_reads=True)


def tokens() -> Access:
    return Access(TOKEN, VIEWER_TOKEN)


ACCESS = {"loopback": loopback, "tokens": tokens}
SECRET = "s3cr3t-value-123"
APPS = ("web", "worker")


def app_specs() -> dict[str, Any]:
    return {
        "web": {
            "image": "busybox:latest",
            "ports": ["8080"],
            "env": {"API_KEY": SECRET, "MODE": "prod"},
            "health": {"start_period": "0s"},
        },
        "worker": {"image": "busybox:latest", "health": {"start_period": "0s"}},
    }


@dataclass
class World:
    folder: Path
    engine: MemoryRuntime
    ledger: Ledger
    controller: Controller
    api: Any  # the ASGI app `diplo serve` runs
    access: Access
    metrics: Collector
    alerts: AlertService

    def client(self, host: str = "testclient", headers: dict[str, str] | None = None) -> TestClient:
        """A client at address `host`, sending `headers` with every request."""
        return TestClient(
            self.api, base_url=f"http://{HOST}", client=(host, 50000), headers=headers
        )

    @property
    def read_headers(self) -> dict[str, str]:
        """What a viewer sends: nothing on loopback without a token, else the viewer token."""
        return {} if self.access.open_reads else VIEWER

    def write(self, apps: dict[str, Any]) -> None:
        """Change the manifest and load it, as the controller's file watcher would."""
        (self.folder / "diplo.yaml").write_text(yaml.safe_dump({"project": "shop", "apps": apps}))
        self.controller.reload()

    def container(self, app: str) -> Any:
        return next(c for c in self.engine.containers.values() if c.spec.labels[LABEL_APP] == app)


def build_world(
    root: Path, access: Access | None = None, engine: MemoryRuntime | None = None
) -> World:
    """DIPLO_HOME must already point to `root / "home"` (the host locks live there)."""
    access = access or loopback()
    folder = root / "manifests"
    folder.mkdir(parents=True)
    engine = engine or MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    ledger = Ledger(root / "home" / "ledger.db")
    controller = Controller(folder, Context(_runtime=engine, _ledger=ledger))
    metrics = sampled(root)
    alerts = alerted(controller, ledger)
    api = asgi_app(controller, access, metrics=metrics, alerts=alerts)
    world = World(folder, engine, ledger, controller, api, access, metrics, alerts)
    world.write(app_specs())
    for name in APPS:
        controller.handle(name)
    return world


def home_world(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    access: Access | None = None,
    engine: MemoryRuntime | None = None,
) -> Iterator[World]:
    """A world whose DIPLO_HOME is `root / "home"`, closed afterwards: a fixture's body
    (`yield from home_world(...)`)."""
    monkeypatch.setenv("DIPLO_HOME", str(root / "home"))
    world = build_world(root, access, engine)
    yield world
    world.ledger.close()


WEB_ID = "c" * 64


class NoInputs:
    def health(self) -> None:
        return None

    def app_rules(self, app: str) -> None:
        return None

    def sources(self) -> list[dict[str, Any]]:
        return []

    def certificates(self) -> list[dict[str, Any]]:
        return []


def alerted(controller: Controller, ledger: Ledger) -> AlertService:
    """Alerts (not started: the channel's notifications stay queued) where `web`'s deploy
    failed and still fires, and `worker`'s failed and was fixed."""
    hook = HttpSender("hook", "slack", f"http://127.0.0.1:9/{HOOK_TOKEN}")
    alerts = AlertService(
        AlertsConfig(), ledger, [hook], NoInputs(), publish=controller.bus.publish
    )
    alerts.on_event("deploy.failed", "worker", {"message": "health gate: timed out"})
    alerts.on_event("deploy.succeeded", "worker", {"message": "ok"})
    alerts.on_event("deploy.failed", "web", {"message": "health gate: timed out"})
    return alerts


def sampled(root: Path) -> Collector:
    """A collector over a kernel tree where `web` runs one container that used 1.5 s of
    CPU in 10 s (15 % of a core) and 40 MiB of its 100 MiB: two cycles, both written.
    `web` is behind the proxy, whose access log has 20 requests to it in those 10 s
    (1 to 20 ms, the two slowest answered 503) and one to a host no app serves."""
    tree = Tree(root / "kernel", 1)
    tree.container(WEB_ID, 10, cpu_ns=10**9, memory=40 << 20, limit=100 << 20)
    engine = FakeEngine([running(WEB_ID, 10, cpus=0.5)], root=str(root))
    mono = [0.0]
    access = root / "proxy" / "access" / "access.log"
    access.parent.mkdir(parents=True)
    access.write_text("")
    collector = Collector(
        engine,
        MetricStore(root / "home" / "metrics.db"),
        root=root / "kernel",
        mono=lambda: mono[0],
        latency=lambda app: 3.0,
        requests=AccessLog(
            access, lambda: {"web": ("shop", ["web.example.com"])}, mono=lambda: mono[0]
        ),
    )
    collector.cycle()
    tree.container(WEB_ID, 10, cpu_ns=25 * 10**8, memory=40 << 20, limit=100 << 20)
    with access.open("a") as f:
        for ms in range(1, 21):
            f.write(access_entry("Web.example.com:8443", 503 if ms > 18 else 200, ms) + "\n")
        f.write(access_entry("elsewhere.example.com", 404, 1) + "\n")
    mono[0] = 10.0
    collector.cycle()
    return collector


def access_entry(host: str, status: int, ms: float) -> str:
    """A line of the proxy's access log, as Caddy 2.6 writes it with Diplo's encoder."""
    return json.dumps(
        {
            "level": "info",
            "ts": time.time(),
            "logger": "http.log.access",
            "msg": "handled request",
            "request": {"proto": "HTTP/1.1", "method": "GET", "host": host},
            "duration": ms / 1000,
            "size": 2,
            "status": status,
        }
    )


class FollowingRuntime(MemoryRuntime):
    """The in-memory engine with Docker's follow: `logs(follow=True)` gives its lines, then
    blocks (as a quiet container does) until the stream is closed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.follows: list[BlockingFollow] = []

    def logs(
        self, container_id: str, *, tail: int | None, follow: bool, timestamps: bool = False
    ) -> Iterator[bytes]:
        lines = super().logs(container_id, tail=tail, follow=False)
        if not follow:
            return lines
        stream = BlockingFollow(list(lines))
        self.follows.append(stream)
        return stream

    def events(self, stop: Any) -> Iterator[tuple[str, str]]:
        """No engine events here: wait, as Docker's stream does, until told to stop."""
        while not stop():
            time.sleep(0.05)
        return iter(())

    def open_follows(self) -> int:
        return sum(1 for f in self.follows if not f.closed.is_set())


class BlockingFollow:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.closed = threading.Event()

    def __iter__(self) -> BlockingFollow:
        return self

    def __next__(self) -> bytes:
        if self.lines:
            return self.lines.pop(0)
        self.closed.wait()  # like a socket read: only close() (or a new line) ends it
        raise StopIteration

    def close(self) -> None:
        self.closed.set()


@contextlib.contextmanager
def serving(api: Any, exposure: Exposure | None = None) -> Iterator[str]:
    """`api` under a real uvicorn on 127.0.0.1 (a free port), configured as `diplo serve`
    configures it; yields its base URL and stops it (and its threads) afterwards."""
    exposure = exposure or Exposure()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with uvicorn_on(server_config(api, "127.0.0.1", port, exposure), sock):
        yield f"{exposure.scheme}://127.0.0.1:{port}"


@contextlib.contextmanager
def uvicorn_on(config: uvicorn.Config, sock: socket.socket) -> Iterator[uvicorn.Server]:
    """uvicorn with `config` on `sock`, in a thread: started, then stopped (its threads
    too) and `sock` closed."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
