"""The API of a real `diplo serve` over Docker (review H1, H7): with a chosen token reads
need it, and many open log follows of a quiet container neither starve /healthz and the
POSTs nor keep engine streams (and their threads) once their clients leave."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from .conftest import Sandbox, web_spec
from .test_serve import Server, healthy, wait_for

TOKEN = "integration-admin-token-0123456789"


def follow(srv: Server, app: str, source: str) -> tuple[http.client.HTTPConnection, bytes]:
    """Open a follow from loopback address `source`; its first chunk (the app's one line)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5, source_address=(source, 0))
    conn.request(
        "GET", f"/apps/{app}/logs?follow=true", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return conn, resp.read1(100)


def timed_get(srv: Server, path: str, token: str | None) -> tuple[float, int]:
    req = urllib.request.Request(srv.url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    return time.monotonic() - start, code


def test_quiet_follows_neither_starve_the_api_nor_outlive_their_clients(sandbox: Sandbox):
    app = sandbox.name("web")
    spec = web_spec(sandbox, "quiet")
    spec["command"] = ["sh", "-c", "echo started; exec " + " ".join(spec["command"])]
    sandbox.manifest({app: spec})
    srv = Server(sandbox, env={"DIPLO_TOKEN": TOKEN}).start()
    try:
        assert srv.get(f"/apps/{app}") is None  # 401 without the token
        assert timed_get(srv, "/apps", None)[1] == 401
        srv.get = lambda path: _get(srv, path)  # type: ignore[method-assign]
        wait_for(healthy(srv, app), 30, "the app to be healthy")
        # Three rounds of 48 follows (6 clients x 8): more than the 40 threads the sync
        # routes share, and, over the rounds, more than the 64 a follow may hold: a
        # round only gets its first lines if the last round's streams were let go.
        for _ in range(3):
            conns = []
            for i in range(48):
                conn, first = follow(srv, app, f"127.0.3.{2 + i // 8}")
                assert first == b"started\n"
                conns.append(conn)
            took, code = timed_get(srv, "/healthz", None)
            assert code == 200 and took < 1.0
            status, answer = srv.post(f"/apps/{app}/sync", TOKEN)
            assert status == 200 and answer["accepted"] is True
            for conn in conns:
                conn.close()
            time.sleep(0.5)
        assert srv.stop() == 0
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def _get(srv: Server, path: str) -> object:
    req = urllib.request.Request(srv.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
