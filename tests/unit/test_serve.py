"""The composition root of `diplo serve` (the loopback rule, the token, serve.json, the
controller's life around the server) and the API token of a host."""

from __future__ import annotations

import gc
import json
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import uvicorn
from fastapi.testclient import TestClient

from diplo import serve
from diplo.controller.sources import FolderSource, GitSource
from diplo.errors import DiploError, InputError
from diplo.ledger import Ledger
from diplo.ops.context import Context
from diplo.runtime.base import StopCheck
from diplo.runtime.memory import MemoryRuntime
from diplo.tokens import api_token


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """Log events are captured, not printed: these tests log from threads, and must not
    depend on the stream an earlier test left structlog writing to."""
    with structlog.testing.capture_logs() as entries:
        yield entries


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DIPLO_TOKEN", raising=False)
    for name in ("", "_GITHUB", "_GITEA", "_GITLAB"):
        monkeypatch.delenv(f"DIPLO_WEBHOOK_SECRET{name}", raising=False)
        monkeypatch.delenv(f"DIPLO_WEBHOOK_SECRET{name}_FILE", raising=False)
    return tmp_path / "home"


# --- the token -----------------------------------------------------------------------


def test_diplo_token_is_the_operator_s_choice(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DIPLO_TOKEN", "chosen-by-ann-a-long-random-token")
    assert api_token(home) == ("chosen-by-ann-a-long-random-token", True)
    assert not (home / "token").exists()


def test_a_token_is_generated_once_readable_by_its_owner_only(home: Path):
    token, chosen = api_token(home)
    assert not chosen and len(token) >= 32
    path = home / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n"
    assert api_token(home) == (token, False)  # read back, not made again
    other = home.parent / "other-home"
    assert api_token(other)[0] != token  # another home, another token


def test_diplo_token_wins_over_the_generated_one(home: Path, monkeypatch: pytest.MonkeyPatch):
    generated, _ = api_token(home)
    monkeypatch.setenv("DIPLO_TOKEN", "chosen-by-the-operator-long-enough")
    assert api_token(home) == ("chosen-by-the-operator-long-enough", True)
    monkeypatch.delenv("DIPLO_TOKEN")
    assert api_token(home) == (generated, False)


def test_an_empty_token_file_is_never_an_empty_token(home: Path):
    home.mkdir(parents=True)
    (home / "token").write_text("")
    try:
        token, _ = api_token(home)
    except DiploError:
        return  # refusing to start is an answer too
    assert token.strip()


# --- the loopback rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool):
    assert serve.is_loopback(host) is loopback


class Engine(MemoryRuntime):
    """The in-memory engine with a quiet event stream, as the controller watches one."""

    def events(self, stop: StopCheck) -> Iterator[tuple[str, str]]:
        while not stop():
            time.sleep(0.01)
        return iter(())


@pytest.fixture
def ctx(home: Path) -> Iterator[Context]:
    ledger = Ledger(home / "ledger.db")
    yield Context(_runtime=Engine(), _ledger=ledger)
    ledger.close()


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"threads left running: {left}"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_a_public_address_needs_a_token_of_your_choosing(
    ctx: Context, home: Path, tmp_path: Path, host: str, no_leaked_threads: None
):
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match=f"refusing to serve the API on {host}") as exc:
        serve.run_server(ctx, [FolderSource(tmp_path / "m")], host, 8080, resync=60, workers=1)
    assert "DIPLO_TOKEN" in (exc.value.hint or "")
    assert not (home / "serve.json").exists()
    assert ctx.runtime.calls == []  # type: ignore[attr-defined]


@pytest.fixture
def signals() -> Iterator[None]:
    """run_server makes SIGTERM and SIGINT no-ops for uvicorn: restored after the test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_serve_runs_the_controller_around_the_server(
    ctx: Context,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signals: None,
    no_leaked_threads: None,
    front_calls: list[dict[str, Any]],
):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "diplo.yaml").write_text("project: shop\napps:\n  web:\n    image: busybox:latest\n")
    monkeypatch.setenv("DIPLO_TOKEN", "t0ken-long-enough-for-the-check")
    seen: dict[str, Any] = {}

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        """Instead of serving: look at what a client would find while it serves."""
        seen["backend"] = [s.family.name for s in sockets]  # the private socket only
        seen["listing"] = json.loads(front_calls[0]["folder"].listing.read_text())
        seen["info"] = json.loads((home / "serve.json").read_text())
        seen["threads"] = {t.name for t in threading.enumerate()}
        client = TestClient(server.config.app, base_url="http://127.0.0.1:18080")
        seen["healthz"] = client.get("/healthz").status_code
        seen["no token"] = client.post("/apps/web/sync").status_code
        seen["bad token"] = client.post(
            "/apps/web/sync", headers={"Authorization": "Bearer nope"}
        ).status_code
        seen["hook"] = client.post("/hooks/git", content=b"{}").status_code

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve.run_server(ctx, [FolderSource(folder)], "0.0.0.0", 18080, resync=60, workers=2)
    (front,) = front_calls
    assert front["host"] == "0.0.0.0" and front["exposure"] == serve.Exposure()
    assert front["access"].role_of("t0ken-long-enough-for-the-check") == "admin"
    assert seen["backend"] == ["AF_UNIX"]
    assert seen["listing"]["apps"][0]["app"] == "web"  # published for the front
    assert not front["folder"].path.exists()  # the private folder goes with serve
    assert seen["info"] == {"pid": os.getpid(), "url": "http://0.0.0.0:18080"}
    assert {
        *("diplo-worker-0", "diplo-worker-1", "diplo-engine-events", "diplo-gc"),
        "diplo-alerts",
    } <= seen["threads"]
    assert seen["healthz"] == 200
    assert (seen["no token"], seen["bad token"]) == (401, 403)
    assert seen["hook"] == 404  # no repository served, no webhook secret
    assert not (home / "serve.json").exists()  # gone once the server returns
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)


SHARED_SECRET, GITLAB_TOKEN = "one-secret-for-all-8d2f-90ab", "gitlab-only-token-41ac-7e3d"


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        ({"DIPLO_WEBHOOK_SECRET": SHARED_SECRET}, True),
        (
            {
                "DIPLO_WEBHOOK_SECRET_GITHUB": SHARED_SECRET,
                "DIPLO_WEBHOOK_SECRET_GITLAB": SHARED_SECRET,
            },
            True,
        ),
        (
            {"DIPLO_WEBHOOK_SECRET": SHARED_SECRET, "DIPLO_WEBHOOK_SECRET_GITLAB": GITLAB_TOKEN},
            False,
        ),
    ],
    ids=["shared", "copied", "gitlab-own"],
)
def test_serve_warns_when_gitlab_s_token_is_an_hmac_key_too(
    ctx: Context,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signals: None,
    no_leaked_threads: None,
    logs: list[dict[str, Any]],
    env: dict[str, str],
    warned: bool,
    front_calls: list[dict[str, Any]],
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    repo = GitSource(f"file://{tmp_path}/no-repo", "main", "", home)  # for /hooks/git
    seen: dict[str, int] = {}

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        client = TestClient(server.config.app, base_url="http://127.0.0.1:18080")
        body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
        for token in (SHARED_SECRET, GITLAB_TOKEN):
            headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token}
            seen[token] = client.post("/hooks/git", content=body, headers=headers).status_code

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve.run_server(ctx, [repo], "127.0.0.1", 18080, resync=60, workers=1)
    shared = [e for e in logs if e["event"] == "serve.webhook_secret_shared"]
    if warned:
        (warning,) = shared
        assert warning["log_level"] == "warning"
        assert "GitLab sends it in clear" in warning["detail"]
        assert "DIPLO_WEBHOOK_SECRET_GITLAB" in warning["hint"]
        assert seen[SHARED_SECRET] == 202  # a warning, not a refusal
    else:
        assert shared == []
        assert (seen[SHARED_SECRET], seen[GITLAB_TOKEN]) == (401, 202)  # GitLab's own
    logged = json.dumps(logs, default=str)
    assert SHARED_SECRET not in logged and GITLAB_TOKEN not in logged


def test_serve_refuses_an_unreadable_webhook_secret_file(
    ctx: Context,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signals: None,
    no_leaked_threads: None,
):
    monkeypatch.setenv("DIPLO_WEBHOOK_SECRET_GITLAB_FILE", str(tmp_path / "nowhere"))
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: pytest.fail("served"))
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="cannot read DIPLO_WEBHOOK_SECRET_GITLAB_FILE"):
        serve.run_server(
            ctx, [FolderSource(tmp_path / "m")], "127.0.0.1", 8080, resync=60, workers=1
        )
    assert not (home / "serve.json").exists()
    assert ctx.runtime.calls == []  # type: ignore[attr-defined]


def test_tidy_heap_runs_until_its_event_is_set(no_leaked_threads: None):
    before = {t for t in threading.enumerate() if t.name == "diplo-gc"}
    callbacks, thresholds = list(gc.callbacks), gc.get_threshold()
    stop = serve._tidy_heap(every=0.01)
    try:
        (thread,) = {t for t in threading.enumerate() if t.name == "diplo-gc"} - before
        assert thread.daemon and thread.is_alive()
        time.sleep(0.05)  # a few collections
        assert thread.is_alive()
        assert len(gc.callbacks) == len(callbacks) + 1  # the gc.slow watch
        assert gc.get_threshold() == (*thresholds[:2], serve.FULL_AFTER)  # full passes rare
        stop.set()
        thread.join(2)
        assert not thread.is_alive()
        assert gc.callbacks == callbacks  # gone with it
        assert gc.get_threshold() == thresholds
    finally:
        stop.set()
        gc.unfreeze()


def test_a_server_that_fails_still_stops_the_controller(
    ctx: Context,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signals: None,
    no_leaked_threads: None,
    front_calls: list[dict[str, Any]],
):
    (tmp_path / "m").mkdir()

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        assert (home / "serve.json").exists()
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(uvicorn.Server, "run", run)
    with pytest.raises(OSError, match="Address already in use"):
        serve.run_server(
            ctx, [FolderSource(tmp_path / "m")], "127.0.0.1", 8080, resync=60, workers=1
        )
    assert not (home / "serve.json").exists()
    # The generated token stays for the CLI to read.
    assert (home / "token").read_text().strip() == api_token(home)[0]


def test_a_second_serve_on_one_home_is_refused_before_it_starts(
    ctx: Context,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    front_calls: list[dict[str, Any]],
):
    """Two controllers on one DIPLO_HOME would fight over every app (security review L7)."""
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: None)
    first = serve._sole_server(home)  # a diplo serve that runs
    try:
        with pytest.raises(InputError, match="another diplo serve runs with this DIPLO_HOME"):
            serve.run_server(
                ctx, [FolderSource(tmp_path)], "127.0.0.1", 18081, resync=60, workers=1
            )
        assert not (home / "serve.json").exists()
    finally:
        os.close(first)
    serve.run_server(ctx, [FolderSource(tmp_path)], "127.0.0.1", 18081, resync=60, workers=1)


def test_the_alert_rules_see_the_controllers_apps_once_it_has_looked(ctx: Context, tmp_path: Path):
    from diplo.controller.controller import Controller
    from diplo.hostconfig import AlertsConfig

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "diplo.yaml").write_text(
        "project: shop\napps:\n  web:\n    image: busybox:latest\n"
        "    alerts: {memory: {above: 50%}}\n"
    )
    controller = Controller([FolderSource(folder)], ctx)
    controller.reload()
    inputs = serve.ControllerInputs(ctx, controller)
    assert inputs.health() is None  # the view has not looked at the host yet
    controller.view.refresh()
    assert inputs.health() == {"web": ("absent", 0)}  # desired, not deployed
    assert inputs.app_rules("web") == '{"memory":{"above":"50%"}}'
    assert inputs.app_rules("nope") is None
    assert inputs.sources() == [{"kind": "folder", "path": str(folder)}]
    assert inputs.certificates() == []  # no domains
    assert serve.alert_service(AlertsConfig(enabled=False), ctx, controller, 60) is None
    service = serve.alert_service(AlertsConfig(), ctx, controller, 60)
    assert service is not None and service.snapshot()["channels"] == []


def test_a_slow_garbage_collection_is_logged(monkeypatch: pytest.MonkeyPatch):
    now = [100.0]
    monkeypatch.setattr(serve.time, "perf_counter", lambda: now[0])
    watch = serve._slow_collections(threshold=0.1)
    with structlog.testing.capture_logs() as logs:
        watch("start", {"generation": 0})
        now[0] += 0.002  # a young collection: nothing to say
        watch("stop", {"generation": 0, "collected": 5})
        watch("start", {"generation": 2})
        now[0] += 0.9  # every request in flight waited this long
        watch("stop", {"generation": 2, "collected": 12000})
    (slow,) = logs
    assert slow["event"] == "gc.slow" and slow["log_level"] == "warning"
    assert (slow["generation"], slow["ms"], slow["collected"]) == (2, 900, 12000)
