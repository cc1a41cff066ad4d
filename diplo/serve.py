"""Wiring of `diplo serve`: the token, the controller and the API server."""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import secrets
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import structlog
import uvicorn

from diplo.api.app import asgi_app
from diplo.controller.controller import Controller
from diplo.controller.sources import Source
from diplo.errors import InputError
from diplo.ledger import default_home
from diplo.service import Context

log = structlog.get_logger("diplo.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_token(home: Path) -> tuple[str, bool]:
    """DIPLO_TOKEN, or a token generated once into $DIPLO_HOME/token (mode 0600).
    The bool says whether the operator chose it (DIPLO_TOKEN)."""
    if token := os.environ.get("DIPLO_TOKEN"):
        return token, True
    path = home / "token"
    if path.is_file():
        return path.read_text().strip(), False
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, False


def run_server(
    ctx: Context,
    sources: list[Source],
    host: str,
    port: int,
    resync: float,
    workers: int,
    poll_every: float = 60.0,
) -> None:
    home = default_home()
    token, chosen = api_token(home)
    if not is_loopback(host) and not chosen:
        raise InputError(
            f"refusing to serve the API on {host} without a token of your choosing",
            hint="set DIPLO_TOKEN, or listen on 127.0.0.1",
        )
    controller = Controller(sources, ctx, resync=resync, workers=workers, poll_every=poll_every)
    app = asgi_app(controller, token, webhook_secret=os.environ.get("DIPLO_WEBHOOK_SECRET"))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        access_log=False,
    )
    server = uvicorn.Server(config)
    info = home / "serve.json"
    controller.start()
    stop_gc = _tidy_heap()
    try:
        info.write_text(json.dumps({"pid": os.getpid(), "url": f"http://{host}:{port}"}))
        log.info("serve.listening", url=f"http://{host}:{port}")
        # uvicorn handles SIGTERM/SIGINT itself, then re-raises the signal to the handler it
        # found: make that a no-op so that a requested stop exits 0, after cleanup.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        server.run()  # returns on SIGTERM / SIGINT
    finally:
        stop_gc.set()
        controller.stop()
        info.unlink(missing_ok=True)


def _tidy_heap(every: float = 60.0) -> threading.Event:
    """Most of this process's heap lives as long as it does (the SDK, pydantic models,
    FastAPI, the apps' state): frozen, the collector's frequent full passes skip it and
    stop stalling the API for tens of ms. A real full collection runs once a minute."""

    def tidy() -> None:
        gc.collect()
        gc.freeze()
        while not stop.wait(every):
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    stop = threading.Event()
    threading.Thread(target=tidy, name="diplo-gc", daemon=True).start()
    return stop


class RunningServer:
    """A `diplo serve` found through $DIPLO_HOME/serve.json."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any] | None) -> Any:
        """A POST with this host's API token; a problem answer becomes an InputError."""
        token, _ = api_token(default_home())
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                problem = json.loads(exc.read())
                message = f"{problem.get('title')}: {problem.get('detail')}"
            except ValueError:
                message = str(exc)
            raise InputError(f"diplo serve at {self.url} answered {exc.code}: {message}") from exc

    def status(self, app: str | None) -> tuple[list[dict[str, Any]], str | None]:
        listing = self.get("/apps")
        rows = [r for r in listing["apps"] if app is None or r["app"] == app]
        if app is not None and not rows:
            raise InputError(
                f"no app named {app!r} on this host", hint="`diplo status` lists the apps"
            )
        return rows, listing["manifest"].get("error")


def running_server() -> RunningServer | None:
    """The controller serving this DIPLO_HOME, if one runs and answers."""
    info = default_home() / "serve.json"
    try:
        data = json.loads(info.read_text())
        os.kill(int(data["pid"]), 0)
        server = RunningServer(str(data["url"]))
        server.get("/healthz")
        return server
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None
