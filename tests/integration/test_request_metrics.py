"""Request metrics of an app behind the real Caddy, through `diplo serve`: requests over
HTTPS to its domain (fast ones, slow ones and ones its CGI answers 500) show in its
history (req/s, p50/p95/p99, error ratio), in /system/top and `diplo top`, and in
/metrics as counters by status class and a summary; HTTP requests that the proxy only
redirects to HTTPS and requests for hosts no app serves are not counted; an app without
a domain keeps its probe latency and has no request figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from diplo.proxy import Proxy, ProxySettings

from .conftest import Sandbox, free_port, site, web_spec
from .test_metrics import TOKEN, VIEWER, read, series
from .test_proxy import http_get, https_get
from .test_serve import Server, wait_for

pytestmark = pytest.mark.docker

FAST, FAILED, SLOW = 40, 6, 4
SLOW_S = 0.3
# a collector cycle asks the engine for its containers: seconds, on a loaded engine
SLOW_WAIT = 120


def cgi_site(box: Sandbox) -> str:
    """busybox httpd's site: / answers at once, /cgi-bin/fail a 500, /cgi-bin/slow a
    200 after SLOW_S seconds."""
    www = Path(site(box.root, "www-req", "hello"))
    cgi = www / "cgi-bin"
    cgi.mkdir(exist_ok=True)
    scripts = {
        "fail": "printf 'Status: 500 Internal Server Error\\r\\n"
        "Content-Type: text/plain\\r\\n\\r\\nboom\\n'",
        "slow": f"sleep {SLOW_S}; printf 'Content-Type: text/plain\\r\\n\\r\\nslow\\n'",
    }
    for name, body in scripts.items():
        (cgi / name).write_text(f"#!/bin/sh\n{body}\n")
        (cgi / name).chmod(0o755)
    return str(www)


@pytest.fixture
def served(sandbox: Sandbox, proxy_image: None) -> Iterator[tuple[Server, dict[str, Any]]]:
    box = sandbox
    http_port, https_port = free_port(), free_port()
    (box.home / "config.yaml").write_text(
        f"proxy:\n  name: {box.proxy}\n  http_port: {http_port}\n  https_port: {https_port}\n"
        "metrics:\n  interval: 1\n"
    )
    web, plain = box.name("web"), box.name("plain")
    domain = f"req-{box.id}.localhost"
    box.manifest(
        {
            web: {
                **web_spec(box),
                "volumes": [f"{cgi_site(box)}:/www:ro"],
                "domains": [domain],
                "tls": "internal",
            },
            plain: web_spec(box),
        }
    )
    server = Server(box, env={"DIPLO_TOKEN": TOKEN, "DIPLO_VIEWER_TOKEN": VIEWER})
    proxy = Proxy(
        box.home, ProxySettings(http_port, https_port), name=box.proxy, volume=f"{box.proxy}-data"
    )
    try:
        server.start()
        yield (
            server,
            {
                "web": web,
                "plain": plain,
                "domain": domain,
                "http_port": http_port,
                "https_port": https_port,
                "proxy": proxy,
            },
        )
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        proxy.close()


def prometheus(server: Server, app: str) -> dict[tuple[str, str], float]:
    """(sample name, code_class or quantile) -> value of the app's request series."""
    status, body = read(server, "/metrics")
    assert status == 200, body
    return {
        (s.name, s.labels.get("code_class") or s.labels.get("quantile") or ""): s.value
        for family in text_string_to_metric_families(body.decode())
        if family.name.startswith("diplo_app_http_")
        for s in family.samples
        if s.labels.get("app") == app
    }


def test_requests_through_the_proxy_reach_history_top_and_prometheus(
    sandbox: Sandbox, served: tuple[Server, dict[str, Any]]
):
    server, env = served
    web, domain, https_port = env["web"], env["domain"], env["https_port"]

    # the app served at its domain (the proxy comes up with serve's first reconcile)
    def answering() -> bool:
        ca = env["proxy"].root_ca()
        return https_get(https_port, domain, ca=ca) == (200, "hello\n")

    wait_for(lambda: _quietly(answering), 90, f"{domain} to answer through the proxy")
    ca = env["proxy"].root_ca()

    # the requests above count too: start from the counters once they stopped moving
    def counters() -> dict[tuple[str, str], float]:  # the quantiles are NaN when idle
        got = prometheus(server, web)
        return {k: v for k, v in got.items() if k[0].endswith(("_total", "_count", "_sum"))}

    def steady() -> dict[tuple[str, str], float] | None:
        first = counters()
        time.sleep(2.0)  # two collector intervals
        return first if first and first == counters() else None

    before = wait_for(steady, SLOW_WAIT, "the app's request counters to settle")

    paths = ["/"] * FAST + ["/cgi-bin/fail"] * FAILED + ["/cgi-bin/slow"] * SLOW
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: https_get(https_port, domain, p, ca=ca), paths))
    assert sorted(status for status, _ in answers) == [200] * (FAST + SLOW) + [500] * FAILED
    # redirected to HTTPS (not the app's answer) and unknown hosts: not the app's requests
    for _ in range(5):
        assert http_get(env["http_port"], domain)[0] == 308
    assert http_get(env["http_port"], f"nobody-{sandbox.id}.localhost")[0] == 404

    def counted() -> dict[tuple[str, str], float] | None:
        now = prometheus(server, web)
        total = "diplo_app_http_request_duration_seconds_count"
        grown = now.get((total, ""), 0) - before.get((total, ""), 0)
        return now if grown >= len(paths) else None

    after = wait_for(counted, SLOW_WAIT, "the proxy's counters to count the requests")
    by = "diplo_app_http_requests_total"
    assert after[(by, "2xx")] - before[(by, "2xx")] == FAST + SLOW
    assert after[(by, "5xx")] - before[(by, "5xx")] == FAILED
    assert after[(by, "3xx")] == before[(by, "3xx")] == 0  # the 308s were the proxy's
    count = "diplo_app_http_request_duration_seconds_count"
    assert after[(count, "")] - before[(count, "")] == len(paths)
    total = "diplo_app_http_request_duration_seconds_sum"
    assert after[(total, "")] - before[(total, "")] >= SLOW * SLOW_S

    # Prometheus's own linter finds nothing to say about the exposition
    body = read(server, "/metrics")[1]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `make engine` installs Debian's prometheus"
    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # the history: the burst's windows, with its errors and the slow answers in the high
    # percentiles; the quiet windows after it have a zero rate
    time.sleep(2.5)  # a quiet window after the burst
    answer = wait_for(
        lambda: _settled(series(server, web)), SLOW_WAIT, "a quiet window after the burst"
    )
    m, stamps = answer["metrics"], answer["timestamps"]
    # The burst's window(s) have a rate. Not checked against the burst's size here: a
    # window lasts from one cycle's read of the log to the next, the interval (1 s) on an
    # idle machine but anything from 1 to 20 s on a loaded one, and the history keeps no
    # window's length (the unit tests check the arithmetic; the counters above the count).
    assert max(r or 0 for r in m["requests_per_second"]) > 0, (stamps, m)
    assert max(e or 0 for e in m["error_ratio"]) > 0
    assert max(p or 0 for p in m["p99_ms"]) >= SLOW_S * 1000
    assert min(p for p in m["p50_ms"] if p is not None) < SLOW_S * 1000
    assert m["p50_ms"][-1] is None and m["error_ratio"][-1] is None  # no request: no latency

    # /system/top and `diplo top`: the app behind the proxy has request figures, the one
    # without a domain has none and keeps its probe latency
    top = {a["app"]: a for a in json.loads(read(server, "/system/top")[1])["apps"]}
    assert top[web]["requests_per_second"] == 0.0
    assert top[env["plain"]]["requests_per_second"] is None
    assert top[env["plain"]]["latency_ms"] is not None
    shown = sandbox.diplo("top", "--once", check=True, env={"DIPLO_TOKEN": TOKEN}).stdout
    assert "REQ/S" in shown and "5XX" in shown
    (row,) = (line for line in shown.splitlines() if line.startswith(web))
    (plain_row,) = (line for line in shown.splitlines() if line.startswith(env["plain"]))
    assert row.split()[-3:-1] == ["0.0", "-"]  # idle now: no error ratio to show
    assert plain_row.split()[-3:-1] == ["-", "-"]
    plain = series(server, env["plain"])["metrics"]
    assert set(plain["requests_per_second"]) == {None}

    # the access log on disk holds no URI, header or client address
    logged = (sandbox.home / "proxy" / "access" / "access.log").read_text()
    assert "/cgi-bin/fail" not in logged and "127.0.0.1" not in logged
    assert domain in logged


def _settled(answer: dict[str, Any]) -> dict[str, Any] | None:
    """A series whose newest window had no request."""
    rates = answer["metrics"]["requests_per_second"]
    return answer if rates and rates[-1] == 0 else None


def _quietly(check: Any) -> Any:
    try:
        return check()
    except Exception:
        return None
