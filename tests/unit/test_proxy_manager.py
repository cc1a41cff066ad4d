"""The Proxy facade with a stand-in for its container and a stateful fake of Caddy's
admin API on a real UNIX socket (the real Caddy is in tests/integration/test_proxy.py):
what ensure loads and when, what a switch leaves draining, certificate files, and bad
input that changes nothing."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from diplo.errors import InputError
from diplo.proxy import CertFiles, Proxy, ProxySettings, Route
from diplo.proxy.certs import served

from .test_proxy_admin import UnixServer

A, B = "10.0.0.2:8080", "10.0.0.3:8080"


def _find(node: Any, ident: str) -> dict[str, Any] | None:
    if isinstance(node, dict):
        if node.get("@id") == ident:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            if (hit := _find(child, ident)) is not None:
                return hit
    return None


class StatefulCaddy(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:
        if self.path == "/config/":
            return self._send(200, self.server.config)
        if self.path == "/reverse_proxy/upstreams":
            rows = [{"address": a, "num_requests": n} for a, n in self.server.counts.items()]
            return self._send(200, rows)
        ident, _, field = self.path.removeprefix("/id/").partition("/")
        obj = _find(self.server.config, ident)
        if obj is None:
            return self._send(404, {"error": f"unknown object ID '{ident}'"})
        return self._send(200, obj.get(field) if field else obj)

    def do_POST(self) -> None:
        self.server.config = self._body()
        self.server.loads += 1
        self._send(200, None)

    def do_PATCH(self) -> None:
        ident, _, field = self.path.removeprefix("/id/").partition("/")
        obj = _find(self.server.config, ident)
        if obj is None:
            return self._send(404, {"error": f"unknown object ID '{ident}'"})
        obj[field] = self._body()
        self._send(200, None)

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def _send(self, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class FakeContainer:
    """Stands in for ProxyContainer: `ensure` starts the fake Caddy on the socket."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.server: UnixServer | None = None
        self.stored: list[str] = []

    def ensure(self, spec: Any) -> str:
        self.calls.append("ensure")
        self.spec = spec
        if self.server is not None:
            return "unchanged"
        self.server = UnixServer(str(Path(spec.state_dir) / "admin.sock"), StatefulCaddy)
        self.server.config = json.loads((Path(spec.state_dir) / "boot.json").read_text())
        self.server.loads = 0
        self.server.counts = {}
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return "created"

    def stored_certificates(self, name: str) -> list[str]:
        return self.stored

    def remove(self, name: str, volume: str | None = None) -> None:
        self.calls.append(f"remove {name} {volume}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeContainer]:
    container = FakeContainer()
    yield container
    container.stop()


def make(tmp_path: Path, fake: FakeContainer) -> Proxy:
    return Proxy(tmp_path / "home", ProxySettings(http_port=8080, https_port=8443), runtime=fake)


def test_ensure_starts_the_container_loads_once_and_then_does_nothing(
    tmp_path: Path, fake: FakeContainer
) -> None:
    proxy = make(tmp_path, fake)
    routes = [Route("p/a", ("a.localhost",), (A,), tls="internal")]
    assert (proxy.ensure(routes).container, proxy.ensure(routes).loaded) == ("created", False)
    assert fake.server is not None and fake.server.loads == 1
    state = tmp_path / "home" / "proxy"
    assert state.stat().st_mode & 0o777 == 0o700
    boot = json.loads((state / "boot.json").read_text())
    assert boot == {"admin": {"listen": "unix//diplo/admin.sock", "origins": ["localhost"]}}
    assert fake.spec.command == ("run", "--resume", "--config", "/diplo/boot.json")
    assert fake.spec.state_dir == str(state.resolve())
    assert proxy.tls_domains() == ["a.localhost"]
    # A changed route is a new load.
    proxy.ensure([Route("p/a", ("a.localhost", "b.localhost"), (A,), tls="internal")])
    assert fake.server.loads == 2


def test_certificates_caddy_stored_are_pinned_by_the_next_ensure(
    tmp_path: Path, fake: FakeContainer
) -> None:
    proxy = make(tmp_path, fake)
    routes = [Route("p/a", ("a.localhost",), (A,))]
    assert proxy.ensure(routes).loaded
    base = "certificates/local/a.localhost/a.localhost"
    fake.stored = [f"{base}.crt", f"{base}.key"]  # Caddy issued it meanwhile
    assert proxy.ensure(routes).loaded
    pairs = fake.server.config["apps"]["tls"]["certificates"]["load_storage"]["pairs"]  # type: ignore[union-attr]
    assert pairs == [{"certificate": f"{base}.crt", "key": f"{base}.key"}]
    assert not proxy.ensure(routes).loaded


def test_bad_routes_change_nothing(tmp_path: Path, fake: FakeContainer) -> None:
    proxy = make(tmp_path, fake)
    with pytest.raises(InputError, match="not host:port"):
        proxy.ensure([Route("p/a", ("a.localhost",), ("nowhere",))])
    assert fake.calls == []
    assert not (tmp_path / "home").exists()


def test_a_switch_leaves_the_old_upstreams_draining_and_ensure_keeps_them(
    tmp_path: Path, fake: FakeContainer
) -> None:
    proxy = make(tmp_path, fake)
    proxy.ensure([Route("p/a", ("a.localhost",), (A,))])
    proxy.switch("p/a", [B])
    config = fake.server.config  # type: ignore[union-attr]
    assert _find(config, "upstreams:p:a")["upstreams"] == [{"dial": B}]  # type: ignore[index]
    assert _find(config, "draining:p:a")["upstreams"] == [{"dial": A}]  # type: ignore[index]
    fake.server.counts = {A: 2, B: 1}  # type: ignore[union-attr]
    assert proxy.in_flight([A]) == 2
    assert proxy.in_flight([A, B, "10.9.9.9:1"]) == 3
    # The routes now say B: nothing to load, and A stays counted.
    assert proxy.ensure([Route("p/a", ("a.localhost",), (B,))]).loaded is False
    # Switching back to A: A is served again, B drains.
    proxy.switch("p/a", [A, A])
    assert _find(fake.server.config, "draining:p:a")["upstreams"] == [{"dial": B}]  # type: ignore[index, union-attr]


def test_certificate_files_are_copied_where_caddy_reads_them(
    tmp_path: Path, fake: FakeContainer
) -> None:
    (tmp_path / "c.pem").write_text("CERT\n")
    (tmp_path / "k.pem").write_text("KEY\n")
    proxy = make(tmp_path, fake)
    tls = CertFiles(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    proxy.ensure([Route("p/a", ("a.example.com",), (A,), tls=tls)])
    certs = tmp_path / "home" / "proxy" / "certs"
    copies = sorted(certs.iterdir())
    assert sorted(p.read_text() for p in copies) == ["CERT\n", "KEY\n"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in copies)
    (loaded,) = fake.server.config["apps"]["tls"]["certificates"]["load_files"]  # type: ignore[union-attr]
    assert (
        loaded["certificate"] == f"/diplo/certs/{next(p.name for p in copies if 'cert' in p.name)}"
    )
    # No longer used: removed.
    proxy.ensure([Route("p/a", ("a.example.com",), (A,))])
    assert list(certs.iterdir()) == []
    # A file that cannot be read: a clear error, nothing loaded.
    loads = fake.server.loads  # type: ignore[union-attr]
    missing = CertFiles(str(tmp_path / "gone.pem"), str(tmp_path / "k.pem"))
    with pytest.raises(InputError, match=r"p/a: cannot read the tls cert file .*gone\.pem"):
        proxy.ensure([Route("p/a", ("a.example.com",), (A,), tls=missing)])
    assert fake.server.loads == loads  # type: ignore[union-attr]


def test_remove_removes_the_container_and_the_state_folder(
    tmp_path: Path, fake: FakeContainer
) -> None:
    proxy = make(tmp_path, fake)
    proxy.ensure([])
    proxy.remove(volume=True)
    assert fake.calls[-1] == "remove diplo-proxy diplo-proxy-data"
    assert not (tmp_path / "home" / "proxy").exists()


def test_served_reads_the_certificate_a_tls_server_presents(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unit CA")])
    until = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(until)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        got = served("a.localhost", port)
    finally:
        thread.join(5)
        listener.close()
    assert (got.domain, got.issuer, got.not_after, got.error) == (
        "a.localhost",
        "Unit CA",
        until,
        "",
    )
    # Nothing listening: no certificate, and why.
    nothing = served("a.localhost", port, timeout=1)
    assert nothing.issuer == "" and nothing.not_after is None and nothing.error
