"""`GET /metrics`: the Prometheus text exposition of the collector's newest samples (one
series per container, labelled app, project and replica; the requests of each app behind
the proxy, labelled app and project) and of Diplo's own counters (reconciles, deploys
and their durations, drift heals, the work queue, API latency).
Each `diplo serve` has a registry of its own (never the library's global one)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

if TYPE_CHECKING:
    from diplo.metrics.collector import Collector, ContainerSample, RequestSample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEPLOY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LABELS = ["app", "project", "replica"]


class OwnMetrics:
    """Diplo's own counters; the controller and the API record into them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.reconciles = Counter(
            "diplo_reconciles", "Reconciles of one app, by result.", ["result"], registry=r
        )
        self.deploys = Counter(
            "diplo_deploys",
            "Deploys (create, update, start, ...) by kind and result.",
            ["kind", "result"],
            registry=r,
        )
        self.deploy_seconds = Histogram(
            "diplo_deploy_duration_seconds",
            "How long a reconcile's deploy took, health gate included.",
            ["result"],
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.drift_heals = Counter(
            "diplo_drift_heals", "Containers recreated or restarted after drift.", registry=r
        )
        self.health_restarts = Counter(
            "diplo_health_restarts", "Restarts of apps that turned unhealthy.", registry=r
        )
        self.resync_skips = Counter(
            "diplo_resync_skips",
            "Resync looks that found an app as its last full look had, and so skipped it.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "diplo_workqueue_depth", "Apps waiting in the controller's work queue.", registry=r
        )
        self.api_seconds = Histogram(
            "diplo_api_request_duration_seconds",
            "Time to the response's first byte, by route template.",
            ["method", "route", "status"],
            buckets=API_BUCKETS,
            registry=r,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def reconciled(self, result: str) -> None:
        self.reconciles.labels(result).inc()

    def deployed(self, kind: str, ok: bool, seconds: float) -> None:
        result = "ok" if ok else "failed"
        self.deploys.labels(kind, result).inc()
        self.deploy_seconds.labels(result).observe(seconds)

    def exposition(self, collector: Collector | None = None) -> bytes:
        """The text format of Diplo's own metrics, and of the collector's samples."""
        text = generate_latest(self.registry)
        if collector is not None:
            samples = CollectorRegistry(auto_describe=False)
            samples.register(SampleExport(collector))
            text += generate_latest(samples)
        return text


class SampleExport(PromCollector):
    """The newest sample of each container and of the host, read at scrape time."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        samples = sorted(self.collector.latest.values(), key=lambda s: (s.app, s.replica))

        def family(kind: type, name: str, doc: str) -> GaugeMetricFamily | CounterMetricFamily:
            return kind(name, doc, labels=LABELS)

        cpu = family(CounterMetricFamily, "diplo_container_cpu_seconds", "CPU time used.")
        mem = family(GaugeMetricFamily, "diplo_container_memory_bytes", "Memory in use.")
        limit = family(GaugeMetricFamily, "diplo_container_memory_limit_bytes", "Memory limit.")
        cpus = family(GaugeMetricFamily, "diplo_container_cpu_limit_cores", "CPU limit.")
        rx = family(CounterMetricFamily, "diplo_container_network_receive_bytes", "Bytes received.")
        tx = family(CounterMetricFamily, "diplo_container_network_transmit_bytes", "Bytes sent.")
        rd = family(CounterMetricFamily, "diplo_container_blkio_read_bytes", "Block I/O read.")
        wr = family(CounterMetricFamily, "diplo_container_blkio_write_bytes", "Block I/O written.")
        restarts = family(
            CounterMetricFamily, "diplo_container_restarts", "Restarts by the engine's policy."
        )
        latency = GaugeMetricFamily(
            "diplo_app_probe_latency_seconds", "The newest health probe's latency.", labels=["app"]
        )
        probed: set[str] = set()
        for s in samples:
            labels = [s.app, s.project, str(s.replica)]
            cpu.add_metric(labels, s.cpu_seconds)
            mem.add_metric(labels, s.memory_bytes)
            if s.memory_limit_bytes is not None:
                limit.add_metric(labels, s.memory_limit_bytes)
            if s.cpus is not None:
                cpus.add_metric(labels, s.cpus)
            rx.add_metric(labels, s.rx_bytes)
            tx.add_metric(labels, s.tx_bytes)
            rd.add_metric(labels, s.blk_read_bytes)
            wr.add_metric(labels, s.blk_write_bytes)
            restarts.add_metric(labels, s.restarts)
            if s.latency_ms is not None and s.app not in probed:
                latency.add_metric([s.app], s.latency_ms / 1000.0)
                probed.add(s.app)
        yield from (cpu, mem, limit, cpus, rx, tx, rd, wr, restarts, latency)
        yield from self._requests(samples)
        yield from self._host()

    def _requests(self, samples: list[ContainerSample]) -> Iterator[Metric]:
        """Each proxied app's requests: counters by status class since `diplo serve`
        started, and a summary of its response times (the quantiles over the last
        interval, NaN when it had no request; count and sum since start)."""
        stats = self.collector.requests
        if stats is None:
            return
        totals = stats.totals()
        window: dict[str, tuple[str, RequestSample]] = {}
        for s in samples:
            if s.requests is not None:
                window.setdefault(s.app, (s.project, s.requests))
        requests = CounterMetricFamily(
            "diplo_app_http_requests",
            "Requests the proxy answered for the app, by status class.",
            labels=["app", "project", "code_class"],
        )
        duration = Metric(
            "diplo_app_http_request_duration_seconds",
            "Response time through the proxy (quantiles over the collector's last interval).",
            "summary",
        )
        for app in sorted(set(window) | set(totals)):
            total = totals.get(app)
            project = total.project if total else window[app][0]
            labels = {"app": app, "project": project}
            if total is not None:
                for code_class, count in total.by_class.items():
                    requests.add_metric([app, project, code_class], count)
            if app in window:
                sample = window[app][1]
                answered = sample.requests > 0
                for q, ms in (
                    ("0.5", sample.p50_ms),
                    ("0.95", sample.p95_ms),
                    ("0.99", sample.p99_ms),
                ):
                    value = ms / 1000.0 if answered else math.nan
                    duration.add_sample(duration.name, {**labels, "quantile": q}, value)
            if total is not None:
                duration.add_sample(f"{duration.name}_count", labels, total.count)
                duration.add_sample(f"{duration.name}_sum", labels, total.duration_seconds)
        yield requests
        yield duration

    def _host(self) -> Iterator[Metric]:
        host = self.collector.host
        if host is None:
            return
        yield GaugeMetricFamily(
            "diplo_host_memory_total_bytes", "The host's memory.", value=host.memory_total_bytes
        )
        yield GaugeMetricFamily(
            "diplo_host_memory_available_bytes",
            "Memory the host can give without swapping.",
            value=host.memory_available_bytes,
        )
        load = GaugeMetricFamily("diplo_host_load", "Load average.", labels=["period"])
        for period, value in zip(("1m", "5m", "15m"), host.load, strict=True):
            load.add_metric([period], value)
        yield load
        if host.disk_total_bytes is not None and host.disk_free_bytes is not None:
            yield GaugeMetricFamily(
                "diplo_host_docker_disk_total_bytes",
                "Size of the disk of Docker's data root.",
                value=host.disk_total_bytes,
            )
            yield GaugeMetricFamily(
                "diplo_host_docker_disk_free_bytes",
                "Free bytes on the disk of Docker's data root.",
                value=host.disk_free_bytes,
            )
        yield GaugeMetricFamily(
            "diplo_metrics_cycle_seconds",
            "Wall time of the collector's last cycle.",
            value=self.collector.last_cycle_seconds,
        )
