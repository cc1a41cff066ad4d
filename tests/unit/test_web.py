"""The dashboard over the in-memory engine: pages, sign-in, CSRF, actions and /ws, as a
browser sees them (HTML and cookies); the real browser drives it in
tests/integration/test_dashboard.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from diplo.api.app import asgi_app
from diplo.serve import firing_of
from diplo.web import add_dashboard
from diplo.web.sessions import COOKIE

from .apiworld import ACCESS, HOST, SECRET, TOKEN, VIEWER_TOKEN, World, build_world

ORIGIN = f"http://{HOST}"


def dashboard(world: World, alerts: Any = None) -> None:
    world.api = asgi_app(
        world.controller,
        world.access,
        metrics=world.metrics,
        extend=lambda api: add_dashboard(
            api, world.controller, world.access, world.metrics, alerts
        ),
    )


@pytest.fixture
def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    made: list[World] = []

    def make(kind: str, alerts: Any = None) -> World:
        w = build_world(tmp_path / kind, ACCESS[kind]())
        dashboard(w, alerts)
        made.append(w)
        return w

    yield make
    for w in made:
        w.ledger.close()


@pytest.fixture
def tokens(make_world: Any) -> World:
    return make_world("tokens")


@pytest.fixture
def loopback(make_world: Any) -> World:
    return make_world("loopback")


def browser(world: World) -> TestClient:
    return world.client(headers={"origin": ORIGIN})


def csrf_of(html: str) -> str:
    found = re.search(r'data-csrf="([^"]*)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def login_csrf(client: TestClient) -> str:
    """The CSRF token of the sign-in form."""
    form = client.get("/ui/login")
    assert form.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    return csrf.group(1)


def log_in(client: TestClient, token: str, then: str) -> Any:
    """The sign-in form sent with `token`, to go to `then` after; its answer."""
    return client.post(
        "/ui/login",
        data={"csrf": login_csrf(client), "token": token, "next": then},
        follow_redirects=False,
    )


def sign_in(client: TestClient, token: str) -> str:
    """Sign in through the form; the CSRF token of the page it lands on."""
    done = log_in(client, token, "/ui/apps/web")
    assert done.status_code == 303 and done.headers["location"] == "/ui/apps/web"
    return csrf_of(client.get("/ui/apps/web").text)


def test_the_overview_lists_every_app_with_health_and_sync_on_loopback(loopback: World):
    page = browser(loopback).get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for app in ("web", "worker"):
        assert f'id="row-{app}"' in page.text
        assert f'href="/ui/apps/{app}"' in page.text
    assert "Synced" in page.text and "Sign in to act" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert SECRET not in page.text


def test_without_a_session_pages_go_to_the_sign_in_and_fragments_say_401(tokens: World):
    client = browser(tokens)
    page = client.get("/ui/apps/web", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=%2Fui%2Fapps%2Fweb"
    part = client.get("/ui/rows/web", headers={"HX-Request": "true"})
    assert part.status_code == 401 and part.headers["HX-Redirect"].startswith("/ui/login")
    assert client.get("/ui/apps/web/logs", follow_redirects=False).status_code == 303


def test_signing_in_sets_a_strict_httponly_cookie(tokens: World):
    client = browser(tokens)
    sign_in(client, VIEWER_TOKEN)
    cookie = next(c for c in client.cookies.jar if c.name == COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly")
    # (SameSite is checked on the header itself: the jar does not keep it)
    client2 = browser(tokens)
    form = client2.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    done = client2.post(
        "/ui/login", data={"csrf": csrf.group(1), "token": TOKEN}, follow_redirects=False
    )
    header = done.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Secure" not in header
    assert TOKEN not in header


def test_a_wrong_token_or_a_forged_form_signs_nobody_in(tokens: World):
    client = browser(tokens)
    csrf = login_csrf(client)
    wrong = client.post("/ui/login", data={"csrf": csrf, "token": "not-a-token"})
    assert wrong.status_code == 401 and "not one of this server" in wrong.text
    forged = client.post("/ui/login", data={"csrf": "x" * 32, "token": TOKEN})
    assert forged.status_code == 403
    assert COOKIE not in client.cookies
    elsewhere = browser(tokens)
    elsewhere.get("/ui/login")
    away = elsewhere.post(
        "/ui/login",
        data={"csrf": csrf, "token": TOKEN},
        headers={"origin": "http://evil.example"},
    )
    assert away.status_code == 403 and COOKIE not in elsewhere.cookies


def test_a_sign_in_goes_back_only_to_a_path_of_this_server(tokens: World):
    client = browser(tokens)
    done = log_in(client, TOKEN, "//evil.example/x")
    assert done.headers["location"] == "/"


def test_an_admin_action_needs_the_sessions_csrf_token(tokens: World):
    client = browser(tokens)
    csrf = sign_in(client, TOKEN)
    assert 'hx-post="/ui/apps/web/sync"' in client.get("/ui/apps/web").text
    bare = client.post("/ui/apps/web/sync")
    assert bare.status_code == 403 and "CSRF" in bare.text
    assert len(tokens.controller.queue) == 0
    wrong = client.post("/ui/apps/web/sync", headers={"X-CSRF-Token": "x" * 32})
    assert wrong.status_code == 403
    done = client.post("/ui/apps/web/sync", headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200 and "sync queued" in done.text
    assert tokens.controller.queue.get(timeout=0) == "web"


def test_restart_from_the_dashboard_restarts_the_container(tokens: World):
    client = browser(tokens)
    csrf = sign_in(client, TOKEN)
    before = tokens.container("web").id
    done = client.post("/ui/apps/web/restart", data={"csrf": csrf})
    assert done.status_code == 200 and "restarted" in done.text
    assert tokens.container("web").id == before  # the same container, restarted


def test_the_viewer_sees_everything_and_acts_on_nothing(tokens: World):
    client = browser(tokens)
    csrf = sign_in(client, VIEWER_TOKEN)
    page = client.get("/ui/apps/web")
    assert "hx-post" not in page.text and "acts on nothing" in page.text
    refused = client.post("/ui/apps/web/sync", headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403 and "viewer" in refused.text
    assert len(tokens.controller.queue) == 0


def test_on_loopback_without_a_token_nobody_acts_without_signing_in(loopback: World):
    client = browser(loopback)
    assert client.post("/ui/apps/web/sync").status_code == 401
    assert len(loopback.controller.queue) == 0


def test_an_action_from_another_site_is_refused(tokens: World):
    client = browser(tokens)
    csrf = sign_in(client, TOKEN)
    away = client.post(
        "/ui/apps/web/sync",
        headers={"X-CSRF-Token": csrf, "origin": "http://evil.example"},
    )
    assert away.status_code == 403
    assert len(tokens.controller.queue) == 0


def test_signing_out_ends_the_session(tokens: World):
    client = browser(tokens)
    csrf = sign_in(client, TOKEN)
    cookie = client.cookies[COOKIE]
    assert client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    again = browser(tokens)
    again.cookies.set(COOKIE, cookie)
    assert again.get("/", follow_redirects=False).status_code == 303


def test_history_shows_deployments_and_the_diff_between_two(loopback: World):
    specs = {
        "web": {"image": "busybox:latest", "command": ["sleep", "100"]},
        "worker": {"image": "busybox:latest"},
    }
    loopback.write(specs)
    loopback.controller.handle("web")
    new, old = (d.id for d in loopback.ledger.deployments("web", 2))
    client = browser(loopback)
    page = client.get("/ui/apps/web")
    assert f"diff vs {old}" in page.text
    diff = client.get("/ui/apps/web/diff", params={"old": old, "new": new})
    assert diff.status_code == 200
    assert "command" in diff.text and "sleep" in diff.text
    assert SECRET not in diff.text  # env values never show, only their digests


def test_any_two_deployments_can_be_compared(loopback: World):
    for command in (["sleep", "100"], ["sleep", "200"]):
        loopback.write({"web": {"image": "busybox:latest", "command": command}})
        loopback.controller.handle("web")
    ids = [d.id for d in loopback.ledger.deployments("web", 3)]
    client = browser(loopback)
    form = client.get("/ui/apps/web").text
    form = form[form.index('<form class="compare"') :]
    assert all(f'<option value="{i}"' in form for i in ids)
    diff = client.get("/ui/apps/web/diff", params={"old": ids[-1], "new": ids[0]})
    assert f"Deployment {ids[-1]} → {ids[0]}" in diff.text and "200" in diff.text


def test_the_rollback_confirmation_shows_what_would_change(tokens: World):
    tokens.write({"web": {"image": "busybox:latest", "command": ["sleep", "100"]}})
    tokens.controller.handle("web")
    client = browser(tokens)
    sign_in(client, TOKEN)
    confirm = client.get("/ui/apps/web/rollback/1")
    assert "Roll back web to deployment 1?" in confirm.text
    assert "command" in confirm.text and 'name="to" value="1"' in confirm.text


def test_an_unknown_app_page_is_a_404_page(loopback: World):
    page = browser(loopback).get("/ui/apps/nope")
    assert page.status_code == 404 and "no app named" in page.text


def test_the_alerts_panel_shows_what_the_provider_says(make_world: Any):
    firing = [{"rule": "cpu_high", "subject": "web", "since": 1.0, "message": "CPU at 95%"}]
    world = make_world("loopback", lambda: firing)
    page = browser(world).get("/")
    assert "cpu_high" in page.text and "CPU at 95%" in page.text


def test_serve_feeds_the_panel_the_alert_service_s_firing_alerts(make_world: Any):
    world = make_world("loopback")
    dashboard(world, firing_of(world.alerts))  # as serve wires it
    page = browser(world).get("/").text
    panel = page[page.index('id="alerts"') :]
    assert "deploy" in panel and "health gate: timed out" in panel
    assert "worker" not in panel[: panel.index("</section>")]  # its alert was resolved


def test_without_an_alerts_provider_the_panel_says_so(loopback: World):
    assert "No alerting on this server" in browser(loopback).get("/").text


def test_dashboard_routes_stay_out_of_the_openapi_document(loopback: World):
    paths = browser(loopback).get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui") or p == "/ws"]


def test_sparks_and_metrics_come_from_the_history(loopback: World):
    client = browser(loopback)
    sparks = client.get("/ui/sparks").json()
    assert sparks["enabled"] is True and set(sparks["apps"]) == {"web", "worker"}
    series = client.get("/ui/apps/web/metrics", params={"since": "1h"})
    assert series.status_code == 200 and "cpu_percent" in series.json()["metrics"]


# --- /ws ---------------------------------------------------------------------------------

WS = {"host": HOST, "origin": ORIGIN}  # the test client's sockets say `testserver` otherwise


def test_the_socket_pushes_bus_events_and_changed_apps(loopback: World):
    client = browser(loopback)
    with client.websocket_connect("/ws", headers=WS) as ws:
        assert ws.receive_json() == {"type": "hello", "role": "viewer"}
        loopback.controller.bus.publish("deploy.step", "web", step="pull", detail="")
        event = ws.receive_json()
        assert event["type"] == "event" and event["kind"] == "deploy.step"
        assert event["app"] == "web" and event["data"]["step"] == "pull"
        loopback.engine.kill(loopback.container("worker").id)
        loopback.controller.view.refresh(["worker"])
        while (msg := ws.receive_json())["type"] != "apps":
            pass
        assert msg["changed"] == ["worker"]


def test_the_socket_needs_a_session_when_reads_are_not_open(tokens: World):
    with (
        pytest.raises(WebSocketDisconnect),
        browser(tokens).websocket_connect("/ws", headers=WS) as ws,
    ):
        ws.receive_json()
    client = browser(tokens)
    sign_in(client, VIEWER_TOKEN)
    cookie = {"cookie": f"{COOKIE}={client.cookies[COOKIE]}"}  # the jar's domain is HOST
    with client.websocket_connect("/ws", headers={**WS, **cookie}) as ws:
        assert ws.receive_json() == {"type": "hello", "role": "viewer"}


def test_the_socket_refuses_another_sites_page_and_an_unknown_host(loopback: World):
    with (
        pytest.raises(WebSocketDisconnect),
        browser(loopback).websocket_connect(
            "/ws", headers={**WS, "origin": "http://evil.example"}
        ) as ws,
    ):
        ws.receive_json()
    rebound = {"host": "evil.example", "origin": "http://evil.example"}
    with (
        pytest.raises(WebSocketDisconnect),
        browser(loopback).websocket_connect("/ws", headers=rebound) as ws,
    ):
        ws.receive_json()


def test_the_fragments_a_live_page_swaps_in(loopback: World):
    client = browser(loopback)
    assert 'id="row-web"' in client.get("/ui/rows").text
    assert 'id="row-web"' in client.get("/ui/rows/web").text
    assert client.get("/ui/rows/nope").status_code == 404
    assert "Sources" in client.get("/ui/panels/sources").text
    assert "2/2 healthy" in client.get("/ui/panels/host").text
    assert "No alerting" in client.get("/ui/panels/alerts").text
    assert client.get("/ui/panels/nope").status_code == 404
    summary = client.get("/ui/apps/web/part/summary").text
    assert 'id="app-health"' in summary and SECRET not in summary
    assert "Deployments" in client.get("/ui/apps/web/part/history").text
    assert "Recent probes" in client.get("/ui/apps/web/part/probes").text
    assert "No domains" in client.get("/ui/apps/web/part/domains").text
    assert client.get("/ui/apps/web/part/nope").status_code == 404
    assert client.get("/ui/apps/nope/part/summary").status_code == 404


def test_the_log_panel_reads_the_containers_output(loopback: World):
    loopback.container("web").logs.append("hello from web")
    logs = browser(loopback).get("/ui/apps/web/logs", params={"tail": 10})
    assert logs.status_code == 200 and "hello from web" in logs.text
    assert browser(loopback).get("/ui/apps/nope/logs").status_code == 404
