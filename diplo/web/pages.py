"""The dashboard's pages and the fragments the page swaps in when `/ws` says something
changed: the overview at `/`, an app at `/ui/apps/{app}`. `/apps/...` stays the JSON API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from diplo.api.app import client_of, log_stream
from diplo.api.params import AppName
from diplo.api.problems import Problem
from diplo.errors import DiploError
from diplo.ops import deployments, status
from diplo.ops import proxy as routed
from diplo.ops.metrics import series_answer
from diplo.units import parse_duration
from diplo.web.context import Dashboard
from diplo.web.sessions import Session

SPARK_WINDOW = 15 * 60  # s of history an overview sparkline shows
SPARK_STEP = 30  # s per sparkline point
RANGES = ("15m", "1h", "6h", "24h", "7d")  # what an app page's charts offer
HISTORY = 30  # deployments an app page lists
PROBES = 20
# Rows the overview's HTML holds (a screen and more); the rest come in one request right
# after the first paint. At 100 apps the whole table was 80 kB of HTML that the browser
# parsed and laid out before it painted anything: 484 ms to the first paint, against the
# issue's 300 ms.
FIRST_ROWS = 15
FILTERS = ("q", "project", "health")  # the overview's filters, as query parameters


def add_pages(api: FastAPI, dash: Dashboard) -> None:
    controller = dash.controller
    ctx = controller.ctx
    reader: Any = Depends(dash.reader)
    html: dict[str, Any] = {"include_in_schema": False, "response_class": HTMLResponse}

    def host() -> dict[str, Any]:
        rows = list(controller.view.rows.values())
        sample = dash.metrics.host if dash.metrics is not None else None
        return {
            "total": len(rows),
            "healthy": sum(1 for r in rows if r.health == "healthy"),
            "engine_ok": controller.view.engine_ok,
            "docker_version": controller.view.engine_version,
            "uptime": time.time() - controller.started_at,
            "sample": sample.as_dict() if sample is not None else None,
        }

    @api.get("/", **html)
    def overview(request: Request, session: Session = reader) -> HTMLResponse:
        data = dash.listing()
        projects = sorted({r["project"] for r in data["apps"] if r.get("project")})
        # a filtered view is rendered whole: its matches may be anywhere in the table
        filtered = any(request.query_params.get(k) for k in FILTERS)
        first = None if filtered or len(data["apps"]) <= FIRST_ROWS else FIRST_ROWS
        return dash.page(
            request,
            "overview.html",
            session,
            listing=data,
            rows=dash.rows(first),
            more=0 if first is None else len(data["apps"]) - first,
            projects=projects,
            host=host(),
            alerts=dash.firing(),
        )

    @api.get("/ui/rows", **html)
    def rows(_: Session = reader) -> HTMLResponse:
        return HTMLResponse(dash.rows())

    @api.get("/ui/rows/{app}", **html)
    def row(request: Request, app: AppName, session: Session = reader) -> Response:
        found = controller.view.app(app)
        if found is None:
            return Response(status_code=404)
        line = controller.view.summary(app)
        line["reconciling"] = app in controller.queue.processing
        return dash.page(request, "row.html", session, row=line)

    @api.get("/ui/panels/{panel}", **html)
    def panel(request: Request, panel: str, session: Session = reader) -> Response:
        if panel == "sources":
            return dash.page(request, "sources.html", session, listing=dash.listing())
        if panel == "host":
            return dash.page(request, "host.html", session, host=host())
        if panel == "alerts":
            return dash.page(request, "alerts.html", session, alerts=dash.firing())
        return Response(status_code=404)

    @api.get("/ui/sparks", include_in_schema=False)
    def sparks(_: Session = reader) -> JSONResponse:
        """CPU and memory of every app over the last minutes, for the overview's lines."""
        store = dash.metrics.store if dash.metrics is not None else None
        out: dict[str, Any] = {}
        if store is not None:
            now = time.time()
            for name in list(controller.view.rows):
                series = store.series(name, SPARK_WINDOW, SPARK_STEP, now)
                out[name] = {
                    "cpu": series.metrics.get("cpu_percent", []),
                    "mem": series.metrics.get("memory_bytes", []),
                }
        return JSONResponse({"enabled": store is not None, "apps": out})

    def app_data(app: str) -> dict[str, Any]:
        found = controller.view.app(app)
        if found is None:
            raise Problem(404, "no such app", f"no app named {app!r} on this host")
        found.reconciling = app in controller.queue.processing
        history = [d.public() for d in status.history(ctx, app, HISTORY)]
        return {
            "app": found.as_dict(),
            "history": history,
            "current": deployments.current(ctx, app),
            "inflight": app in controller.inflight,
        }

    @api.get("/ui/apps/{app}", **html)
    def app_page(request: Request, app: AppName, session: Session = reader) -> Response:
        try:
            data = app_data(app)
        except Problem as exc:
            return dash.page(request, "missing.html", session, status=404, app=app, why=exc.detail)
        probes = [p.__dict__ for p in status.probes(ctx, app, PROBES)]
        return dash.page(
            request,
            "app.html",
            session,
            **data,
            probes=probes,
            ranges=RANGES,
            alerts=dash.firing(),
            metrics_on=dash.metrics is not None and dash.metrics.store is not None,
        )

    @api.get("/ui/apps/{app}/part/{part}", **html)
    def part(request: Request, app: AppName, part: str, session: Session = reader) -> Response:
        if part not in ("summary", "history", "probes", "domains"):
            return Response(status_code=404)
        try:
            data = app_data(app)
        except Problem:
            return Response(status_code=404)
        if part == "probes":
            data["probes"] = [p.__dict__ for p in status.probes(ctx, app, PROBES)]
        if part == "domains":
            try:
                data["certs"] = [c for c in routed.certificates(ctx) if c["app"] == app]
            except DiploError as exc:
                data["certs_error"] = exc.message
        return dash.page(request, f"app_{part}.html", session, **data)

    @api.get("/ui/apps/{app}/diff", **html)
    def diff(
        request: Request,
        app: AppName,
        old: Annotated[int, Query(ge=1)],
        new: Annotated[int, Query(ge=1)],
        session: Session = reader,
    ) -> HTMLResponse:
        try:
            changes, error = deployments.spec_diff(ctx, app, old, new), None
        except DiploError as exc:
            changes, error = [], exc.message
        return dash.page(
            request, "diff.html", session, app=app, old=old, new=new, changes=changes, error=error
        )

    @api.get("/ui/apps/{app}/rollback/{to}", **html)
    def confirm_rollback(
        request: Request, app: AppName, to: int, session: Session = reader
    ) -> HTMLResponse:
        """What a rollback to `to` would change, and the button that does it."""
        now = deployments.current(ctx, app)
        changes: list[dict[str, Any]] = []
        error = None
        try:
            if now is not None:
                changes = deployments.spec_diff(ctx, app, now, to)
        except DiploError as exc:
            error = exc.message
        return dash.page(
            request, "rollback.html", session, app=app, to=to, now=now, changes=changes,
            error=error,
        )  # fmt: skip

    @api.get("/ui/apps/{app}/metrics", include_in_schema=False)
    def app_metrics(
        app: AppName,
        since: Annotated[str, Query(pattern=r"^[1-9][0-9]{0,3}[mhd]$")] = "1h",
        _: Session = reader,
    ) -> JSONResponse:
        store = dash.metrics.store if dash.metrics is not None else None
        if store is None:
            return JSONResponse({"enabled": False}, status_code=503)
        series = store.series(app, parse_duration(since), None, time.time())
        return JSONResponse({"enabled": True, **series_answer(series)})

    follow_threads = anyio.CapacityLimiter(dash.follows.total)

    @api.get("/ui/apps/{app}/logs", include_in_schema=False)
    async def logs(
        request: Request,
        app: AppName,
        tail: Annotated[int, Query(ge=0, le=10000)] = 200,
        _: Session = reader,
    ) -> Response:
        """The app's output, followed: what the log panel shows line by line."""
        if controller.view.app(app) is None:
            return Response("no such app", status_code=404)
        try:
            release = dash.follows.take(client_of(request))
        except Problem as exc:
            return Response(exc.detail, status_code=429, headers=exc.headers)
        try:
            answer = await log_stream(
                ctx, app, follow=True, tail=tail, release=release, threads=follow_threads
            )
        except DiploError as exc:
            return Response(exc.message, status_code=404)
        answer.headers["Cache-Control"] = "no-store"
        answer.headers["X-Accel-Buffering"] = "no"  # a proxy in front must not hold lines back
        return answer
