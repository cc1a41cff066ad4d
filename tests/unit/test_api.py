"""The REST API of `diplo serve`, as a client sees it, over the in-memory engine. Every
test runs twice: on loopback without a chosen token (reads open), and with DIPLO_TOKEN and
DIPLO_VIEWER_TOKEN chosen (the `client` then reads with the viewer token)."""

from __future__ import annotations

import gzip
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from diplo import __version__
from diplo.model import redact

from .apiworld import ACCESS, AUTH, SECRET, TOKEN, World, app_specs, home_world

PROBLEM = "application/problem+json"
APP_READS = ("", "/health", "/deployments", "/logs", "/metrics")  # GET /apps/{app}<suffix>
ACTIONS = ("sync", "restart", "cancel")  # POST /apps/{app}/<action>


@pytest.fixture(params=sorted(ACCESS))
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    yield from home_world(tmp_path, monkeypatch, ACCESS[request.param]())


@pytest.fixture
def client(world: World) -> TestClient:
    """A viewer: no token on loopback, else the viewer token (POSTs here pass AUTH)."""
    return world.client(headers=world.read_headers)


def problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 9457 body of an error answer, after checking its status and type."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"]
    return body


def next_event(
    client: TestClient, trigger: Callable[[], object], kind: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Open GET /events, run `trigger`, and return the first event of `kind`. The stream is
    read by a thread, so a missing event fails after `timeout` rather than hanging."""
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    with client.stream("GET", "/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")

        def read() -> None:
            event: dict[str, Any] = {}
            try:
                for line in resp.iter_lines():
                    if not line:
                        if "event" in event:
                            events.put(event)
                        event = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        event[field] = value.strip()
            except Exception:  # the stream closes when the test is done with it
                return

        threading.Thread(target=read, daemon=True).start()
        trigger()  # the handler subscribed before the response started: nothing is missed
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} event within {timeout}s"
            try:
                event = events.get(timeout=left)
            except queue.Empty:
                continue
            if event["event"] == kind:
                return event


# --- reads -------------------------------------------------------------------------------


def test_healthz_reports_the_controller(client: TestClient):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["engine"] is True and body["manifest_ok"] is True
    assert body["version"] == __version__
    assert body["last_resync"] == pytest.approx(time.time(), abs=60)


def test_apps_lists_every_app_and_the_manifest_state(world: World, client: TestClient):
    resp = client.get("/apps")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert [a["app"] for a in body["apps"]] == ["web", "worker"]
    for row in body["apps"]:
        assert row["state"] == "running" and row["health"] == "healthy"
        assert row["in_sync"] is True and row["last_error"] is None
        assert row["last_deployment"]["result"] == "succeeded"
        assert "spec" not in row and "containers" not in row  # GET /apps/{app} has those
    assert body["manifest"] == {
        "ok": True,
        "error": None,
        "issues": [],
        "files": [str(world.folder / "diplo.yaml")],
    }


def test_one_app_shows_its_spec_with_env_digests_and_its_container(client: TestClient):
    resp = client.get("/apps/web")
    assert resp.status_code == 200
    body = resp.json()
    assert body["app"] == "web" and body["project"] == "shop"
    assert body["state"] == "running" and body["running"] == 1 and body["reconciling"] is False
    assert body["spec"]["env"] == {"API_KEY": redact(SECRET), "MODE": redact("prod")}
    assert body["spec"]["ports"] == ["8080/tcp"]
    (port,) = body["ports"]
    assert port.endswith("->8080/tcp")
    (container,) = body["containers"]
    assert container["name"] == "shop-web-1" and container["state"] == "running"


def test_health_shows_the_latest_probes_newest_first(world: World, client: TestClient):
    for i in range(3):
        world.ledger.record_probe("web", True, "healthy", f"HTTP 200 #{i}", 1.5)
    resp = client.get("/apps/web/health", params={"last": 2})
    assert resp.status_code == 200
    body = resp.json()
    assert body["app"] == "web" and body["health"] == "healthy" and body["detail"]
    assert [p["detail"] for p in body["probes"]] == ["HTTP 200 #2", "HTTP 200 #1"]
    assert body["probes"][0]["ok"] == 1 and body["probes"][0]["latency_ms"] == 1.5


def test_deployments_newest_first_and_limited(world: World, client: TestClient):
    specs = app_specs()
    specs["web"]["env"]["MODE"] = "staging"
    world.write(specs)
    world.controller.handle("web")
    resp = client.get("/apps/web/deployments")
    assert resp.status_code == 200
    deps = resp.json()["deployments"]
    assert [(d["revision"], d["result"]) for d in deps] == [(2, "succeeded"), (1, "succeeded")]
    assert all(d["app"] == "web" and d["project"] == "shop" for d in deps)
    # Internal columns stay in the ledger (the record of the app is for rollbacks).
    assert not {"record_json", "pid", "cancel_requested"} & set(deps[0])
    resp = client.get("/apps/web/deployments", params={"limit": 1})
    assert [d["revision"] for d in resp.json()["deployments"]] == [2]


def test_logs_are_the_container_output_as_text(world: World, client: TestClient):
    world.container("web").logs.extend(f"line {i}" for i in range(1, 6))
    resp = client.get("/apps/web/logs", params={"tail": 2})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text == "line 4\nline 5\n"
    assert client.get("/apps/web/logs").text.splitlines() == [f"line {i}" for i in range(1, 6)]


def test_logs_of_an_app_without_a_container_are_a_404_problem(world: World, client: TestClient):
    world.engine.remove(world.container("worker").id)  # still desired, but gone
    body = problem(client.get("/apps/worker/logs"), 404)
    assert body["title"] == "no logs" and "no container for app 'worker'" in body["detail"]


def test_events_stream_a_restart(client: TestClient):
    def restart() -> None:
        assert client.post("/apps/web/restart", headers=AUTH).status_code == 200

    event = next_event(client, restart, "app.restarted")
    assert int(event["id"]) >= 1
    data = json.loads(event["data"])
    assert data["app"] == "web" and data["reason"] == "restarted through the API"
    assert data["at"] == pytest.approx(time.time(), abs=60)


def test_sync_queues_a_reconcile_whose_deploy_is_streamed(world: World, client: TestClient):
    specs = app_specs()
    specs["worker"]["command"] = ["sleep", "3600"]
    world.write(specs)  # loaded, not yet deployed

    def sync_and_work() -> None:
        resp = client.post("/apps/worker/sync", headers=AUTH)
        assert resp.json() == {"app": "worker", "accepted": True, "detail": "reconcile queued"}
        key = world.controller.queue.get(timeout=1)  # what a controller worker does
        assert key == "worker"
        world.controller.handle(key)
        world.controller.queue.done(key)

    event = next_event(client, sync_and_work, "deploy.succeeded")
    assert json.loads(event["data"])["app"] == "worker"
    assert client.get("/apps/worker").json()["spec"]["command"] == ["sleep", "3600"]


def test_system_stats_count_apps_and_ports(client: TestClient):
    resp = client.get("/system/stats")
    assert resp.status_code == 200
    body = resp.json()
    assert body["apps"] == {"total": 2, "healthy": 2, "failing": 0}
    assert body["ports_in_use"] == 1
    assert body["disk_free_bytes"] > 0 and body["uptime_s"] >= 0
    assert body["engine_ok"] is True


def test_openapi_documents_every_route_and_its_problems(client: TestClient):
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["info"]["title"] == "Diplo" and doc["info"]["version"] == __version__
    paths = doc["paths"]
    for path in ("/healthz", "/apps", "/events", "/system/stats"):
        assert "get" in paths[path]
    for suffix in APP_READS:
        responses = paths["/apps/{app}" + suffix]["get"]["responses"]
        assert {"200", "404", "422"} <= set(responses)
        assert PROBLEM in responses["404"]["content"]
    for action in ACTIONS:
        responses = paths[f"/apps/{{app}}/{action}"]["post"]["responses"]
        assert {"200", "401", "403", "404", "422", "429"} <= set(responses)
    assert "text/plain" in paths["/apps/{app}/logs"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in paths["/events"]["get"]["responses"]["200"]["content"]


def test_docs_page_loads_the_openapi_document(client: TestClient):
    resp = client.get("/docs")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in resp.text and "/openapi.json" in resp.text


# --- writes: token, rate limit -----------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_post_without_a_token_is_401_and_changes_nothing(world: World, action: str):
    client = world.client()
    world.engine.calls.clear()
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}):
        resp = client.post(f"/apps/web/{action}", headers=headers)
        body = problem(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in body["detail"]
    assert world.engine.calls == [] and world.controller.queue.get(timeout=0) is None


@pytest.mark.parametrize("action", ACTIONS)
def test_post_with_a_wrong_token_is_403_and_changes_nothing(
    world: World, client: TestClient, action: str
):
    world.engine.calls.clear()
    for token in ("wrong", TOKEN[:-1], TOKEN + "x"):
        resp = client.post(f"/apps/web/{action}", headers={"Authorization": f"Bearer {token}"})
        assert problem(resp, 403)["title"] == "invalid token"
    assert world.engine.calls == [] and world.controller.queue.get(timeout=0) is None


def test_sync_with_the_token_queues_the_app(world: World, client: TestClient):
    resp = client.post("/apps/web/sync", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status_code == 200
    assert resp.json() == {"app": "web", "accepted": True, "detail": "reconcile queued"}
    assert world.controller.queue.get(timeout=0) == "web"


def test_restart_with_the_token_restarts_the_container(world: World, client: TestClient):
    world.engine.calls.clear()
    resp = client.post("/apps/web/restart", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json() == {"app": "web", "accepted": True, "detail": "restarted"}
    cid = world.container("web").id
    assert world.engine.calls == [("stop", cid), ("start", cid)]
    assert [e.kind for e in world.ledger.events("web")].count("app.restarted") == 1


def test_restart_without_a_container_is_not_accepted(world: World, client: TestClient):
    world.engine.remove(world.container("worker").id)
    resp = client.post("/apps/worker/restart", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json() == {"app": "worker", "accepted": False, "detail": "no container to restart"}


def test_cancel_without_a_deploy_in_flight_is_not_accepted(client: TestClient):
    resp = client.post("/apps/web/cancel", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json() == {"app": "web", "accepted": False, "detail": "no deploy in flight"}


def test_cancel_stops_a_deploy_in_flight_and_keeps_the_running_revision(
    world: World, client: TestClient
):
    (world.folder / "web").mkdir()
    (world.folder / "web" / "Dockerfile").write_text("FROM busybox:latest\n")
    specs = app_specs()
    specs["web"].update(image="shop/web:dev", build="./web")
    world.engine.slow_build.add("shop/web:dev")  # builds until stopped
    world.write(specs)
    old = world.container("web").id
    deploy = threading.Thread(target=world.controller.handle, args=("web",), daemon=True)
    deploy.start()
    deadline = time.monotonic() + 5
    while "web" not in world.controller.inflight:
        assert time.monotonic() < deadline, "the deploy did not start"
        time.sleep(0.01)
    resp = client.post("/apps/web/cancel", headers=AUTH)
    assert resp.json() == {"app": "web", "accepted": True, "detail": "cancel requested"}
    deploy.join(5)
    assert not deploy.is_alive()
    deps = client.get("/apps/web/deployments").json()["deployments"]
    assert deps[0]["result"] == "cancelled" and deps[0]["step"] == "build"
    assert world.container("web").id == old and world.container("web").state == "running"
    assert client.get("/apps/web").json()["state"] == "running"


def test_posts_are_rate_limited_per_client(world: World, client: TestClient):
    for _ in range(20):
        assert client.post("/apps/web/cancel", headers=AUTH).status_code == 200
    resp = client.post("/apps/web/cancel", headers=AUTH)
    assert problem(resp, 429)["detail"] == "at most 20 per 10s"
    assert resp.headers["retry-after"] == "10"
    assert problem(client.post("/apps/web/sync", headers=AUTH), 429)  # every POST counts
    assert client.get("/apps/web").status_code == 200  # reads are not limited
    other = world.client(host="10.0.0.2")
    assert other.post("/apps/web/cancel", headers=AUTH).status_code == 200


def test_token_guesses_count_against_the_rate_limit(client: TestClient):
    for i in range(20):
        guess = {"Authorization": f"Bearer guess-{i}"}
        assert client.post("/apps/web/sync", headers=guess).status_code == 403
    problem(client.post("/apps/web/sync", headers=AUTH), 429)


# --- unknown apps, invalid input ---------------------------------------------------------


@pytest.mark.parametrize("suffix", APP_READS)
def test_unknown_app_read_is_a_404_problem(client: TestClient, suffix: str):
    body = problem(client.get(f"/apps/nope{suffix}"), 404)
    assert body == {
        "type": "about:blank",
        "title": "no such app",
        "status": 404,
        "detail": "no app named 'nope' on this host",
    }


@pytest.mark.parametrize("action", ACTIONS)
def test_unknown_app_post_is_a_404_problem(client: TestClient, action: str):
    body = problem(client.post(f"/apps/nope/{action}", headers=AUTH), 404)
    assert body["detail"] == "no app named 'nope' on this host"


def test_unknown_path_or_method_is_a_problem(client: TestClient):
    problem(client.get("/nowhere"), 404)
    resp = client.delete("/apps/web")
    problem(resp, 405)
    assert resp.headers["allow"] == "GET"


BAD_NAMES = [
    pytest.param(name, id=name if len(name) < 20 else f"{len(name)} chars")
    for name in ("Bad_Name!", "a" * 64, "a" * 100, "UPPER", "-web", "web-", "w.b", "wéb")
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("suffix", APP_READS)
def test_invalid_app_name_in_a_read_is_a_422_problem(client: TestClient, name: str, suffix: str):
    body = problem(client.get(f"/apps/{name}{suffix}"), 422)
    assert body["title"] == "invalid request"
    assert [e["loc"] for e in body["errors"]] == [["path", "app"]]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("action", ACTIONS)
def test_invalid_app_name_in_a_post_is_a_422_problem(client: TestClient, name: str, action: str):
    body = problem(client.post(f"/apps/{name}/{action}", headers=AUTH), 422)
    assert [e["loc"] for e in body["errors"]] == [["path", "app"]]


@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("/apps/web/logs", "tail", "-1"),
        ("/apps/web/logs", "tail", "100001"),
        ("/apps/web/logs", "tail", "ten"),
        ("/apps/web/logs", "follow", "maybe"),
        ("/apps/web/deployments", "limit", "0"),
        ("/apps/web/deployments", "limit", "201"),
        ("/apps/web/deployments", "limit", "1.5"),
        ("/apps/web/health", "last", "0"),
        ("/apps/web/health", "last", "51"),
    ],
)
def test_invalid_query_parameter_is_a_422_problem(
    client: TestClient, path: str, param: str, value: str
):
    body = problem(client.get(path, params={param: value}), 422)
    (error,) = body["errors"]
    assert error["loc"] == ["query", param] and error["msg"]


# --- compression, secrets ----------------------------------------------------------------


def test_large_bodies_are_gzipped_when_the_client_asks(client: TestClient):
    plain = client.get("/apps", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert len(plain.content) > 512  # above the middleware's threshold
    with client.stream("GET", "/apps", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["content-encoding"] == "gzip"
        raw = b"".join(resp.iter_raw())
    assert len(raw) < len(plain.content)
    assert json.loads(gzip.decompress(raw)) == plain.json()
    small = client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers  # not worth it below 512 bytes


def test_the_secret_value_is_in_no_response(world: World, client: TestClient):
    world.container("web").logs.append("listening on :8080")
    world.ledger.record_probe("web", True, "healthy", "HTTP 200", 2.0)
    bodies: dict[str, str] = {}

    def get(path: str, **kw: Any) -> httpx.Response:
        resp = client.get(path, **kw)
        bodies[f"GET {path} {kw}"] = resp.text
        return resp

    def post(path: str, host: str, **kw: Any) -> httpx.Response:
        resp = world.client(host).post(path, **kw)  # one client per app: no 429s
        bodies[f"POST {path} {kw}"] = resp.text
        return resp

    for path in ("/healthz", "/apps", "/system/stats", "/openapi.json", "/docs", "/nowhere"):
        get(path)
    for i, name in enumerate(("web", "worker", "nope", "Bad_Name!")):
        for suffix in APP_READS:
            get(f"/apps/{name}{suffix}")
        for action in ACTIONS:
            for headers in ({}, {"Authorization": "Bearer wrong"}, AUTH):
                post(f"/apps/{name}/{action}", f"10.0.0.{i}", headers=headers)
    get("/apps/web/logs", params={"tail": -1})
    get("/apps/web/deployments", params={"limit": 0})
    get("/apps/web/health", params={"last": 1000})

    def restart() -> None:
        assert post("/apps/web/restart", "10.0.1.1", headers=AUTH).status_code == 200

    bodies["GET /events"] = json.dumps(next_event(client, restart, "app.restarted"))
    # The scan sees the env: its key and the digest of its value are there.
    assert "API_KEY" in bodies["GET /apps/web {}"]
    assert redact(SECRET) in bodies["GET /apps/web {}"]
    assert "listening on :8080" in bodies["GET /apps/web/logs {}"]
    leaks = [where for where, text in bodies.items() if SECRET in text]
    assert leaks == []


def test_a_broken_env_value_is_not_quoted_in_the_manifest_error(world: World, client: TestClient):
    specs = app_specs()
    specs["web"]["env"]["API_KEY"] = SECRET + "${oops"  # an unclosed substitution
    event = next_event(client, lambda: world.write(specs), "manifest.invalid")
    assert "unclosed substitution" in json.loads(event["data"])["error"]
    body = client.get("/apps").json()
    assert body["manifest"]["ok"] is False and "unclosed substitution" in body["manifest"]["error"]
    assert SECRET not in json.dumps(body) and SECRET not in event["data"]


def test_get_apps_follows_changes_plain_and_gzipped(world: World, client: TestClient):
    """GET /apps is served from a cached body (and its cached gzip): a change must show
    at once in both."""
    gz = {"Accept-Encoding": "gzip"}
    before = client.get("/apps", headers=gz)
    assert before.headers["content-encoding"] == "gzip" and before.headers["vary"]
    specs = app_specs()
    specs["extra"] = {"image": "busybox:latest"}
    world.write(specs)
    for headers in (gz, {"Accept-Encoding": "identity"}):
        names = [a["app"] for a in client.get("/apps", headers=headers).json()["apps"]]
        assert names == ["extra", "web", "worker"]
    assert client.post("/apps").status_code == 405  # only GET takes the fast path


@pytest.mark.parametrize("to", [0, 2**63])
def test_a_rollback_to_an_impossible_deployment_id_is_invalid(client: TestClient, to: int):
    resp = client.post("/apps/web/rollback", headers=AUTH, json={"to": to})
    body = problem(resp, 422)
    assert body["errors"][0]["loc"] == ["body", "to"]
