"""The `diplo` command line over the in-memory engine, for the CLI tests: a manifest file
in a temp dir, one MemoryRuntime shared by every invocation, and a real SQLite ledger
file under DIPLO_HOME, opened afresh for each command (the CLI closes its context after
every command) and for each look the test takes at it.

`ServedWorld` runs the API of `diplo serve` (tests/unit/apiworld.py) with uvicorn in a
background thread and announces it in $DIPLO_HOME/serve.json, as `diplo serve` does, so
that status, rollback and sync go through HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from click.testing import CliRunner, Result

from diplo.cli import main
from diplo.ledger import Ledger
from diplo.model import LABEL_APP
from diplo.ops.context import Context
from diplo.runtime.memory import MemoryRuntime

from .apiworld import TOKEN, World, build_world
from .factories import IMAGE_ID

OLD_IMAGE = "busybox:1.36"
OLD_IMAGE_ID = "sha256:" + "b" * 64
BROKEN_IMAGE = "broken:latest"
BROKEN_IMAGE_ID = "sha256:" + "c" * 64  # its containers exit at once
SLOW_IMAGE = "slow:latest"
SLOW_IMAGE_ID = "sha256:" + "d" * 64  # its health command fails until cancelled
QUICK = {"start_period": "0s"}  # healthy once running


def spec(image: str = "busybox:latest", **kw: Any) -> dict[str, Any]:
    """An app of the manifest that is healthy as soon as it runs."""
    return {"image": image, "health": dict(QUICK), **kw}


def slow_spec() -> dict[str, Any]:
    """An app whose deploy waits for health until it is cancelled (10 min start period)."""
    return {"image": SLOW_IMAGE, "health": {"cmd": ["check"], "start_period": "600s"}}


@dataclass
class CliWorld:
    root: Path
    engine: MemoryRuntime = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.engine = MemoryRuntime(
            images={
                "busybox:latest": IMAGE_ID,
                OLD_IMAGE: OLD_IMAGE_ID,
                BROKEN_IMAGE: BROKEN_IMAGE_ID,
                SLOW_IMAGE: SLOW_IMAGE_ID,
            }
        )
        self.engine.fail_start[BROKEN_IMAGE] = "panic: cannot open /etc/app.conf"
        self.engine.exec_results[SLOW_IMAGE] = (1, "warming up")

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.db"

    @property
    def site(self) -> Path:
        """The folder of the manifest (outside DIPLO_HOME, so it can be a git work tree)."""
        return self.root / "site"

    @property
    def manifest(self) -> Path:
        return self.site / "diplo.yaml"

    def write(self, apps: dict[str, Any], project: str = "shop") -> Path:
        self.site.mkdir(exist_ok=True)
        self.manifest.write_text(yaml.safe_dump({"project": project, "apps": apps}))
        return self.manifest

    def run(self, *args: str) -> Result:
        """`diplo ARGS` with this world's engine and a fresh ledger on its file."""
        context = Context(_runtime=self.engine, _ledger=Ledger(self.ledger_path))
        return CliRunner().invoke(main, list(args), obj={"context": context})

    def apply(self, *args: str) -> Result:
        return self.run("apply", "-f", str(self.manifest), *args)

    @contextlib.contextmanager
    def ledger(self) -> Iterator[Ledger]:
        ledger = Ledger(self.ledger_path)
        try:
            yield ledger
        finally:
            ledger.close()

    def containers(self, app: str) -> list[Any]:
        return [c for c in self.engine.containers.values() if c.spec.labels[LABEL_APP] == app]

    def images_of(self, app: str) -> list[str]:
        return [c.spec.image for c in self.containers(app)]

    def apps(self) -> set[str]:
        return {c.spec.labels[LABEL_APP] for c in self.engine.containers.values()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServedWorld:
    """The in-memory world of the API tests, served over HTTP on 127.0.0.1."""

    world: World
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def run(self, *args: str) -> Result:
        """`diplo ARGS`; a context is still given, so that a command that wrongly ran
        here would touch the in-memory engine, never Docker."""
        ledger = Ledger(self.world.ledger.path)
        context = Context(_runtime=self.world.engine, _ledger=ledger)
        return CliRunner().invoke(main, list(args), obj={"context": context})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(root: Path) -> ServedWorld:
    """Start the API of apiworld's world; DIPLO_HOME must be `root / "home"` and
    DIPLO_TOKEN the world's token."""
    assert os.environ.get("DIPLO_TOKEN") == TOKEN
    world = build_world(root)
    port = free_port()
    config = uvicorn.Config(world.api, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="diplo-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test API server did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    (root / "home" / "serve.json").write_text(json.dumps({"pid": os.getpid(), "url": url}))
    return ServedWorld(world, url, server, thread)


class _BadGateway(BaseHTTPRequestHandler):
    """A proxy in front of a `diplo serve` that is down: /healthz still answers (the proxy
    checks itself), everything else is an HTML 502 page."""

    def _answer(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, b'{"status": "ok"}', "application/json")
        else:
            self._answer(502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def bad_gateway(home: Path) -> Iterator[str]:
    """Announce a proxy that answers 502 as this host's `diplo serve`; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="diplo-test-proxy", daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (home / "serve.json").write_text(json.dumps({"pid": os.getpid(), "url": url}))
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
