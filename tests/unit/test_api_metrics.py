"""The metrics routes as a client sees them: an app's series, the host in /system/stats,
the newest usage in /system/top, the Prometheus exposition (parsed with prometheus_client's
parser) with Diplo's own counters and API latency, and who may read them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from diplo.api.app import asgi_app

from .apiworld import VIEWER, World, home_world, tokens


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from home_world(tmp_path, monkeypatch, tokens())


@pytest.fixture
def client(world: World) -> TestClient:
    return world.client(headers=VIEWER)


def test_an_apps_series_has_one_value_per_timestamp_for_each_metric(client: TestClient):
    resp = client.get("/apps/web/metrics", params={"since": "1h"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["app"] == "web" and body["since"] == 3600
    assert body["step"] == 10 and body["resolution"] == 10
    assert len(body["timestamps"]) == 1  # the first cycle has no rate: one point written
    metrics = body["metrics"]
    assert metrics["cpu_percent"] == [15.0]
    assert metrics["cpu_limit_percent"] == [30.0]  # of its half-core limit
    assert metrics["memory_bytes"] == [40 << 20]
    assert metrics["memory_limit_bytes"] == [100 << 20]
    assert metrics["latency_ms"] == [3.0]
    # through the proxy: 20 requests in 10 s, 1 to 20 ms, 2 answered 503
    assert metrics["requests_per_second"] == [2.0]
    assert (metrics["p50_ms"], metrics["p95_ms"], metrics["p99_ms"]) == ([10.0], [19.0], [20.0])
    assert metrics["error_ratio"] == [0.1]
    assert all(len(v) == 1 for v in metrics.values())


def test_an_app_with_no_samples_has_an_empty_series(client: TestClient):
    body = client.get("/apps/worker/metrics", params={"since": "30m", "step": "1m"}).json()
    assert body["timestamps"] == [] and body["step"] == 60
    assert body["metrics"]["cpu_percent"] == []


@pytest.mark.parametrize(
    "params", [{"since": "an hour"}, {"since": "0h"}, {"step": "-1m"}, {"since": "1w"}]
)
def test_a_bad_duration_is_a_422(client: TestClient, params: dict[str, str]):
    resp = client.get("/apps/web/metrics", params=params)
    assert resp.status_code == 422 and resp.json()["title"] == "invalid request"


def test_an_unknown_app_is_a_404(client: TestClient):
    assert client.get("/apps/nope/metrics").status_code == 404


def test_system_stats_keep_their_keys_and_add_the_host(client: TestClient):
    body = client.get("/system/stats").json()
    assert {"apps", "ports_in_use", "disk_free_bytes", "uptime_s", "engine_ok"} <= set(body)
    host = body["host"]
    assert host["cores"] == 2 and host["load"] == {"1m": 0.5, "5m": 0.25, "15m": 0.1}
    assert host["memory"]["used_bytes"] == 1_000_000 * 1024
    assert host["docker_disk"]["total_bytes"] > 0
    assert body["metrics"]["enabled"] is True and body["metrics"]["containers"] == 1
    assert body["metrics"]["history_bytes"] > 0


def test_the_host_history_has_the_hosts_figures(client: TestClient):
    resp = client.get("/system/metrics", params={"since": "10m", "step": "1m"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["since"] == 600 and body["step"] == 60 and body["resolution"] == 10
    assert len(body["timestamps"]) == 1  # two cycles within the same minute
    m = body["metrics"]
    assert m["memory_used_bytes"] == [1_000_000 * 1024] and m["memory_total_bytes"][0] > 0
    assert (m["load_1m"], m["load_5m"], m["load_15m"]) == ([0.5], [0.25], [0.1])
    assert m["docker_disk_total_bytes"][0] > 0 and m["docker_disk_free_bytes"][0] > 0
    assert m["cpu_percent"] == [None]  # the kernel tree's counters did not move
    assert client.get("/system/metrics", params={"since": "soon"}).status_code == 422


def test_system_top_adds_up_each_app(client: TestClient):
    body = client.get("/system/top").json()
    (web,) = body["apps"]
    assert web["app"] == "web" and web["replicas"] == 1
    assert web["cpu_percent"] == 15.0 and web["memory_percent"] == 40.0
    assert web["requests_per_second"] == 2.0 and web["error_ratio"] == 0.1
    assert web["p99_ms"] == 20.0
    assert body["interval_s"] == 10 and body["host"]["cores"] == 2


def test_the_prometheus_exposition_has_the_containers_and_diplos_own(
    world: World, client: TestClient
):
    client.get("/apps/web")  # timed as route /apps/{app}
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    (mem,) = families["diplo_container_memory_bytes"].samples
    assert mem.labels == {"app": "web", "project": "shop", "replica": "1"}
    assert mem.value == 40 << 20
    # build_world reconciled both apps once: two creates, two reconciles
    deploys = {tuple(s.labels.values()): s.value for s in families["diplo_deploys"].samples}
    assert deploys[("create", "ok")] == 2
    reconciles = {s.labels["result"]: s.value for s in families["diplo_reconciles"].samples}
    assert reconciles["ok"] == 2
    api = families["diplo_api_request_duration_seconds"].samples
    routes = {s.labels["route"] for s in api if s.name.endswith("_count")}
    assert "/apps/{app}" in routes and "/apps/web" not in routes
    assert families["diplo_workqueue_depth"].samples[0].value >= 0


def test_the_prometheus_exposition_has_each_proxied_apps_requests(client: TestClient):
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    requests = families["diplo_app_http_requests"]
    assert requests.type == "counter"
    by_class = {s.labels["code_class"]: s.value for s in requests.samples}
    assert by_class == {"1xx": 0, "2xx": 18, "3xx": 0, "4xx": 0, "5xx": 2}
    assert {s.name for s in requests.samples} == {"diplo_app_http_requests_total"}
    assert all(s.labels["app"] == "web" and s.labels["project"] == "shop" for s in requests.samples)
    duration = families["diplo_app_http_request_duration_seconds"]
    assert duration.type == "summary"
    got = {(s.name, s.labels.get("quantile")): s.value for s in duration.samples}
    base = "diplo_app_http_request_duration_seconds"
    assert got[(base, "0.5")] == 0.01 and got[(base, "0.99")] == 0.02
    assert got[(f"{base}_count", None)] == 20
    assert got[(f"{base}_sum", None)] == pytest.approx(0.21)  # 1 + 2 + ... + 20 ms


def test_metrics_need_the_token_when_the_operator_chose_one(world: World):
    anonymous = world.client()
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/apps/web/metrics").status_code == 401
    assert world.client(headers=VIEWER).get("/metrics").status_code == 200


def test_without_a_collector_series_are_a_503_and_the_rest_still_answers(world: World):
    api = asgi_app(world.controller, tokens())
    client = TestClient(api, base_url="http://localhost", headers=VIEWER)
    resp = client.get("/apps/web/metrics")
    assert resp.status_code == 503 and resp.json()["title"] == "metrics are off"
    assert client.get("/system/metrics").status_code == 503
    assert client.get("/system/stats").json()["host"] is None
    assert client.get("/system/top").json()["apps"] == []
    assert "diplo_reconciles_total" in client.get("/metrics").text
