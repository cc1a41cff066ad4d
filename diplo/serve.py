"""The composition root of `diplo serve`: the tokens, the controller, the API server on a
private socket and the front process that owns the port (diplo.front says why two)."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import ipaddress
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import structlog
import uvicorn

from diplo.alerts.channels import senders
from diplo.alerts.service import AlertService
from diplo.api.access import Access
from diplo.api.app import asgi_app
from diplo.controller.controller import Controller
from diplo.controller.sources import Source
from diplo.errors import DiploError, InputError
from diplo.front.config import Exposure, server_config
from diplo.front.listing import publisher
from diplo.front.process import Folder, listen, start_front
from diplo.front.relay import FromFront
from diplo.hostconfig import AlertsConfig, MetricsConfig, load_config
from diplo.metrics.collector import Collector
from diplo.metrics.requests import AccessLog
from diplo.metricstore import FILE as METRICS_FILE
from diplo.metricstore import MetricStore, Retention
from diplo.ops import status
from diplo.ops.context import Context
from diplo.ops.proxy import certificates
from diplo.paths import default_home
from diplo.tokens import WeakToken, api_token, viewer_token
from diplo.web import add_dashboard
from diplo.webhooks import secrets_from_env

log = structlog.get_logger("diplo.serve")

GC_SLOW = 0.1  # s: a garbage collection this long is logged (it stalls the API meanwhile)
FULL_AFTER = 1000  # young collections before the collector may start a full one (10 by default)
SWITCH_INTERVAL = 0.0005  # s: how long another thread may hold the GIL the API waits for


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def access_of(home: Path, host: str) -> Access:
    """The API's tokens; reads are open only on loopback when the operator chose none."""
    try:
        token, chosen = api_token(home)
        viewer = viewer_token(token)
    except WeakToken as exc:
        raise InputError(exc.message, hint=exc.hint) from exc
    if not is_loopback(host) and not chosen:
        raise InputError(
            f"refusing to serve the API on {host} without a token of your choosing",
            hint="set DIPLO_TOKEN, or listen on 127.0.0.1",
        )
    return Access(token, viewer, open_reads=not chosen and viewer is None)


def run_server(
    ctx: Context,
    sources: list[Source],
    host: str,
    port: int,
    *,
    resync: float,
    workers: int,
    poll_every: float = 60.0,
    exposure: Exposure | None = None,
    log_format: str = "text",
) -> None:
    exposure = exposure or Exposure()
    home = default_home()
    access = access_of(home, host)
    hooks = secrets_from_env()
    if unsafe := hooks.gitlab_exposes():
        log.warning("serve.webhook_secret_shared", detail=unsafe[0], hint=unsafe[1])
    config = load_config(home)
    with contextlib.ExitStack() as undo:  # what was started, stopped in reverse order
        sole = _sole_server(home)
        undo.callback(os.close, sole)  # the lock goes with it
        listener = undo.enter_context(listen(host, port))
        folder = Folder()
        undo.callback(folder.remove)
        backend = undo.enter_context(folder.bind())
        controller = Controller(sources, ctx, resync=resync, workers=workers, poll_every=poll_every)
        collector = metrics_collector(
            home, ctx, config.metrics, owned=lambda: list(controller.view.rows)
        )
        alerts = alert_service(config.alerts, ctx, controller, poll_every)
        if alerts is not None and collector is not None:
            collector.listeners.append(alerts.on_samples)
        app = asgi_app(
            controller,
            access,
            webhook_secrets=hooks,
            listen_host=host,
            allowed_hosts=exposure.allowed_hosts,
            metrics=collector,
            alerts=alerts,
            extend=lambda api: add_dashboard(api, controller, access, collector, firing_of(alerts)),
        )
        # The API itself serves the front only, on the private socket: TLS and believed
        # X-Forwarded-For are the front's, and FromFront takes the client it saw.
        backend_config = server_config(FromFront(app), host, port, Exposure())
        backend_config.server_header = backend_config.date_header = False  # the front's go out
        server = uvicorn.Server(backend_config)
        publish = publisher(folder.listing)
        publish(controller.view.listing())  # before the front's first request
        controller.view.publish = publish
        if alerts is not None:
            undo.callback(alerts.stop)  # last: it waits for what `halt` told to end
        controller.start()
        undo.callback(controller.stop)
        if alerts is not None:
            alerts.start(controller.bus.subscribe())
        if collector is not None:
            collector.start()
            undo.callback(collector.stop)
        if alerts is not None:
            undo.callback(alerts.halt)  # told first: its threads end while the others stop
        undo.callback(_tidy_heap().set)
        # The API's event loop gives the GIL up at every socket write; a controller thread
        # that takes it then (a health tick, a resync) keeps it for the switch interval before
        # the loop gets it back: 5 ms by default.
        sys.setswitchinterval(SWITCH_INTERVAL)
        front = start_front(
            listener, folder, host, exposure, access, log_format,
            exited=lambda _: setattr(server, "should_exit", True),
        )  # fmt: skip
        undo.callback(front.stop)  # first: no new request reaches what stops after it
        info = home / "serve.json"
        address = url(exposure.scheme, host, port)
        record: dict[str, Any] = {"pid": os.getpid(), "url": address}
        if exposure.tls:
            record["tls_cert"] = str(exposure.tls[0])  # what the CLI trusts for this URL
        info.write_text(json.dumps(record))
        undo.callback(info.unlink, missing_ok=True)  # no client is sent here any more
        log.info("serve.listening", url=address)
        # uvicorn handles SIGTERM/SIGINT itself, then re-raises the signal to the handler it
        # found: make that a no-op so that a requested stop exits 0, after cleanup.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        server.run(sockets=[backend])  # returns on SIGTERM / SIGINT, or the front's end
    if front.code is not None:
        raise DiploError(
            f"the API's front process ended on its own (exit code {front.code})",
            hint="its error is above; start diplo serve again",
        )


def metrics_collector(
    home: Path,
    ctx: Context,
    config: MetricsConfig,
    owned: Callable[[], Collection[str]] | None = None,
) -> Collector | None:
    """The metrics collector (not started), writing to $DIPLO_HOME/metrics.db, of the apps
    `owned` names (this home's: as `diplo status` shows them); None when the host's
    config turns metrics off, or beside an in-memory engine."""
    if not config.enabled:
        return None
    try:
        meter = ctx.meter
    except DiploError as exc:
        log.warning("metrics.unavailable", error=exc.message)
        return None
    if meter is None:
        return None
    retention = Retention(**config.retention.model_dump())
    store = MetricStore(home / METRICS_FILE, retention, config.interval)

    def latency(app: str) -> float | None:
        newest = status.probes(ctx, app, 1)
        return newest[0].latency_ms if newest else None

    return Collector(
        meter,
        store,
        interval=config.interval,
        latency=latency,
        requests=request_stats(ctx),
        owned=owned,
    )


def request_stats(ctx: Context) -> AccessLog | None:
    """The request metrics of the apps behind the proxy, from its access log; None where
    this home runs no proxy."""
    if not ctx.proxy_enabled:
        return None

    def routes() -> dict[str, tuple[str, list[str]]]:
        return {app: (project, r["domains"]) for app, (project, r) in ctx.ledger.routes().items()}

    return AccessLog(ctx.proxy.access_log, routes)


class ControllerInputs:
    """What the alert rules read of the controller: its view, specs and sources."""

    def __init__(self, ctx: Context, controller: Controller) -> None:
        self.ctx, self.controller = ctx, controller

    def health(self) -> dict[str, tuple[str, int]] | None:
        view = self.controller.view
        if view.refreshed_at is None:  # not looked yet: absent apps are not gone ones
            return None
        known = {a.name: ("absent", 0) for a in self.controller.state.desired.apps}
        return {**known, **{r.app: (r.health, r.restarts) for r in list(view.rows.values())}}

    def app_rules(self, app: str) -> str | None:
        spec = self.controller.state.desired.app(app)
        return spec.alerts if spec is not None else None

    def sources(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.controller.sources]

    def certificates(self) -> list[dict[str, Any]]:
        try:
            return certificates(self.ctx)
        except DiploError as exc:
            log.warning("alerts.certificates_unreadable", error=exc.message)
            return []


def alert_service(
    config: AlertsConfig, ctx: Context, controller: Controller, poll_every: float
) -> AlertService | None:
    """The alerts (not started), their channels' secrets read now: a missing one stops
    serve before it changes anything. None when the host's config turns alerts off."""
    if not config.enabled:
        return None
    return AlertService(
        config,
        ctx.ledger,
        senders(config.channels, config.channel_names()),
        ControllerInputs(ctx, controller),
        poll_every=poll_every,
        publish=controller.bus.publish,
    )


def firing_of(alerts: AlertService | None) -> Callable[[], list[dict[str, Any]]] | None:
    """The dashboard's alerts panel: the firing alerts, read from memory (every open page
    asks every 0.25 s)."""
    if alerts is None:
        return None
    return lambda: [a.public() for a in alerts.book.snapshot(0)[0]]


def _sole_server(home: Path) -> int:
    """One `diplo serve` per DIPLO_HOME: a second would fight the first over every app
    and overwrite its serve.json. Held (flock) for the process's life; the kernel drops
    it when the process dies."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(
            f"another diplo serve runs with this DIPLO_HOME ({home})",
            hint="stop it first, or give this one a DIPLO_HOME of its own",
        ) from None
    return fd


def _tidy_heap(every: float = 60.0, whole_every: float = 15 * 60.0) -> threading.Event:
    """Most of this process's heap lives as long as it does (the SDK, pydantic models,
    FastAPI, the apps' state): frozen, the collector's passes skip it and stop stalling
    the API for tens of ms. Every minute the young survivors are collected and frozen too
    (a pass over the two young generations: a few ms). The whole heap is searched for
    cycles only every `whole_every`: that pass holds the GIL for ~0.1 s at 100 apps, a
    stall of every request in flight, and the collector's own full passes are made rare
    (FULL_AFTER): at 500 apps they started every few seconds, each 100-200 ms over the
    specs of the last reloads, and found nothing (`gc.slow`: collected=0). Cycles wait
    for the whole pass; objects freed by reference counting, nearly all of them, never
    do."""

    def tidy() -> None:
        slow = _slow_collections()
        gc.callbacks.append(slow)
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], FULL_AFTER)
        try:
            gc.collect()
            gc.freeze()
            whole_at = time.monotonic() + whole_every
            while not stop.wait(every):
                whole = time.monotonic() >= whole_at
                began = time.perf_counter()
                if whole:
                    gc.unfreeze()
                    whole_at = time.monotonic() + whole_every
                freed = gc.collect(2 if whole else 1)
                gc.freeze()
                log.debug(
                    "gc.pass", whole=whole, freed=freed, frozen=gc.get_freeze_count(),
                    ms=round((time.perf_counter() - began) * 1000, 1),
                )  # fmt: skip
        finally:  # serve stopped: the process's collector as it was (it may run serve again)
            gc.callbacks.remove(slow)
            gc.set_threshold(*thresholds)

    stop = threading.Event()
    threading.Thread(target=tidy, name="diplo-gc", daemon=True).start()
    return stop


def _slow_collections(threshold: float = GC_SLOW) -> Callable[[str, dict[str, int]], None]:
    """A collection holds the GIL from start to end: every request in flight waits. One
    longer than `threshold` is logged, with what it found (a tail of `GET /apps` that the
    controller's own work does not explain shows up here)."""
    began = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
            return
        took = time.perf_counter() - began[0]
        if took >= threshold:
            log.warning(
                "gc.slow", generation=info.get("generation"), ms=round(took * 1000),
                collected=info.get("collected"), frozen=gc.get_freeze_count(),
            )  # fmt: skip

    return watch
