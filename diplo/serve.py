"""The composition root of `diplo serve`: the token, the controller and the API server."""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import signal
import threading

import structlog
import uvicorn

from diplo.api.app import asgi_app
from diplo.controller.controller import Controller
from diplo.controller.sources import Source
from diplo.errors import InputError
from diplo.ops.context import Context
from diplo.paths import default_home
from diplo.tokens import api_token

log = structlog.get_logger("diplo.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(
    ctx: Context,
    sources: list[Source],
    host: str,
    port: int,
    *,
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
