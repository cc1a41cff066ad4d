"""Bounds on what a client can make the API hold (issue 10 point 6; review H7, L8, M2, M8,
L3, L4): log-follow and event streams are capped and never starve /healthz or the POSTs,
webhook bodies are bounded and rate-limited, a busy app is a 409, X-Forwarded-For is not
believed unless told, and the API can serve TLS."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from click.testing import CliRunner

from diplo.api import limits
from diplo.api.app import FOLLOWS, SUBSCRIBERS, asgi_app
from diplo.api.gitops import MAX_HOOK_BODY
from diplo.api.limits import RateLimiter
from diplo.cli import main
from diplo.controller import controller as controller_module
from diplo.controller.sources import GitSource
from diplo.serve import Exposure, server_config
from diplo.webhooks import WebhookSecrets

from .apiworld import (
    AUTH,
    IMAGE_ID,
    VIEWER,
    FollowingRuntime,
    World,
    app_specs,
    home_world,
    serving,
    tokens,
)
from .certs import self_signed

HOOK_SECRET = "hook-secret-for-the-api-tests"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    engine = FollowingRuntime(images={"busybox:latest": IMAGE_ID})
    yield from home_world(tmp_path, monkeypatch, tokens(), engine)


def open_stream(base: str, path: str, source: str, headers: dict[str, str]) -> Any:
    """A GET whose answer head is read and whose body is left open, from address `source`
    (any 127.x.y.z is this machine: one client per address)."""
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    conn.request("GET", path, headers={**headers, "Host": "localhost"})
    resp = conn.getresponse()
    return conn, resp


def timed(fn: Any) -> tuple[float, Any]:
    start = time.monotonic()
    out = fn()
    return time.monotonic() - start, out


# --- streams -----------------------------------------------------------------------------


def test_open_follow_streams_never_starve_healthz_or_posts(world: World):
    """More open follows than starlette's 40 shared threads (the review's 40 froze the
    API); each client gets 8 and the 9th is a 429; closed streams give their slots back
    and their engine streams are closed."""
    per_client, _ = FOLLOWS
    engine: FollowingRuntime = world.engine  # type: ignore[assignment]
    world.container("web").logs.append("hello")
    with serving(world.api) as base, httpx.Client(base_url=base, headers=AUTH) as client:
        client.headers["Host"] = "localhost"
        streams = []
        for i in range(6):  # 6 clients x 8 = 48 follows
            for _ in range(per_client):
                conn, resp = open_stream(
                    base, "/apps/web/logs?follow=true", f"127.0.0.{i + 2}", VIEWER
                )
                assert resp.status == 200
                assert resp.read1(100) == b"hello\n"
                streams.append(conn)
        assert engine.open_follows() == 48
        conn, resp = open_stream(base, "/apps/web/logs?follow=true", "127.0.0.2", VIEWER)
        assert resp.status == 429 and resp.getheader("Retry-After")
        assert "at most 8 open log follows per client" in json.loads(resp.read())["detail"]
        conn.close()
        for _ in range(5):
            took, answer = timed(lambda: client.get("/healthz", timeout=5))
            assert answer.status_code == 200 and took < 1.0
            took, answer = timed(lambda: client.post("/apps/web/sync", timeout=5))
            assert answer.status_code == 200 and took < 1.0
        for conn in streams:
            conn.close()
        deadline = time.monotonic() + 5
        while engine.open_follows():  # each gone client's engine stream is closed
            assert time.monotonic() < deadline, f"{engine.open_follows()} follows left open"
            time.sleep(0.02)
        conn, resp = open_stream(base, "/apps/web/logs?follow=true", "127.0.0.2", VIEWER)
        assert resp.status == 200  # the slots came back
        conn.close()


def test_follows_and_event_streams_are_capped_in_all(world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("diplo.api.app.FOLLOWS", (8, 3))
    monkeypatch.setattr("diplo.api.app.SUBSCRIBERS", (2, 3))
    api = asgi_app(world.controller, tokens())
    with serving(api) as base:
        open_ = []
        for i in range(3):
            open_.append(open_stream(base, "/apps/web/logs?follow=true", f"127.0.1.{i}", AUTH))
            assert open_[-1][1].status == 200
        conn, resp = open_stream(base, "/apps/web/logs?follow=true", "127.0.1.9", AUTH)
        assert resp.status == 429
        assert json.loads(resp.read())["detail"] == "at most 3 open log follows on this server"
        conn.close()
        for _ in range(2):
            open_.append(open_stream(base, "/events", "127.0.2.1", AUTH))
            assert open_[-1][1].status == 200
        conn, resp = open_stream(base, "/events", "127.0.2.1", AUTH)
        assert resp.status == 429 and resp.getheader("Retry-After") == "10"
        assert json.loads(resp.read())["detail"] == "at most 2 open event streams per client"
        conn.close()
        open_.append(open_stream(base, "/events", "127.0.2.2", AUTH))
        assert open_[-1][1].status == 200
        conn, resp = open_stream(base, "/events", "127.0.2.3", AUTH)
        assert resp.status == 429
        conn.close()
        assert len(world.controller.bus._subs) == 3
        for conn, _ in open_:
            conn.close()
        deadline = time.monotonic() + 5
        while world.controller.bus._subs:  # subscribers leave with their clients
            assert time.monotonic() < deadline, "event subscribers left behind"
            time.sleep(0.05)


def test_the_defaults_of_the_stream_caps():
    assert FOLLOWS == (8, 64) and SUBSCRIBERS == (8, 64)


# --- webhooks ----------------------------------------------------------------------------


@pytest.fixture
def hooked(world: World) -> Any:
    """The API with a repository source and a webhook secret."""
    world.controller.sources.append(
        GitSource("file:///nowhere", "main", "", world.folder.parent / "home")
    )
    return asgi_app(world.controller, tokens(), webhook_secrets=WebhookSecrets.shared(HOOK_SECRET))


def signed(body: bytes) -> dict[str, str]:
    sig = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig, "Host": "localhost"}


def test_a_webhook_body_over_the_limit_is_413_before_it_is_read(hooked: Any):
    from fastapi.testclient import TestClient

    client = TestClient(hooked, base_url="http://localhost")
    big = b"x" * (MAX_HOOK_BODY + 1)
    resp = client.post("/hooks/git", content=big, headers=signed(big))
    assert resp.status_code == 413 and resp.json()["title"] == "body too large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(MAX_HOOK_BODY // 65536 + 2):
            yield b"y" * 65536

    resp = client.post("/hooks/git", content=chunked(), headers=signed(b""))
    assert resp.status_code == 413
    ok = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
    assert client.post("/hooks/git", content=ok, headers=signed(ok)).status_code == 202


def test_a_declared_oversize_webhook_is_refused_without_reading_it(hooked: Any):
    """Over a real socket: the answer comes although the body is never sent."""
    with serving(hooked) as base:
        port = int(base.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.putrequest("POST", "/hooks/git", skip_host=True)
        for name, value in {**signed(b""), "Content-Length": str(1 << 30)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        conn.close()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json at all", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"payload=%7Bbroken", "application/x-www-form-urlencoded"),
        (b"[" * 100000 + b"]" * 100000, "application/json"),
    ],
)
def test_a_signed_webhook_that_is_not_a_json_object_is_400(
    hooked: Any, body: bytes, content_type: str
):
    from fastapi.testclient import TestClient

    client = TestClient(hooked, base_url="http://localhost")
    resp = client.post(
        "/hooks/git", content=body, headers={**signed(body), "Content-Type": content_type}
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["title"] == "unreadable webhook"


def test_webhooks_are_rate_limited_and_rejections_logged_once_a_minute(hooked: Any):
    from fastapi.testclient import TestClient

    client = TestClient(hooked, base_url="http://localhost")
    forged = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}
    with structlog.testing.capture_logs() as logs:
        codes = [
            client.post("/hooks/git", content=b"{}", headers=forged).status_code for _ in range(40)
        ]
    assert codes[:30] == [401] * 30 and codes[30:] == [429] * 10
    rejected = [e for e in logs if e["event"] == "webhook.rejected"]
    assert len(rejected) == 1 and rejected[0]["status"] == 401
    resp = client.post("/hooks/git", content=b"{}", headers=forged)
    assert resp.headers["retry-after"] == "60"
    other = TestClient(hooked, base_url="http://localhost", client=("10.9.9.9", 1))
    assert other.post("/hooks/git", content=b"{}", headers=forged).status_code == 401


# --- a busy app --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/apps/web/rollback", {}),
        ("/apps/web/sync?resume=true", None),
        ("/apps/web/restart", None),
    ],
)
def test_a_command_on_an_app_a_deploy_holds_is_409_with_retry_after(
    world: World, path: str, body: dict[str, Any] | None
):
    specs = app_specs()
    specs["web"]["env"]["MODE"] = "staging"
    world.write(specs)
    world.controller.handle("web")  # a second deployment: something to roll back to
    client = world.client()
    with world.controller.ctx.locks.hold(["web"]):  # a deploy in flight
        took, resp = timed(lambda: client.post(path, headers=AUTH, json=body))
    assert resp.status_code == 409, resp.text
    assert resp.headers["retry-after"] == "5"
    problem = resp.json()
    assert problem["title"] == "app is busy" and "try again" in problem["detail"]
    assert took < controller_module.COMMAND_LOCK_WAIT + 1.5
    assert controller_module.COMMAND_LOCK_WAIT <= 2.0


# --- the rate limiter --------------------------------------------------------------------


def test_the_rate_limiter_prunes_idle_clients_and_bounds_its_table(
    monkeypatch: pytest.MonkeyPatch,
):
    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    limiter = RateLimiter(2, 10.0, max_clients=100)
    for i in range(1000):
        assert limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter.hits) <= 100
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    now[0] += 11
    assert limiter.allow("b")
    assert set(limiter.hits) == {"b"}  # the idle ones went
    assert limiter.allow("a")  # its window passed


def test_x_forwarded_for_does_not_dodge_the_rate_limit(world: World):
    with serving(world.api) as base, httpx.Client(base_url=base) as client:
        codes = [
            client.post(
                "/apps/web/cancel",
                headers={**AUTH, "Host": "localhost", "X-Forwarded-For": f"10.1.0.{i}"},
            ).status_code
            for i in range(21)
        ]
    assert codes[:20] == [200] * 20 and codes[20] == 429


def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only():
    default = server_config(object(), "127.0.0.1", 7700, Exposure())
    assert default.proxy_headers is False
    proxied = server_config(object(), "127.0.0.1", 7700, Exposure(trusted_proxies=["10.0.0.1"]))
    assert proxied.proxy_headers is True and proxied.forwarded_allow_ips == ["10.0.0.1"]


# --- TLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "cert.pem"], "give both --tls-cert FILE and --tls-key FILE"),
        (["--tls-key", "key.pem"], "give both --tls-cert FILE and --tls-key FILE"),
        (
            ["--tls-cert", "missing.pem", "--tls-key", "key.pem"],
            "--tls-cert missing.pem: no such file",
        ),
        (
            ["--tls-cert", "cert.pem", "--tls-key", "missing.pem"],
            "--tls-key missing.pem: no such file",
        ),
        (["--allowed-host", "http://x"], "give a host name or address"),
        (["--allowed-host", "x:80"], "give a host name or address"),
        (["--trusted-proxy", "proxy.lan"], "--trusted-proxy 'proxy.lan': give an IP address"),
    ],
)
def test_serve_checks_its_exposure_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    (tmp_path / "m").mkdir()
    result = CliRunner().invoke(main, ["serve", "--manifests", "m", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_api_serves_tls_with_the_given_certificate(world: World, tmp_path: Path):
    from diplo.cli.client import RemoteOps

    cert, key = self_signed(tmp_path)
    with serving(world.api, Exposure(tls=(cert, key))) as base:
        assert base.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=base, verify=context) as client:
            resp = client.get("/apps", headers={**VIEWER, "Host": "localhost"})
            assert resp.status_code == 200 and resp.json()["apps"]
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
            httpx.get(base + "/healthz")
        # The CLI trusts the certificate serve.json names for its URL.
        assert RemoteOps(base, str(cert)).get("/healthz")["status"] == "ok"


def test_serve_json_records_an_https_url_with_tls(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    front_calls: list[dict[str, Any]],
):
    import threading as threading_module

    import diplo.serve as serve_module

    recorded: list[dict[str, Any]] = []
    configs: list[Any] = []

    def run(self: Any, sockets: Any = None) -> None:  # instead of serving: what the CLI finds
        configs.append(self.config)
        recorded.append(json.loads((tmp_path / "home" / "serve.json").read_text()))

    monkeypatch.setattr(serve_module.uvicorn.Server, "run", run)
    monkeypatch.setattr(serve_module.signal, "signal", lambda *_: None)
    monkeypatch.setattr(serve_module, "_tidy_heap", threading_module.Event)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    serve_module.run_server(
        world.controller.ctx,
        world.controller.sources,
        "127.0.0.1",
        7700,
        resync=60,
        workers=1,
        exposure=Exposure(tls=(cert, key)),
    )
    (info,) = recorded
    assert info["url"] == "https://127.0.0.1:7700" and info["tls_cert"] == str(cert)
    # TLS is the front's: the API behind it serves plain HTTP on its private socket.
    (front,) = front_calls
    assert front["exposure"].tls == (cert, key)
    assert configs[0].ssl_certfile is None and configs[0].proxy_headers is False
    assert not (tmp_path / "home" / "serve.json").exists()  # removed on the way out
