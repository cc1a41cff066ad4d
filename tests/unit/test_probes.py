"""Health probes against real sockets on 127.0.0.1 (a tiny HTTP server in a thread, open
and closed ports), and command probes through the in-memory engine."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diplo.executor.probes import probe_address, run_probe
from diplo.model import LABEL_APP, LABEL_PROJECT, LABEL_SPEC_HASH, ContainerSpec, HealthSpec
from diplo.model import ResolvedPort as RP
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID

NO_ENGINE = MemoryRuntime()  # http and tcp probes never ask the engine


class Server:
    """Answers GET /CODE with that status code; records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("User-Agent", "")))
                code = int(self.path.strip("/").split("?")[0] or 200)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()
    assert not s.thread.is_alive()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield s.getsockname()[1]


def http(path: str = "/", **kw: object) -> HealthSpec:
    return HealthSpec(kind="http", port=8080, path=path, **kw)  # type: ignore[arg-type]


# --- where to probe ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host_ip", "expected"),
    [("", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")],
)
def test_a_published_port_is_probed_from_this_host(host_ip: str, expected: str):
    ports = (RP("9090/tcp", "", 30001), RP("8080/tcp", host_ip, 30002))
    assert probe_address(http(), ports, "172.18.0.5") == (expected, 30002)


def test_an_unpublished_port_is_probed_at_the_container_address():
    ports = (RP("8080/udp", "", 30001),)  # the same number over udp is not it
    assert probe_address(http(), ports, "172.18.0.5") == ("172.18.0.5", 8080)


def test_no_address_without_a_published_port_or_a_container_ip():
    assert probe_address(http(), (), "") is None
    assert probe_address(HealthSpec(kind="cmd", cmd=("true",)), (), "172.18.0.5") is None


# --- http ----------------------------------------------------------------------------


def test_http_ok(server: Server):
    probe = run_probe(http("/200?deep=1"), ("127.0.0.1", server.port), NO_ENGINE, "c1")
    assert probe.ok and probe.detail == "HTTP 200"
    assert 0 <= probe.latency < 5
    assert server.requests == [("/200?deep=1", "diplo-health")]


def test_http_500_is_unhealthy(server: Server):
    probe = run_probe(http("/500"), ("127.0.0.1", server.port), NO_ENGINE, "c1")
    assert not probe.ok and probe.detail == "HTTP 500"


def test_a_redirect_is_healthy_by_default(server: Server):
    assert run_probe(http("/302"), ("127.0.0.1", server.port), NO_ENGINE, "c1").ok


@pytest.mark.parametrize(("code", "ok"), [(204, True), (418, True), (200, False), (500, False)])
def test_http_status_ranges(server: Server, code: int, ok: bool):
    health = http(f"/{code}", status=((201, 204), (418, 418)))
    probe = run_probe(health, ("127.0.0.1", server.port), NO_ENGINE, "c1")
    assert probe.ok is ok and probe.detail == f"HTTP {code}"


def test_http_to_a_closed_port(closed_port: int):
    probe = run_probe(http(), ("127.0.0.1", closed_port), NO_ENGINE, "c1")
    assert not probe.ok and "refused" in probe.detail.lower()


def test_http_that_never_answers_times_out(silent_port: int):
    started = time.monotonic()
    probe = run_probe(http(timeout=0.2), ("127.0.0.1", silent_port), NO_ENGINE, "c1")
    assert not probe.ok and probe.detail == "timed out after 0.2s"
    assert 0.2 <= probe.latency < 5 and time.monotonic() - started < 5


def test_a_reply_that_is_not_http():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)

        def answer() -> None:
            conn, _ = s.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        t = threading.Thread(target=answer)
        t.start()
        probe = run_probe(http(), s.getsockname(), NO_ENGINE, "c1")
        t.join(5)
    assert not probe.ok and probe.detail == "bad HTTP response: 'SSH-2.0-OpenSSH_9.6'"


def test_http_without_an_address():
    probe = run_probe(http(), None, NO_ENGINE, "c1")
    assert not probe.ok and probe.detail == "port 8080 is neither published nor reachable"


# --- tcp -----------------------------------------------------------------------------


def test_tcp_to_an_open_port(silent_port: int):
    probe = run_probe(HealthSpec(kind="tcp", port=5432), ("127.0.0.1", silent_port), NO_ENGINE, "")
    assert probe.ok and probe.detail == f"tcp {silent_port} accepts"


def test_tcp_to_a_closed_port(closed_port: int):
    probe = run_probe(HealthSpec(kind="tcp", port=5432), ("127.0.0.1", closed_port), NO_ENGINE, "")
    assert not probe.ok and "refused" in probe.detail.lower()


# --- cmd -----------------------------------------------------------------------------


@pytest.fixture
def engine() -> MemoryRuntime:
    return MemoryRuntime(images={"busybox:latest": IMAGE_ID, "pg:16": IMAGE_ID})


def container(engine: MemoryRuntime, image: str) -> str:
    labels = {LABEL_PROJECT: "shop", LABEL_APP: "db", LABEL_SPEC_HASH: "h"}
    cid = engine.create(ContainerSpec(f"shop-{image[:2]}-1", image, labels, "diplo-shop"))
    engine.start(cid)
    return cid


CMD = HealthSpec(kind="cmd", cmd=("pg_isready",))


def test_cmd_that_exits_0(engine: MemoryRuntime):
    probe = run_probe(CMD, None, engine, container(engine, "busybox:latest"))
    assert probe.ok and probe.detail == "exit 0"


def test_cmd_that_fails_shows_its_last_line(engine: MemoryRuntime):
    engine.exec_results["pg:16"] = (2, "checking\n/var/run/postgresql:5432 - no response\n\n")
    cid = container(engine, "pg:16")
    probe = run_probe(CMD, ("127.0.0.1", 1), engine, cid)  # an address is not used
    assert not probe.ok
    assert probe.detail == "exit 2: /var/run/postgresql:5432 - no response"


def test_cmd_output_is_cut_at_200_characters(engine: MemoryRuntime):
    engine.exec_results["pg:16"] = (1, "x" * 500)
    probe = run_probe(CMD, None, engine, container(engine, "pg:16"))
    assert probe.detail == "exit 1: " + "x" * 200


def test_cmd_in_a_container_that_is_gone(engine: MemoryRuntime):
    probe = run_probe(CMD, None, engine, "f" * 64)
    assert not probe.ok and probe.detail == "no such container: ffffffffffff"
