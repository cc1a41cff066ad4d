"""`diplo serve` as a subprocess over a temp folder, against the real engine."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import DIPLO, Sandbox, free_port, http_get, remove_by_label, web_spec


class Server:
    def __init__(
        self, box: Sandbox, source: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.box = box
        self.source = source or ["--manifests", str(box.dir)]
        self.env = {**box.env, **(env or {})}
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """A file, not a pipe: serve logs every deploy at info, and a pipe nobody reads
        would fill up and block it."""
        return self.box.dir / f"serve-{self.port}.log"

    def start(self) -> Server:
        for _ in range(3):
            self._spawn()
            try:
                wait_for(self._answers, 30, "the API to answer")
                return self
            except AssertionError as exc:  # what serve printed is the only clue CI keeps
                assert self.proc is not None
                if self.proc.poll() is None:
                    self.proc.kill()  # the caller's cleanup never saw it: leave none behind
                    self.proc.wait()
                    raise AssertionError(f"{exc}; serve's output:\n{self.output}") from None
                if "cannot listen on" not in self.output:
                    raise
                # free_port() let the port go: another process took it in between.
                self.port = free_port()
        raise AssertionError(f"no free port for diplo serve:\n{self.output}")

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [
                *DIPLO,
                "serve",
                *self.source,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--resync",
                "5s",
                "--policy",
                str(self.box.policy),
            ],
            env=self.env,
            text=True,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"diplo serve exited ({self.proc.returncode}) before it answered:\n{self.output}"
            )
        return self.get("/healthz") is not None

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def post(
        self,
        path: str,
        token: str | None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, method="POST")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def app(self, name: str) -> dict[str, Any] | None:
        return self.get(f"/apps/{name}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            self.proc.kill()

    @property
    def output(self) -> str:
        """What serve printed so far (its structured log)."""
        return self.log.read_text() if self.log.exists() else ""


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def server(sandbox: Sandbox) -> Iterator[Server]:
    srv = Server(sandbox)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def healthy(srv: Server, app: str, revision: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        row = srv.app(app)
        dep = (row or {}).get("last_deployment") or {}
        return bool(
            row
            and row.get("health") == "healthy"
            and dep.get("revision") == revision
            and dep.get("result") == "succeeded"
        )

    return check


def test_folder_edits_converge_by_themselves(sandbox: Sandbox, server: Server):
    server.start()
    app = sandbox.name("web")
    sandbox.manifest({app: web_spec(sandbox, "one")})
    wait_for(healthy(server, app), 30, "the new app to be healthy")
    assert http_get(sandbox.host_port(app)) == "one\n"

    sandbox.manifest({app: web_spec(sandbox, "two")})
    wait_for(healthy(server, app, revision=2), 30, "the edit to be deployed")
    assert http_get(sandbox.host_port(app)) == "two\n"
    assert len(sandbox.containers(app)) == 1

    (sandbox.dir / "diplo.yaml").write_text("")  # an editor's truncate: never a prune
    wait_for(lambda: (server.get("/apps") or {}).get("manifest", {}).get("error"), 10, "refusal")
    assert "refusing to prune" in server.get("/apps")["manifest"]["error"]
    assert len(sandbox.containers(app, all=False)) == 1
    sandbox.manifest({}, allow_empty=True)  # no apps, and meant
    wait_for(lambda: not sandbox.containers(app), 30, "the removed app to be pruned")
    wait_for(lambda: server.app(app) is None, 10, "the API to forget the app")
    assert server.stop() == 0
    log = server.output  # each deploy and prune is logged at info, without -v
    for event in ("app.create", "app.update", "app.remove"):
        assert f"{event}" in log and f"app={app}" in log, log[-2000:]


def test_drift_is_healed(sandbox: Sandbox, server: Server, capsys):
    app = sandbox.name("web")
    sandbox.manifest({app: web_spec(sandbox, "steady")})
    server.start()
    wait_for(healthy(server, app), 30, "the app")
    (c,) = sandbox.containers(app)
    removed = time.monotonic()
    sandbox.api.remove_container(c["Id"], force=True)
    wait_for(lambda: sandbox.containers(app, all=False), 30, "the container to come back")
    back = time.monotonic() - removed
    with capsys.disabled():
        print(f"\n[drift] container back {back:.2f}s after docker rm -f")
    assert http_get(sandbox.host_port(app)) == "steady\n"

    (c,) = sandbox.containers(app)
    sandbox.api.stop(c["Id"], timeout=1)
    wait_for(lambda: sandbox.containers(app, all=False), 30, "the stopped container to run")
    assert len(sandbox.containers(app)) == 1
    wait_for(lambda: "drift.healed" in server.output, 5, "the heal to be logged")


def test_invalid_manifest_never_hurts_running_apps(sandbox: Sandbox, server: Server):
    app = sandbox.name("web")
    path = sandbox.manifest({app: web_spec(sandbox, "good")})
    server.start()
    wait_for(healthy(server, app), 30, "the app")
    (before,) = sandbox.containers(app)
    # Written aside and renamed, as editors save: a truncate-then-write can show the
    # watcher an empty file first, which serve refuses for a reason of its own.
    aside = path.with_suffix(".tmp")
    aside.write_text(path.read_text() + "  broken: [unclosed\n")
    aside.replace(path)
    listing = wait_for(
        lambda: (r := server.get("/apps")) and not r["manifest"]["ok"] and r,
        10,
        "the error to show",
    )
    assert f"{path}:" in listing["manifest"]["error"]
    time.sleep(2)
    (after,) = sandbox.containers(app)
    assert after["Id"] == before["Id"] and after["State"] == "running"
    assert [a["app"] for a in listing["apps"]] == [app]
    shown = sandbox.diplo("status", check=True).stdout  # answered by the running controller
    assert f"from diplo serve at {server.url}" in shown
    assert "manifest error" in shown and f"{path}:" in shown and app in shown


def test_sigterm_stops_cleanly_and_a_restart_recreates_nothing(sandbox: Sandbox, server: Server):
    app = sandbox.name("web")
    sandbox.manifest({app: web_spec(sandbox, "kept")})
    server.start()
    wait_for(healthy(server, app), 30, "the app")
    (before,) = sandbox.containers(app)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 5
    (still,) = sandbox.containers(app, all=False)
    assert still["Id"] == before["Id"]

    again = Server(sandbox).start()
    try:
        wait_for(lambda: (a := again.app(app)) and a.get("health") == "healthy", 30, "status")
        time.sleep(2)
        (after,) = sandbox.containers(app)
        assert after["Id"] == before["Id"]
    finally:
        again.stop()


def test_post_needs_the_token_and_sync_works(sandbox: Sandbox, server: Server):
    app = sandbox.name("web")
    sandbox.manifest({app: web_spec(sandbox, "x")})
    server.start()
    wait_for(healthy(server, app), 30, "the app")
    token = (sandbox.home / "token").read_text().strip()
    assert (sandbox.home / "token").stat().st_mode & 0o777 == 0o600
    assert server.post(f"/apps/{app}/sync", None)[0] == 401
    assert server.post(f"/apps/{app}/sync", "wrong")[0] == 403
    status, body = server.post(f"/apps/{app}/sync", token)
    assert status == 200 and body["accepted"] is True
    status, body = server.post(f"/apps/{app}/restart", token)
    assert status == 200 and body["accepted"] is True
    assert server.post("/apps/nope-nope/sync", token)[0] == 404


def test_apply_while_serve_runs_makes_no_duplicates(sandbox: Sandbox, server: Server):
    app = sandbox.name("web")
    server.start()
    sandbox.manifest({app: web_spec(sandbox, "race")})
    proc = sandbox.diplo("apply")  # races the controller's own deploy of the new file
    assert proc.returncode == 0, proc.stderr
    wait_for(healthy(server, app), 30, "the app")
    time.sleep(2)
    assert len(sandbox.containers(app)) == 1
    deps = server.get(f"/apps/{app}/deployments")["deployments"]
    assert all(d["result"] in ("succeeded", "running") for d in deps)


def test_non_loopback_listen_without_a_token_is_refused(sandbox: Sandbox):
    proc = sandbox.diplo(
        "serve", "--manifests", str(sandbox.dir), "--listen", "0.0.0.0:7790", timeout=30
    )
    assert proc.returncode == 2
    assert "without a token of your choosing" in proc.stderr


def test_an_app_deleted_while_serve_was_down_is_pruned_at_start(sandbox: Sandbox):
    keep, gone = sandbox.name("keep"), sandbox.name("gone")
    sandbox.manifest({keep: web_spec(sandbox, "k")}, filename="keep.yaml")
    # Its own project: no app left in the folder names it, only the ledger remembers it.
    sandbox.manifest(
        {gone: web_spec(sandbox, "g")}, filename="gone.yaml", project=f"{sandbox.project}-x"
    )

    def containers_of_gone() -> list[Any]:
        return sandbox.api.containers(all=True, filters={"label": f"diplo.app={gone}"})

    first = Server(sandbox).start()
    try:
        wait_for(lambda: all(healthy(first, a)() for a in (keep, gone)), 40, "both apps")
        assert len(containers_of_gone()) == 1
    finally:
        assert first.stop() == 0
    (sandbox.dir / "gone.yaml").unlink()  # while serve is down
    again = Server(sandbox).start()
    try:
        wait_for(lambda: not containers_of_gone(), 30, "the deleted app to be pruned")
        assert len(sandbox.containers(keep, all=False)) == 1
    finally:
        again.stop()
        remove_by_label(sandbox.api, f"diplo.project={sandbox.project}-x")
