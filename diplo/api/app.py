"""The REST API of `diplo serve`. Reads are served from the controller's in-memory view
(kept current by engine events, reconciles and a health loop), never by calling the
engine per request; POSTs need the bearer token and are rate-limited per client.
Environment values never appear: app specs carry only digests of them."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from diplo import __version__
from diplo.api.fastpath import ListingFastPath
from diplo.api.gitops import add_gitops_routes
from diplo.api.params import AppName
from diplo.api.problems import READ_ERRORS, WRITE_ERRORS, problem_doc
from diplo.controller.controller import Controller
from diplo.errors import DiploError
from diplo.ops import lifecycle, status

RATE = (20, 10.0)  # POSTs per client: at most 20 per 10 s


class Problem(Exception):
    """An RFC 9457 problem answer."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


class TextStream(StreamingResponse):
    media_type = "text/plain"


class EventStream(EventSourceResponse):
    media_type = "text/event-stream"


class Accepted(BaseModel):
    app: str
    accepted: bool
    detail: str


def _problem(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


class RateLimiter:
    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.hits: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.hits.get(client, []) if now - t < self.window]
            if len(recent) >= self.limit:
                self.hits[client] = recent
                return False
            self.hits[client] = [*recent, now]
            return True


def asgi_app(
    controller: Controller, token: str, webhook_secret: str | None = None
) -> ListingFastPath:
    """What `diplo serve` runs: the API behind the GET /apps fast path."""
    return ListingFastPath(create_app(controller, token, webhook_secret), controller)


def create_app(controller: Controller, token: str, webhook_secret: str | None = None) -> FastAPI:
    api = FastAPI(
        title="Diplo",
        version=__version__,
        description="The API of `diplo serve`: apps, health, deployments, events.",
    )
    api.add_middleware(GZipMiddleware, minimum_size=512)
    limiter = RateLimiter(*RATE)

    @api.exception_handler(Problem)
    async def problem_handler(_: Request, exc: Problem) -> JSONResponse:
        return _problem(exc.status, exc.title, exc.detail, **exc.extra)

    @api.exception_handler(StarletteHTTPException)
    async def http_handler(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        answer = _problem(exc.status_code, str(exc.detail))
        answer.headers.update(exc.headers or {})  # e.g. the Allow header of a 405
        return answer

    @api.exception_handler(RequestValidationError)
    async def validation_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return _problem(422, "invalid request", "see errors", errors=errors)

    def authorized(request: Request) -> None:
        client = request.client.host if request.client else "?"
        if not limiter.allow(client):  # before the token check: guesses count too
            raise Problem(429, "too many requests", f"at most {RATE[0]} per {RATE[1]:g}s")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Problem(401, "authentication required", "send Authorization: Bearer <token>")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Problem(403, "invalid token")

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

    @api.get("/apps", summary="Every app: desired vs observed, health, ports, deployments")
    async def apps() -> Response:  # cached bytes: no thread hop needed
        return Response(controller.view.listing(), media_type="application/json")

    @api.get("/apps/{app}", summary="One app", responses=READ_ERRORS)
    def one_app(app: AppName) -> dict[str, Any]:
        return view(app)

    @api.get("/apps/{app}/health", summary="Recent health probes", responses=READ_ERRORS)
    def app_health(app: AppName, last: Annotated[int, Query(ge=1, le=50)] = 20) -> dict[str, Any]:
        row = view(app)
        probes = [p.__dict__ for p in status.probes(controller.ctx, app, last)]
        return {
            "app": app,
            "health": row.get("health"),
            "detail": row.get("health_detail"),
            "probes": probes,
        }

    @api.get("/apps/{app}/deployments", summary="Deployments, newest first", responses=READ_ERRORS)
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
        responses=READ_ERRORS,
    )
    def logs(
        app: AppName,
        tail: Annotated[int, Query(ge=0, le=100000)] = 100,
        follow: bool = False,
    ) -> StreamingResponse:
        view(app)
        try:
            stream = lifecycle.logs(controller.ctx, app, follow=follow, tail=tail)
        except DiploError as exc:
            raise Problem(404, "no logs", exc.message) from exc

        def body() -> Iterator[bytes]:
            try:
                yield from stream
            except DiploError:
                return

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

    @api.get(
        "/events",
        summary="Server-sent events: deployments, health, drift, errors",
        response_class=EventStream,
    )
    async def events(request: Request) -> EventSourceResponse:
        sub = controller.bus.subscribe()

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.to_thread(sub.get, True, 0.5)
                    except Exception:
                        continue
                    payload = {"app": event.app, "at": event.at, **event.data}
                    yield {"id": str(event.id), "event": event.kind, "data": json.dumps(payload)}
            finally:
                controller.bus.unsubscribe(sub)

        return EventSourceResponse(stream(), ping=15)

    @api.get("/system/stats", summary="Counts, ports, disk, uptime, engine")
    def stats() -> dict[str, Any]:
        rows = list(controller.view.rows.values())
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
        }

    @api.post(
        "/apps/{app}/sync",
        dependencies=[Depends(authorized)],
        response_model=Accepted,
        responses=WRITE_ERRORS,
    )
    def sync(
        app: AppName,
        resume: Annotated[bool, Query(description="Drop a rollback's pin first.")] = False,
    ) -> Accepted:
        view(app)
        resumed = controller.sync(app, resume=resume)
        detail = "following the source again; " if resumed else ""
        return Accepted(app=app, accepted=True, detail=detail + "reconcile queued")

    @api.post(
        "/apps/{app}/restart",
        dependencies=[Depends(authorized)],
        response_model=Accepted,
        responses={**WRITE_ERRORS, 409: problem_doc("The engine refused the restart")},
    )
    def restart(app: AppName) -> Accepted:
        view(app)
        try:
            restarted = controller.restart(app)
        except DiploError as exc:
            raise Problem(409, "cannot restart", exc.message) from exc
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

    add_gitops_routes(api, controller, authorized, view, Problem, webhook_secret)
    return api
