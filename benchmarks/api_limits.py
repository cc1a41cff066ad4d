"""Benchmark of the API's stream limits (issue 10 point 6, review H7): with 200 idle
`GET /apps/{app}/logs?follow=true` streams open (or refused), do `GET /healthz` and
`POST /apps/web/sync` still answer within 100 ms?

The API of the in-memory world of the unit tests (tests/unit/apiworld.py: two apps, a
real SQLite ledger, no Docker) runs under uvicorn on 127.0.0.1, configured as `diplo
serve` configures it. Its engine's follow streams block like Docker's on a quiet
container, until closed. The 200 streams come from 25 loopback addresses (127.0.0.2 to
127.0.0.26, 8 each), so that the per-client cap is not all that refuses them. Two runs:

1. the default caps (8 per client, 64 in all): how many are accepted, how many get 429;
2. the total cap lifted to 200: all 200 open at once, none holding the shared thread pool.

Usage: .venv/bin/python benchmarks/api_limits.py [--streams 200] [--requests 20]"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diplo.api.app as api_module  # noqa: E402
from diplo.api.app import asgi_app  # noqa: E402
from tests.unit.apiworld import (  # noqa: E402
    AUTH,
    IMAGE_ID,
    FollowingRuntime,
    build_world,
    serving,
    tokens,
)

TARGET_MS = 100.0


def latencies(port: int, method: str, path: str, n: int) -> list[float]:
    """n sequential requests on one keep-alive connection, in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            conn.request(method, path, headers={**AUTH, "Host": "localhost"})
            resp = conn.getresponse()
            resp.read()
            out.append((time.perf_counter() - start) * 1000)
            assert resp.status == 200, (method, path, resp.status)
    finally:
        conn.close()
    return out


def open_follows(port: int, n: int) -> tuple[list[http.client.HTTPConnection], int, int]:
    held, refused = [], 0
    for i in range(n):
        conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=10, source_address=(f"127.0.0.{2 + i // 8}", 0)
        )
        conn.request("GET", "/apps/web/logs?follow=true", headers={**AUTH, "Host": "localhost"})
        resp = conn.getresponse()
        if resp.status == 200:
            held.append(conn)  # its body stays unread: an idle follower
        else:
            assert resp.status == 429 and resp.getheader("Retry-After"), resp.status
            resp.read()
            conn.close()
            refused += 1
    return held, len(held), refused


def run(streams: int, requests: int, follows: tuple[int, int]) -> dict[str, Any]:
    api_module.FOLLOWS = follows
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DIPLO_HOME"] = str(Path(tmp) / "home")
        world = build_world(
            Path(tmp), tokens(), FollowingRuntime(images={"busybox:latest": IMAGE_ID})
        )
        engine: FollowingRuntime = world.engine  # type: ignore[assignment]
        try:
            api = asgi_app(world.controller, tokens())
            with serving(api) as base:
                port = int(base.rsplit(":", 1)[1])
                held, accepted, refused = open_follows(port, streams)
                open_in_engine = engine.open_follows()
                health = latencies(port, "GET", "/healthz", requests)
                sync = latencies(port, "POST", "/apps/web/sync", requests)
                for conn in held:
                    conn.close()
                deadline = time.monotonic() + 10
                while engine.open_follows() and time.monotonic() < deadline:
                    time.sleep(0.02)
                left = engine.open_follows()
        finally:
            world.ledger.close()
    return {
        "accepted": accepted,
        "refused": refused,
        "open_in_engine": open_in_engine,
        "left_open_after_close": left,
        "healthz": health,
        "sync": sync,
    }


def show(title: str, r: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(
        f"  follow streams: {r['accepted']} accepted, {r['refused']} refused with 429"
        f" ({r['open_in_engine']} open in the engine; {r['left_open_after_close']} left"
        " open once the clients closed)"
    )
    for name, values in (("GET /healthz", r["healthz"]), ("POST /apps/web/sync", r["sync"])):
        p50, worst = statistics.median(values), max(values)
        verdict = "PASS" if worst <= TARGET_MS else "FAIL"
        print(
            f"  {name:<20} p50 {p50:6.2f} ms  max {worst:6.2f} ms"
            f"  (max <= {TARGET_MS:g} ms: {verdict})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    defaults = api_module.FOLLOWS
    show(
        f"{args.streams} follows against the default caps {defaults[0]} per client,"
        f" {defaults[1]} in all",
        run(args.streams, args.requests, defaults),
    )
    lifted = (defaults[0], args.streams)
    show(
        f"{args.streams} follows with the total cap lifted to {args.streams}",
        run(args.streams, args.requests, lifted),
    )


if __name__ == "__main__":
    main()
