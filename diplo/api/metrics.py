"""The metrics routes: an app's history (`GET /apps/{app}/metrics`), the Prometheus
exposition (`GET /metrics`, a read like any other: the viewer token when the operator
chose tokens), and the timing of every request for Diplo's own API latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diplo.api.params import AppName
from diplo.api.problems import AUTH_ERRORS, READ_ERRORS, Problem, problem_doc
from diplo.metrics.collector import Collector
from diplo.metrics.prom import CONTENT_TYPE, OwnMetrics
from diplo.ops.metrics import Top, series_answer, usage
from diplo.units import parse_duration

DURATION = r"^[1-9][0-9]{0,7}[smhd]$"
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class PromText(Response):
    media_type = "text/plain"


class MetricSeries(BaseModel):
    """An app's metrics over time, its replicas added up (CPU and memory and rates are
    sums; `cpu_limit_percent` and `latency_ms` are means). Each list in `metrics` has one
    value per timestamp; null where no sample had that metric."""

    app: str
    since: int = Field(description="Seconds of history asked for (at most the longest tier).")
    step: int = Field(description="Seconds per value: the step asked for, raised if needed.")
    resolution: float = Field(description="Seconds between samples of the tier read.")
    timestamps: list[int] = Field(description="Start of each step, epoch seconds.")
    metrics: dict[str, list[float | None]] = Field(
        description="cpu_percent (of one core), cpu_percent_max, cpu_limit_percent, "
        "memory_bytes, memory_bytes_max, memory_limit_bytes, rx_bytes_per_second, "
        "tx_bytes_per_second, rx_bytes, tx_bytes, blk_read_bytes, blk_write_bytes, "
        "restarts, latency_ms (the health probe's); for apps behind the proxy: "
        "requests_per_second, p50_ms, p95_ms, p99_ms (response time through the proxy) "
        "and error_ratio (5xx answers / all), null for a step without requests."
    )


class HostSeries(BaseModel):
    """The host's figures over time, as the collector sampled them each interval."""

    since: int = Field(description="Seconds of history asked for (at most the longest tier).")
    step: int = Field(description="Seconds per value: the step asked for, raised if needed.")
    resolution: float = Field(description="Seconds between samples of the tier read.")
    timestamps: list[int] = Field(description="Start of each step, epoch seconds.")
    metrics: dict[str, list[float | None]] = Field(
        description="cpu_percent (of all cores), cpu_percent_max, memory_used_bytes, "
        "memory_used_bytes_max, memory_total_bytes, load_1m, load_5m, load_15m, "
        "docker_disk_free_bytes (the lowest in the step), docker_disk_total_bytes."
    )


class AppUsage(BaseModel):
    """An app's newest sample, its replicas added up."""

    app: str
    replicas: int
    cpu_percent: float = Field(description="Of one core.")
    memory_bytes: float
    memory_limit_bytes: float | None
    memory_percent: float | None
    rx_bytes_per_second: float
    tx_bytes_per_second: float
    restarts: int
    latency_ms: float | None = Field(description="The newest health probe's.")
    sampled_at: int = Field(description="Epoch seconds.")
    requests_per_second: float | None = Field(
        None, description="Through the proxy, over the last interval; null: not behind it."
    )
    p50_ms: float | None = Field(None, description="Response time through the proxy.")
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_ratio: float | None = Field(
        None, description="5xx answers / all answers; null without requests."
    )


class TopAnswer(BaseModel):
    apps: list[AppUsage]
    host: dict[str, Any] | None = Field(description="As in GET /system/stats.")
    interval_s: float | None = Field(description="Seconds between samples (null: off).")


def add_metrics_routes(
    api: FastAPI,
    meter: OwnMetrics,
    collector: Collector | None,
    reads: Any,
    view: Callable[[str], dict[str, Any]],
) -> None:
    @api.get(
        "/apps/{app}/metrics",
        summary="An app's metrics history",
        dependencies=reads,
        response_model=MetricSeries,
        responses={**AUTH_ERRORS, **READ_ERRORS, 503: problem_doc("Metrics are turned off")},
    )
    def app_metrics(
        app: AppName,
        since: Annotated[
            str, Query(pattern=DURATION, description="How far back, e.g. 30m, 1h, 7d.")
        ] = "1h",
        step: Annotated[
            str | None,
            Query(pattern=DURATION, description="Seconds per value, e.g. 10s, 1m, 1h."),
        ] = None,
    ) -> MetricSeries:
        view(app)
        if collector is None or collector.store is None:
            raise Problem(503, "metrics are off", "this diplo serve collects no metrics")
        series = collector.store.series(
            app, parse_duration(since), parse_duration(step) if step else None, time.time()
        )
        return MetricSeries(**series_answer(series))

    @api.get(
        "/system/metrics",
        summary="The host's CPU, memory, load and Docker disk history",
        dependencies=reads,
        response_model=HostSeries,
        responses={
            **AUTH_ERRORS,
            422: problem_doc("Invalid query parameter"),
            503: problem_doc("Metrics are turned off"),
        },
    )
    def host_metrics(
        since: Annotated[
            str, Query(pattern=DURATION, description="How far back, e.g. 30m, 1h, 7d.")
        ] = "1h",
        step: Annotated[
            str | None,
            Query(pattern=DURATION, description="Seconds per value, e.g. 10s, 1m, 1h."),
        ] = None,
    ) -> HostSeries:
        if collector is None or collector.store is None:
            raise Problem(503, "metrics are off", "this diplo serve collects no metrics")
        series = collector.store.host_series(
            parse_duration(since), parse_duration(step) if step else None, time.time()
        )
        answer = series_answer(series)
        del answer["app"]
        return HostSeries(**answer)

    @api.get(
        "/system/top",
        summary="Each app's newest CPU, memory, network and restarts (what `diplo top` shows)",
        dependencies=reads,
        response_model=TopAnswer,
        responses=AUTH_ERRORS,
    )
    def top() -> dict[str, Any]:
        if collector is None:
            return Top().as_dict()
        points = [p for s in list(collector.latest.values()) if (p := s.point()) is not None]
        host = collector.host.as_dict() if collector.host is not None else None
        return Top(usage(points), host, collector.interval).as_dict()

    @api.get(
        "/metrics",
        summary="Prometheus text exposition: per-container series and Diplo's own",
        response_class=PromText,
        dependencies=reads,
        responses=AUTH_ERRORS,
    )
    def prometheus() -> Response:
        return Response(meter.exposition(collector), media_type=CONTENT_TYPE)


class RequestTimer:
    """Observes each request's time to its response's first byte, labelled by the route's
    template (`/apps/{app}`, never the path itself: a label value per app name or per
    probe of a scanner would have no bound)."""

    def __init__(self, app: ASGIApp, meter: OwnMetrics) -> None:
        self.app, self.meter = app, meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope["method"] if scope["method"] in METHODS else "other"
                self.meter.api_seconds.labels(method, route, str(message["status"])).observe(
                    time.perf_counter() - began
                )
            await send(message)

        await self.app(scope, receive, timed)
