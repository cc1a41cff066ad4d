"""The REST API of `diplo serve`. Reads are served from the controller's in-memory view
(kept current by engine events, reconciles and a health loop), never by calling the
engine per request. Reads need a token (admin or viewer) unless the server listens on
loopback and the operator chose none; POSTs need the admin token and are rate-limited per
client. Streams (log follows, events) are capped per client and in all, and never hold
the thread pool the other routes share. Environment values never appear: app specs
carry only digests of them."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from diplo import __version__
from diplo.api.access import Access, HostCheck
from diplo.api.alerts import add_alert_routes
from diplo.api.fastpath import ListingFastPath
from diplo.api.gitops import add_gitops_routes, busy
from diplo.api.limits import RateLimiter, StreamSlots, relay
from diplo.api.metrics import RequestTimer, add_metrics_routes
from diplo.api.params import AppName
from diplo.api.problems import (
    AUTH_ERRORS,
    READ_ERRORS,
    STREAM_ERRORS,
    WRITE_ERRORS,
    Problem,
    problem_doc,
    problem_response,
)
from diplo.controller.controller import Controller
from diplo.errors import DiploError
from diplo.ops import lifecycle, status
from diplo.ops import proxy as routed
from diplo.ops.context import Context

if TYPE_CHECKING:
    from diplo.alerts.service import AlertService
    from diplo.metrics.collector import Collector
    from diplo.webhooks import WebhookSecrets

RATE = (20, 10.0)  # POSTs per client: at most 20 per 10 s
FOLLOWS = (8, 64)  # open `logs?follow=true` streams: per client, in all
SUBSCRIBERS = (8, 64)  # open /events streams: per client, in all
EVENT_POLL = 0.2  # s: how often an /events stream looks at its queue (no thread waits)

__all__ = ["Problem", "asgi_app", "create_app"]


class TextStream(StreamingResponse):
    media_type = "text/plain"


class EventStream(EventSourceResponse):
    media_type = "text/event-stream"


class _GivesSlotBack:
    """A stream that gives its slot back however it ends (even if never started)."""

    release: Callable[[], None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            self.release()


class SlotText(_GivesSlotBack, StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/plain; charset=utf-8")
        self.release = release


class SlotEvents(_GivesSlotBack, EventSourceResponse):
    def __init__(self, content: AsyncIterator[dict[str, str]], release: Callable[[], None]):
        super().__init__(content, ping=15)
        self.release = release


class Accepted(BaseModel):
    app: str
    accepted: bool
    detail: str


def client_of(request: Request) -> str:
    return request.client.host if request.client else "?"


async def log_stream(
    ctx: Context,
    app: str,
    *,
    follow: bool,
    tail: int,
    release: Callable[[], None],
    threads: anyio.CapacityLimiter | None,
) -> SlotText:
    """`app`'s output as a streamed answer that gives its slot back (`release`) when it
    ends; opened in a worker thread (the engine answers slowly at times). The slot is given
    back at once when it cannot be opened (DiploError: no container, the engine)."""
    try:
        stream = await anyio.to_thread.run_sync(
            lambda: lifecycle.logs(ctx, app, follow=follow, tail=tail)
        )
    except BaseException:
        release()
        raise
    return SlotText(relay(stream, threads), release)


def asgi_app(
    controller: Controller,
    access: Access,
    *,
    webhook_secrets: WebhookSecrets | None = None,
    listen_host: str = "127.0.0.1",
    allowed_hosts: Iterable[str] = (),
    metrics: Collector | None = None,
    alerts: AlertService | None = None,
    extend: Callable[[FastAPI], object] | None = None,
) -> HostCheck:
    """What `diplo serve` runs: the Host check, then the GET /apps fast path, then the API;
    `extend` adds routes of the layers above (the dashboard) to the same app."""
    api = create_app(controller, access, webhook_secrets, metrics, alerts)
    if extend is not None:
        extend(api)
    return HostCheck(
        ListingFastPath(api, controller.view.listing, access), listen_host, allowed_hosts
    )


def create_app(
    controller: Controller,
    access: Access,
    webhook_secrets: WebhookSecrets | None = None,
    metrics: Collector | None = None,
    alerts: AlertService | None = None,
) -> FastAPI:
    api = FastAPI(
        title="Diplo",
        version=__version__,
        description="The API of `diplo serve`: apps, health, deployments, events.",
    )
    api.add_middleware(GZipMiddleware, minimum_size=512)
    api.add_middleware(RequestTimer, meter=controller.meter)
    limiter = RateLimiter(*RATE)
    follows = StreamSlots("log follows", *FOLLOWS)
    subscribers = StreamSlots("event streams", *SUBSCRIBERS)
    # Follow streams read the engine in threads of their own limiter: at most one per
    # open follow, and never one of the 40 the sync routes (and /healthz) share.
    follow_threads = anyio.CapacityLimiter(FOLLOWS[1])

    @api.exception_handler(Problem)
    async def problem_handler(_: Request, exc: Problem) -> JSONResponse:
        return exc.response()

    @api.exception_handler(StarletteHTTPException)
    async def http_handler(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # e.g. the Allow header of a 405
        return problem_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @api.exception_handler(RequestValidationError)
    async def validation_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return problem_response(422, "invalid request", "see errors", errors=errors)

    def reader(request: Request) -> None:
        access.check(request.headers.get("authorization", ""), act=False)

    def authorized(request: Request) -> None:
        if not limiter.allow(client_of(request)):  # before the token check: guesses count too
            raise Problem(
                429,
                "too many requests",
                f"at most {RATE[0]} per {RATE[1]:g}s",
                headers={"Retry-After": f"{RATE[1]:.0f}"},
            )
        access.check(request.headers.get("authorization", ""), act=True)

    reads: Any = [Depends(reader)]
    read_errors = {**AUTH_ERRORS, **READ_ERRORS}

    def view(app: str) -> dict[str, Any]:
        found = controller.view.app(app)
        if found is None:
            raise Problem(404, "no such app", f"no app named {app!r} on this host")
        found.reconciling = app in controller.queue.processing
        return found.as_dict()

    @api.get("/healthz", summary="The controller's own health")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok" if controller.view.engine_ok else "degraded",
            "engine": controller.view.engine_ok,
            "manifest_ok": controller.state.manifest.ok,
            "last_resync": controller.state.last_resync,
            "version": __version__,
        }

    @api.get(
        "/apps",
        summary="Every app: desired vs observed, health, ports, deployments",
        dependencies=reads,
        responses=AUTH_ERRORS,
    )
    async def apps() -> Response:  # cached bytes: no thread hop needed
        return Response(controller.view.listing(), media_type="application/json")

    @api.get("/apps/{app}", summary="One app", dependencies=reads, responses=read_errors)
    def one_app(app: AppName) -> dict[str, Any]:
        return view(app)

    @api.get(
        "/apps/{app}/health",
        summary="Recent health probes",
        dependencies=reads,
        responses=read_errors,
    )
    def app_health(app: AppName, last: Annotated[int, Query(ge=1, le=50)] = 20) -> dict[str, Any]:
        row = view(app)
        probes = [p.__dict__ for p in status.probes(controller.ctx, app, last)]
        return {
            "app": app,
            "health": row.get("health"),
            "detail": row.get("health_detail"),
            "probes": probes,
        }

    @api.get(
        "/apps/{app}/deployments",
        summary="Deployments, newest first",
        dependencies=reads,
        responses=read_errors,
    )
    def deployments(
        app: AppName, limit: Annotated[int, Query(ge=1, le=200)] = 20
    ) -> dict[str, Any]:
        view(app)
        deps = status.history(controller.ctx, app, limit)
        return {"app": app, "deployments": [d.public() for d in deps]}

    @api.get(
        "/apps/{app}/logs",
        summary="Container output, like docker logs",
        response_class=TextStream,
        dependencies=reads,
        responses={**read_errors, **STREAM_ERRORS},
    )
    async def logs(
        request: Request,
        app: AppName,
        tail: Annotated[int, Query(ge=0, le=100000)] = 100,
        follow: bool = False,
    ) -> StreamingResponse:
        view(app)
        release = follows.take(client_of(request)) if follow else (lambda: None)
        try:
            return await log_stream(
                controller.ctx, app, follow=follow, tail=tail, release=release,
                threads=follow_threads if follow else None,
            )  # fmt: skip
        except DiploError as exc:
            raise Problem(404, "no logs", exc.message) from exc

    @api.get(
        "/events",
        summary="Server-sent events: deployments, health, drift, errors",
        response_class=EventStream,
        dependencies=reads,
        responses={**AUTH_ERRORS, **STREAM_ERRORS},
    )
    async def events(request: Request) -> EventSourceResponse:
        release = subscribers.take(client_of(request))
        sub = controller.bus.subscribe()

        async def stream() -> AsyncIterator[dict[str, str]]:
            # The bus's queue is polled from the loop: an idle subscriber holds no thread.
            try:
                while True:
                    try:
                        event = sub.get_nowait()
                    except queue.Empty:
                        await asyncio.sleep(EVENT_POLL)
                        continue
                    payload = {"app": event.app, "at": event.at, **event.data}
                    yield {"id": str(event.id), "event": event.kind, "data": json.dumps(payload)}
            finally:
                controller.bus.unsubscribe(sub)

        def done() -> None:
            controller.bus.unsubscribe(sub)  # also when the stream never started
            release()

        return SlotEvents(stream(), done)

    @api.get(
        "/proxy/domains",
        summary="Each domain the proxy serves: its app, TLS, and the certificate's issuer and "
        "expiry",
        dependencies=reads,
        responses=AUTH_ERRORS,
    )
    def domains() -> dict[str, Any]:
        return {"domains": routed.certificates(controller.ctx)}

    @api.get(
        "/system/stats",
        summary="Counts, ports, disk, uptime, engine; the host's CPU, memory, load and the "
        "disk of Docker's data root",
        dependencies=reads,
        responses=AUTH_ERRORS,
    )
    def stats() -> dict[str, Any]:
        rows = list(controller.view.rows.values())
        host = metrics.host if metrics is not None else None
        return {
            "apps": {
                "total": len(rows),
                "healthy": sum(1 for r in rows if r.health == "healthy"),
                "failing": sum(1 for r in rows if r.health not in ("healthy", "starting")),
            },
            "ports_in_use": sum(len(r.ports) for r in rows),
            "disk_free_bytes": status.disk_free(controller.ctx),
            "uptime_s": round(time.time() - controller.started_at, 1),
            "docker_version": controller.view.engine_version,
            "engine_ok": controller.view.engine_ok,
            "last_resync": controller.state.last_resync,
            # the collector's newest host sample (null when metrics are off)
            "host": host.as_dict() if host is not None else None,
            "metrics": {
                "enabled": metrics is not None,
                "interval_s": metrics.interval if metrics is not None else None,
                "containers": len(metrics.latest) if metrics is not None else 0,
                "last_cycle_s": round(metrics.last_cycle_seconds, 4) if metrics else None,
                "history_bytes": metrics.store.size_bytes()
                if metrics is not None and metrics.store is not None
                else None,
            },
        }

    @api.post(
        "/apps/{app}/sync",
        dependencies=[Depends(authorized)],
        response_model=Accepted,
        responses={**WRITE_ERRORS, 409: problem_doc("A deploy holds the app (see Retry-After)")},
    )
    def sync(
        app: AppName,
        resume: Annotated[bool, Query(description="Drop a rollback's pin first.")] = False,
    ) -> Accepted:
        view(app)
        try:
            resumed = controller.sync(app, resume=resume)
        except DiploError as exc:
            raise busy("cannot resume", exc) from exc
        detail = "following the source again; " if resumed else ""
        return Accepted(app=app, accepted=True, detail=detail + "reconcile queued")

    @api.post(
        "/apps/{app}/restart",
        dependencies=[Depends(authorized)],
        response_model=Accepted,
        responses={
            **WRITE_ERRORS,
            409: problem_doc("A deploy holds the app, or the engine refused"),
        },
    )
    def restart(app: AppName) -> Accepted:
        view(app)
        try:
            restarted = controller.restart(app)
        except DiploError as exc:
            raise busy("cannot restart", exc) from exc
        return Accepted(
            app=app,
            accepted=restarted,
            detail="restarted" if restarted else "no container to restart",
        )

    @api.post(
        "/apps/{app}/cancel",
        dependencies=[Depends(authorized)],
        response_model=Accepted,
        responses=WRITE_ERRORS,
    )
    def cancel(app: AppName) -> Accepted:
        view(app)
        cancelled = controller.cancel(app)
        return Accepted(
            app=app,
            accepted=cancelled,
            detail="cancel requested" if cancelled else "no deploy in flight",
        )

    add_gitops_routes(api, controller, authorized, view, Problem, webhook_secrets)
    add_metrics_routes(api, controller.meter, metrics, reads, view)
    add_alert_routes(api, alerts, reads)
    return api
