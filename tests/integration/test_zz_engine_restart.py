"""`diplo serve` survives the engine going away: dockerd is stopped and started again
under a running controller. Named test_zz_* so that it runs last: the engine is down for
a few seconds. It restarts only an engine that `make engine` (scripts/engine.sh) started;
an engine run by systemd or Docker Desktop is not this test's to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Sandbox, http_get, web_spec
from .test_serve import Server, healthy, wait_for

ROOT = Path(__file__).resolve().parents[2]
PIDFILE = Path(os.environ.get("DIPLO_DOCKERD_PIDFILE", "/run/diplo-dockerd.pid"))


def our_dockerd() -> int | None:
    try:
        pid = int(PIDFILE.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def test_serve_survives_a_dockerd_restart(sandbox: Sandbox, capsys):
    pid = our_dockerd()
    if pid is None:
        pytest.skip(f"the engine was not started by scripts/engine.sh (no live {PIDFILE})")
    app = sandbox.name("web")
    sandbox.manifest({app: web_spec(sandbox, "survives")})
    server = Server(sandbox).start()
    try:
        wait_for(healthy(server, app), 30, "the app")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: (h := server.get("/healthz")) and not h["engine"], 30, "degraded")
        gone = time.monotonic()
        while time.monotonic() - gone < 30:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        subprocess.run(["bash", str(ROOT / "scripts" / "engine.sh")], check=True, timeout=120)
        back = time.monotonic()
        wait_for(lambda: (h := server.get("/healthz")) and h["engine"], 30, "reconnected")
        wait_for(lambda: (row := server.app(app)) and row.get("health") == "healthy", 30, "healthy")
        with capsys.disabled():
            print(f"\n[engine] app healthy again {time.monotonic() - back:.2f}s after dockerd")
        assert http_get(sandbox.host_port(app)) == "survives\n"
        assert len(sandbox.containers(app)) == 1
        assert server.proc is not None and server.proc.poll() is None
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        subprocess.run(["bash", str(ROOT / "scripts" / "engine.sh")], timeout=120)
