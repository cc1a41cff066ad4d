"""Alerts of a real `diplo serve` on the real engine, received by a local webhook
receiver (an http.server thread, every body's HMAC checked) and a local SMTP server
(aiosmtpd): a memory hog over its threshold (exactly one firing and one resolved per
channel), an app killed that cannot come back, and a failed deploy, each firing and then
resolved; a restart of serve while alerts fire sends none of them again."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller as SmtpController

from .conftest import Sandbox, free_port
from .test_serve import Server, wait_for

SECRET = "alerts-hmac-secret-0123456789"


@dataclass
class Inbox:
    """What both channels received, as (channel, state, alert key) in order."""

    got: list[tuple[str, str, str]] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, key: str) -> dict[str, list[str]]:
        with self.lock:
            out: dict[str, list[str]] = {"webhook": [], "email": []}
            for channel, state, k in self.got:
                if k == key:
                    out[channel].append(state)
            return out

    def both(self, key: str, *states: str) -> bool:
        got = self.of(key)
        return all(got[ch][: len(states)] == list(states) for ch in ("webhook", "email"))

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        state, _, key = str(mail["Subject"]).partition(" ")
        with self.lock:
            self.got.append(("email", state.strip("[]").lower(), key))
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int, int]]:
    box = Inbox()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            with box.lock:
                if not hmac.compare_digest(self.headers.get("X-Diplo-Signature", ""), want):
                    box.bad_signatures += 1
                payload = json.loads(body)
                box.got.append(("webhook", payload["state"], payload["alert"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        smtp_port = s.getsockname()[1]
    smtp = SmtpController(box, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    try:
        yield box, http.server_address[1], smtp_port
    finally:
        smtp.stop()
        http.shutdown()
        http.server_close()


def configure(box: Sandbox, hook_port: int, smtp_port: int) -> None:
    with (box.home / "config.yaml").open("a") as config:  # beside the test's proxy
        config.write(
            f"""
metrics: {{interval: 1}}
alerts:
  evaluate_every: 1
  rules:
    down: {{for: 2s}}
    cpu: false
  channels:
    - {{type: webhook, url: "http://127.0.0.1:{hook_port}/hook", secret_env: ALERT_SECRET}}
    - {{type: email, host: 127.0.0.1, port: {smtp_port}, security: none,
        from: diplo@example.com, to: [ops@example.com]}}
"""
        )


def busybox(*command: str, **extra: Any) -> dict[str, Any]:
    return {"image": "busybox:latest", "command": list(command), "init": True, **extra}


def stop(server: Server) -> int | None:
    """SIGTERM, and its exit code; a loaded machine's engine can make a stop with deploys
    in flight take longer than test_serve's 10 s."""
    assert server.proc is not None
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(60)
        finally:
            server.proc.kill()
    return server.proc.returncode


def alerts(server: Server) -> dict[str, Any]:
    answer = server.get("/alerts")
    assert answer is not None
    return answer  # type: ignore[no-any-return]


def test_firing_and_resolved_reach_a_webhook_and_smtp(
    sandbox: Sandbox, inbox: tuple[Inbox, int, int]
):
    received, hook_port, smtp_port = inbox
    configure(sandbox, hook_port, smtp_port)
    flag, ctl = sandbox.root / "flag", sandbox.root / "ctl"
    flag.mkdir()
    ctl.mkdir()
    hog, dies, bad = sandbox.name("hog"), sandbox.name("dies"), sandbox.name("bad")
    apps = {
        # 40 MB in a tmpfs file (charged to the container's cgroup) of 64 MiB, from when
        # the test says `fill` until it says `free`
        hog: busybox(
            "sh",
            "-c",
            "until [ -f /ctl/fill ]; do sleep 0.2; done; head -c 40000000 /dev/zero > "
            "/dev/shm/fill; until [ -f /ctl/free ]; do sleep 0.2; done; rm /dev/shm/fill; "
            "exec sleep 3600",
            resources={"memory": "64m"},
            volumes=[f"{ctl}:/ctl"],
            alerts={"memory": {"above": "50%", "for": "2s"}},
        ),
        # runs until the flag is there, and then cannot start again
        dies: busybox(
            "sh",
            "-c",
            "test -f /flag/down && exit 1; exec sleep 3600",
            volumes=[f"{flag}:/flag"],
            restart="no",
        ),
    }
    sandbox.manifest(apps)
    env = {"ALERT_SECRET": SECRET}  # no token of our choosing: reads are open on loopback
    server = Server(sandbox, env=env).start()
    try:
        for app in (hog, dies):
            wait_for(lambda a=app: (server.app(a) or {}).get("health") == "healthy", 90, app)

        # a failed deploy: a new app whose container exits at once
        apps[bad] = busybox("sh", "-c", "exit 3", restart="no")
        sandbox.manifest(apps)
        wait_for(lambda: received.both(f"deploy:{bad}", "firing"), 90, "the failed deploy's alert")

        # the memory hog: firing while it holds the memory, resolved once it frees it
        def sampled() -> bool:
            top = server.get("/system/top") or {"apps": []}
            return any(a["app"] == hog for a in top["apps"])

        wait_for(sampled, 60, "the hog's first samples")
        (ctl / "fill").touch()
        wait_for(lambda: received.both(f"memory:{hog}", "firing"), 60, "the hog's firing")
        (ctl / "free").touch()
        wait_for(
            lambda: received.both(f"memory:{hog}", "firing", "resolved"), 60, "the hog's resolved"
        )

        # the app killed that cannot come back
        (flag / "down").touch()
        (container,) = sandbox.containers(dies, all=False)
        sandbox.api.kill(container["Id"])
        wait_for(lambda: received.both(f"down:{dies}", "firing"), 60, "the down app's firing")
        firing = {a["key"]: a for a in alerts(server)["firing"]}
        assert firing[f"down:{dies}"]["deliveries"]["webhook"]["status"] == "sent"
        assert firing[f"deploy:{bad}"]["message"].startswith(f"{bad}: deploy failed")

        # a restart of serve while two alerts fire: neither is sent again
        assert stop(server) == 0
        server = Server(sandbox, env=env).start()
        wait_for(lambda: f"down:{dies}" in {a["key"] for a in alerts(server)["firing"]}, 10, "")

        (flag / "down").unlink()  # it can come back now: the next heal brings it up
        wait_for(
            lambda: received.both(f"down:{dies}", "firing", "resolved"), 120, "the down resolved"
        )
        apps[bad] = busybox("sleep", "3600")
        sandbox.manifest(apps)
        wait_for(
            lambda: received.both(f"deploy:{bad}", "firing", "resolved"), 90, "the deploy fixed"
        )
        cli = sandbox.diplo("alerts", "--json", check=True)
        answer = json.loads(cli.stdout)
    finally:
        stop(server)

    # exactly one firing and one resolved on each channel for the hog
    assert received.of(f"memory:{hog}") == {
        "webhook": ["firing", "resolved"],
        "email": ["firing", "resolved"],
    }
    # and after the restart of serve, nothing was sent twice
    for key in (f"down:{dies}", f"deploy:{bad}"):
        assert received.of(key) == {
            "webhook": ["firing", "resolved"],
            "email": ["firing", "resolved"],
        }, key
    assert received.bad_signatures == 0
    assert answer["served_by"] == server.url
    resolved = {a["key"]: a for a in answer["resolved"]}
    assert {f"memory:{hog}", f"down:{dies}", f"deploy:{bad}"} <= set(resolved)
    memory = resolved[f"memory:{hog}"]
    assert memory["threshold"] == "50%" and float(memory["value"].rstrip("%")) > 50
    assert memory["deliveries"]["email"] == {
        **memory["deliveries"]["email"],
        "state": "resolved",
        "status": "sent",
    }
    channels = {c["name"]: c for c in answer["channels"]}
    assert channels["webhook"]["target"] == f"http://127.0.0.1:{hook_port}/***"
    assert channels["webhook"]["failed"] == 0 and channels["email"]["failed"] == 0
    assert SECRET not in cli.stdout and SECRET not in server.output


def test_a_missing_channel_secret_stops_serve_before_it_changes_anything(sandbox: Sandbox):
    with (sandbox.home / "config.yaml").open("a") as config:
        config.write("alerts:\n  channels:\n    - {type: slack, url_env: DIPLO_TEST_NO_SUCH_VAR}\n")
    sandbox.manifest({sandbox.name("web"): busybox("sleep", "3600")})
    port = free_port()
    proc = sandbox.diplo(
        "serve", "--manifests", str(sandbox.dir), "--listen", f"127.0.0.1:{port}", timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "alerts channel slack: the environment variable DIPLO_TEST_NO_SUCH_VAR is not set" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert sandbox.containers() == []
    assert not Path(sandbox.home / "serve.json").exists()
