"""`/ws`: one WebSocket per open page, pushing what changed as small JSON messages.

- `event`: each event of the controller's bus (deploy steps and outcomes, health
  changes, rollbacks, sources), as `/events` sends them;
- `apps`: the apps whose line of `GET /apps` changed (health, sync status, replicas,
  last deployment...), looked at every CHECK_EVERY seconds: the page fetches their
  fragments again, so that it shows what the API shows within a second;
- `sources`: the sources or the manifest's state changed;
- `metrics`: the metrics collector sampled again (sparklines, host stats);
- `alerts`: the firing alerts changed.

Signed in by the session cookie (or open reads on loopback), and only from a page of
this server (the Origin header names the Host)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import queue
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from diplo.api.problems import Problem
from diplo.controller.bus import BusEvent
from diplo.web.context import Dashboard, same_origin

TICK = 0.1  # s between looks at the bus
CHECK_EVERY = 0.25  # s between looks at the view, the collector and the alerts
PING_EVERY = 20.0  # s: keeps proxies from closing an idle socket
# Not part of an app's fingerprint: changes with every probe (its latency) and would
# make every page fetch every line every few seconds.
NOISE = ("health_detail",)


def fingerprints(listing: dict[str, Any]) -> dict[str, str]:
    """Each app's line of GET /apps, as a digest that changes when the line does."""
    out = {}
    for row in listing.get("apps", []):
        line = {k: v for k, v in row.items() if k not in NOISE}
        out[row["app"]] = hashlib.blake2b(
            json.dumps(line, sort_keys=True, default=str).encode(), digest_size=12
        ).hexdigest()
    return out


def sources_print(listing: dict[str, Any]) -> str:
    body = json.dumps([listing.get("manifest"), listing.get("sources")], sort_keys=True)
    return hashlib.blake2b(body.encode(), digest_size=12).hexdigest()


def event_message(event: BusEvent) -> dict[str, Any]:
    return {"type": "event", "id": event.id, "kind": event.kind, "app": event.app,
            "at": event.at, "data": event.data}  # fmt: skip


class Watcher:
    """What one socket has told its page so far, and what changed since."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.listing_bytes: bytes | None = None
        self.apps: dict[str, str] = {}
        self.sources = ""
        self.cycles = dash.metrics.cycles if dash.metrics is not None else 0
        self.alerts: str | None = None
        self.look()  # the page was rendered from this state

    def look(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        raw = self.dash.controller.view.listing()
        if raw is not self.listing_bytes:
            self.listing_bytes = raw
            listing = json.loads(raw)
            now = fingerprints(listing)
            changed = sorted(n for n, p in now.items() if self.apps.get(n) != p)
            removed = sorted(set(self.apps) - set(now))
            if (changed or removed) and self.apps:
                out.append({"type": "apps", "changed": changed, "removed": removed})
            self.apps = now
            printed = sources_print(listing)
            if printed != self.sources and self.sources:
                out.append({"type": "sources"})
            self.sources = printed
        metrics = self.dash.metrics
        if metrics is not None and metrics.cycles != self.cycles:
            self.cycles = metrics.cycles
            out.append({"type": "metrics"})
        firing = self.dash.firing()
        alerts = json.dumps(firing, sort_keys=True, default=str)
        if self.alerts is not None and alerts != self.alerts:
            out.append({"type": "alerts", "firing": len(firing or [])})
        self.alerts = alerts
        return out


def add_live(api: FastAPI, dash: Dashboard) -> None:
    bus = dash.controller.bus

    @api.websocket("/ws")
    async def live(ws: WebSocket) -> None:
        session = dash.who(ws)
        if session is None:
            await ws.close(code=4401)  # before accepting: the handshake is answered 403
            return
        if not same_origin(ws):
            await ws.close(code=4403)
            return
        try:
            release = dash.sockets.take(ws.client.host if ws.client else "?")
        except Problem:
            await ws.close(code=1013)  # try again later
            return
        sub = bus.subscribe()
        try:
            await ws.accept()
            watcher = Watcher(dash)
            await ws.send_json({"type": "hello", "role": session.role})
            gone = asyncio.Event()

            async def receive() -> None:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    while (await ws.receive())["type"] != "websocket.disconnect":
                        pass
                gone.set()

            listener = asyncio.create_task(receive())
            loop = asyncio.get_running_loop()
            next_look, next_ping = loop.time(), loop.time() + PING_EVERY
            try:
                while not gone.is_set():
                    while True:
                        try:
                            event = sub.get_nowait()
                        except queue.Empty:
                            break
                        await ws.send_json(event_message(event))
                    now = loop.time()
                    if now >= next_look:
                        next_look = now + CHECK_EVERY
                        for message in watcher.look():
                            await ws.send_json(message)
                    if now >= next_ping:
                        next_ping = now + PING_EVERY
                        await ws.send_json({"type": "ping"})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), TICK)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the page went away mid-send
            finally:
                listener.cancel()
                if ws.application_state == WebSocketState.CONNECTED:
                    # the page may be gone already: closing is then nothing to report
                    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                        await ws.close()
        finally:
            bus.unsubscribe(sub)
            release()
