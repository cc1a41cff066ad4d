"""Who may use the API (issue 10 point 2; review H1, L4): reads need a token once the
operator chose one (and always off loopback), the viewer token only reads, and a request
whose Host is not a name of this server is refused before anything else (DNS rebinding)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from diplo.api.access import Access
from diplo.api.app import asgi_app
from diplo.cli import main
from diplo.cli.client import RemoteOps
from diplo.errors import InputError
from diplo.serve import access_of

from .apiworld import AUTH, TOKEN, VIEWER, VIEWER_TOKEN, World, build_world, loopback, tokens

READS = ("/apps", "/apps/web", "/apps/web/health", "/apps/web/deployments", "/apps/web/logs")
METRIC_READS = (
    "/apps/web/metrics",
    "/system/metrics",
    "/system/top",
    "/metrics",
)  # /metrics too: see README
READS_ALL = (*READS, *METRIC_READS, "/system/stats", "/events")
POSTS = ("/apps/web/sync", "/apps/web/restart", "/apps/web/cancel", "/apps/web/rollback")
WRONG = {"Authorization": "Bearer " + "x" * 30}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    for name in ("DIPLO_TOKEN", "DIPLO_VIEWER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def chosen(home: Path) -> Iterator[World]:
    """A server whose operator chose DIPLO_TOKEN and DIPLO_VIEWER_TOKEN."""
    w = build_world(home.parent, tokens())
    yield w
    w.ledger.close()


@pytest.fixture
def local(home: Path) -> Iterator[World]:
    """On loopback, with no token chosen."""
    w = build_world(home.parent, loopback())
    yield w
    w.ledger.close()


def get(client: TestClient, path: str, headers: dict[str, str]) -> httpx.Response:
    if path == "/events":  # a stream that never ends: its head is the answer
        with client.stream("GET", path, headers=headers) as resp:
            resp.read() if resp.status_code != 200 else None
            return resp
    return client.get(path, headers=headers)


@pytest.mark.parametrize("path", READS_ALL)
def test_with_chosen_tokens_every_read_needs_one(chosen: World, path: str):
    client = chosen.client()
    resp = get(client, path, {})
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.json()["title"] == "authentication required"
    assert "apps" not in resp.text and "web" not in resp.text.replace("/apps/web", "")
    resp = get(client, path, WRONG)
    assert resp.status_code == 403 and resp.json()["title"] == "invalid token"
    for headers in (VIEWER, AUTH):
        assert get(client, path, headers).status_code == 200


def test_healthz_needs_no_token(chosen: World):
    assert chosen.client().get("/healthz").status_code == 200


def test_the_get_apps_fast_path_checks_the_token_too(chosen: World):
    client = chosen.client()
    gz = {"Accept-Encoding": "gzip"}
    assert client.get("/apps", headers=gz).status_code == 401
    assert client.get("/apps", headers={**gz, **WRONG}).status_code == 403
    resp = client.get("/apps", headers={**gz, **VIEWER})
    assert resp.status_code == 200 and [a["app"] for a in resp.json()["apps"]] == ["web", "worker"]


@pytest.mark.parametrize("path", POSTS)
def test_the_viewer_token_cannot_act(chosen: World, path: str):
    chosen.engine.calls.clear()
    resp = chosen.client().post(path, headers=VIEWER)
    assert resp.status_code == 403
    assert resp.json()["title"] == "read-only token"
    assert chosen.engine.calls == [] and chosen.controller.queue.get(timeout=0) is None


def test_on_loopback_without_a_chosen_token_reads_are_open_and_posts_are_not(local: World):
    client = local.client()
    for path in READS_ALL:
        assert get(client, path, {}).status_code == 200, path
    assert client.post("/apps/web/sync").status_code == 401
    assert client.post("/apps/web/sync", headers=VIEWER).status_code == 403  # no viewer here
    assert client.post("/apps/web/sync", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:7700", "localhost.evil.example", "127.0.0.1.nip.io", ""],
)
def test_a_host_that_is_not_this_server_is_421_before_anything(chosen: World, host: str):
    client = chosen.client()
    chosen.engine.calls.clear()
    for method, path, headers in (
        ("GET", "/healthz", {}),
        ("GET", "/apps", VIEWER),  # the fast path
        ("GET", "/apps/web/logs", AUTH),
        ("POST", "/apps/web/restart", AUTH),
    ):
        resp = client.request(method, path, headers={**headers, "Host": host})
        assert resp.status_code == 421, (method, path, resp.text)
        assert resp.json()["title"] == "unknown host" and "--allowed-host" in resp.json()["detail"]
    assert chosen.engine.calls == []


def test_the_hosts_this_server_answers_to(home: Path):
    world = build_world(home.parent, tokens())
    try:
        on_loopback = world.client()
        for host in ("localhost", "LOCALHOST:7700", "127.0.0.1:7700", "[::1]:7700", "localhost."):
            assert on_loopback.get("/healthz", headers={"Host": host}).status_code == 200, host
        # Listening on every interface: a name must be allowed, any IP address may be used.
        api = asgi_app(world.controller, tokens(), listen_host="0.0.0.0", allowed_hosts=["ci.lan"])
        client = TestClient(api)
        for host in ("ci.lan:7700", "192.168.1.20:7700", "[fe80::1]:7700", "0.0.0.0:7700"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 421
        # Listening on one address: that one, and no other IP address.
        api = asgi_app(world.controller, tokens(), listen_host="10.0.0.5")
        client = TestClient(api)
        assert client.get("/healthz", headers={"Host": "10.0.0.5:7700"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "10.0.0.6:7700"}).status_code == 421
    finally:
        world.ledger.close()


# --- the tokens at start -----------------------------------------------------------------


def test_reads_are_open_only_on_loopback_without_chosen_tokens(
    home: Path, monkeypatch: pytest.MonkeyPatch
):
    assert access_of(home, "127.0.0.1").open_reads is True
    assert (home / "token").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("DIPLO_VIEWER_TOKEN", VIEWER_TOKEN)
    assert access_of(home, "127.0.0.1").open_reads is False
    monkeypatch.setenv("DIPLO_TOKEN", TOKEN)
    access = access_of(home, "0.0.0.0")
    assert access.open_reads is False
    access.check(f"Bearer {TOKEN}", act=True)
    access.check(f"Bearer {VIEWER_TOKEN}", act=False)
    monkeypatch.delenv("DIPLO_TOKEN")
    with pytest.raises(InputError, match="without a token of your choosing"):
        access_of(home, "0.0.0.0")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DIPLO_TOKEN": "short-token"}, "DIPLO_TOKEN is too weak: it has 11 characters"),
        ({"DIPLO_TOKEN": "x" * 23}, "DIPLO_TOKEN is too weak: it has 23 characters"),
        ({"DIPLO_VIEWER_TOKEN": "viewer"}, "DIPLO_VIEWER_TOKEN is too weak"),
        ({"DIPLO_TOKEN": TOKEN, "DIPLO_VIEWER_TOKEN": TOKEN}, "DIPLO_VIEWER_TOKEN is the admin"),
    ],
)
def test_weak_chosen_tokens_are_refused_at_start(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], message: str
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message):
        access_of(home, "127.0.0.1")
    folder = tmp_path / "manifests"
    folder.mkdir()
    result = CliRunner().invoke(main, ["serve", "--manifests", str(folder)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "internal error" not in result.output
    assert not (home / "serve.json").exists()
    assert all(value not in result.output for value in env.values())  # never echoed


def test_the_cli_client_sends_the_admin_token_on_reads_too(
    home: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DIPLO_TOKEN", TOKEN)
    sent: list[urllib.request.Request] = []

    class Answer:
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *_: Any) -> None:
            pass

        def read(self) -> bytes:
            return json.dumps({"apps": [], "manifest": {"error": None}}).encode()

    def urlopen(req: urllib.request.Request, **_: Any) -> Answer:
        sent.append(req)
        return Answer()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    RemoteOps("http://127.0.0.1:7700").status(None)
    (req,) = sent
    assert req.get_method() == "GET" and req.full_url.endswith("/apps")
    assert req.get_header("Authorization") == f"Bearer {TOKEN}"


def test_access_compares_whole_tokens(home: Path):
    access = Access(TOKEN, VIEWER_TOKEN)
    for given in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), VIEWER_TOKEN[:-1], "Bearer"):
        with pytest.raises(Exception, match="invalid token"):
            access.check(f"Bearer {given}", act=False)
