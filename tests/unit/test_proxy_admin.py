"""The admin client's errors, against real UNIX sockets: a proxy that is not there, one
that does not answer in time, and one that refuses a request with Caddy's error shape."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from diplo.errors import ProxyRejected, ProxyUnavailable
from diplo.proxy.admin import AdminClient


class FakeCaddy(BaseHTTPRequestHandler):
    """Answers like Caddy: /load refuses configs whose admin is missing, the rest echo."""

    def do_GET(self) -> None:
        if self.path == "/reverse_proxy/upstreams":
            body = [{"address": "10.0.0.2:80", "num_requests": 3, "fails": 0}]
            return self._send(200, json.dumps(body))
        if self.path == "/pki/ca/local":
            return self._send(200, json.dumps({"root_certificate": "-----BEGIN CERT"}))
        if self.path == "/broken":
            return self._send(500, "plain text failure")
        return self._send(200, json.dumps({"host": self.headers.get("Host")}))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        config = json.loads(self.rfile.read(length))
        if "admin" not in config:
            msg = "loading config: loading new config: http app module: start: listening on :80"
            return self._send(400, json.dumps({"error": msg}))
        return self._send(200, "")

    def _send(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, _ = super().get_request()
        return sock, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "admin.sock"
    server = UnixServer(str(path), FakeCaddy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


def test_calls_reach_the_socket_with_a_host_caddy_accepts(caddy: Path) -> None:
    with AdminClient(caddy) as admin:
        assert admin.config() == {"host": "localhost"}
        assert admin.upstreams() == {"10.0.0.2:80": 3}
        assert admin.root_ca() == "-----BEGIN CERT"
        admin.load({"admin": {}})


def test_a_refused_config_raises_caddys_message(caddy: Path) -> None:
    with AdminClient(caddy) as admin, pytest.raises(ProxyRejected) as err:
        admin.load({"apps": {}})
    assert str(err.value) == (
        "Caddy refused loading a config: loading config: loading new config: "
        "http app module: start: listening on :80"
    )
    assert err.value.retryable is False


def test_a_refusal_without_caddys_json_keeps_its_text(caddy: Path) -> None:
    with AdminClient(caddy) as admin, pytest.raises(ProxyRejected, match="plain text failure"):
        admin.get("x", "../../broken")


def test_no_socket_means_unavailable_with_a_hint(tmp_path: Path) -> None:
    with AdminClient(tmp_path / "absent.sock") as admin, pytest.raises(ProxyUnavailable) as err:
        admin.config()
    text = str(err.value)
    assert f"cannot reach Caddy's admin API ({tmp_path / 'absent.sock'})" in text
    assert "no such file or directory" in text
    assert "hint:" in text and err.value.retryable


def test_a_stale_socket_means_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: what a killed Caddy leaves
    with AdminClient(path) as admin, pytest.raises(ProxyUnavailable, match="connection refused"):
        admin.upstreams()


def test_a_proxy_that_does_not_answer_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(1)  # accepts (in the kernel) and never answers
    try:
        with AdminClient(path, timeout=0.3) as admin:
            started = time.monotonic()
            with pytest.raises(ProxyUnavailable, match=r"did not answer within 0\.3 s"):
                admin.config()
            assert time.monotonic() - started < 5
    finally:
        sock.close()
