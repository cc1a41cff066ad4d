"""The proxy adapter against the real Caddy, in its container, on the real engine.

Every test runs its own proxy (unique container and volume names, a temporary
DIPLO_HOME, free high ports) in front of busybox httpd containers on the default bridge;
everything carries the test label and is removed afterwards. The proxy image built from
the host's caddy is removed at the end of the session when it was not there before."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import os
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from diplo.errors import ImageUnavailable, InputError, ProxyRejected
from diplo.proxy import CertFiles, Proxy, ProxySettings, Route
from diplo.runtime.proxy_container import LABEL_ROLE, ProxyContainer

from .conftest import TEST_LABEL, free_port, remove_by_label

pytestmark = pytest.mark.docker


@dataclass
class Bench:
    api: docker.APIClient
    root: Path
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    proxies: list[Proxy] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return {TEST_LABEL: self.id}

    def proxy(self, **settings: object) -> Proxy:
        ports = {"http_port": self.http_port, "https_port": self.https_port, **settings}
        proxy = Proxy(
            self.root / "home",
            ProxySettings(**ports),  # type: ignore[arg-type]
            name=f"diplo-proxy-{self.id}",
            volume=f"diplo-proxy-{self.id}",
            labels=self.labels,
        )
        self.proxies.append(proxy)
        return proxy

    def app(self, name: str, text: str, healthy: bool = True) -> str:
        """A busybox httpd serving `text` at /, /up when `healthy`, a 2 s /cgi-bin/slow
        and a /cgi-bin/stream; its address."""
        www = self.root / f"www-{name}"
        (www / "cgi-bin").mkdir(parents=True)
        (www / "index.html").write_text(text + "\n")
        if healthy:
            (www / "up").write_text("ok\n")
        slow = www / "cgi-bin" / "slow"
        slow.write_text(
            f'#!/bin/sh\nsleep 2\nprintf "Content-Type: text/plain\\n\\nslow-{text}\\n"\n'
        )
        slow.chmod(0o755)
        stream = www / "cgi-bin" / "stream"  # server-sent events, 2 s apart
        stream.write_text(
            "#!/bin/sh\nprintf 'Content-Type: text/event-stream\\n\\n'\n"
            "echo 'data: one'; echo; sleep 2; echo 'data: two'; echo\n"
        )
        stream.chmod(0o755)
        container = self.api.create_container(
            "busybox:latest",
            ["httpd", "-f", "-p", "8080", "-h", "/www"],
            name=f"dt-proxy-{self.id}-{name}",
            labels=self.labels,
            host_config=self.api.create_host_config(binds=[f"{www}:/www:ro"], init=True),
        )
        self.api.start(container["Id"])
        ip = self.api.inspect_container(container["Id"])["NetworkSettings"]["IPAddress"]
        return f"{ip}:8080"

    def container(self) -> dict:
        return self.api.inspect_container(f"diplo-proxy-{self.id}")


@pytest.fixture
def bench(tmp_path: Path, docker_api: docker.APIClient, proxy_image: None) -> Iterator[Bench]:
    b = Bench(docker_api, tmp_path)
    try:
        yield b
    finally:
        for p in b.proxies:
            with contextlib.suppress(Exception):
                p.remove(volume=True)
            p.close()
        remove_by_label(docker_api, f"{TEST_LABEL}={b.id}")


def https_get(
    port: int, host: str, path: str = "/", *, ca: str | None, timeout: float = 5.0
) -> tuple[int, str]:
    """One HTTPS request on a new connection to 127.0.0.1:port with `host` as SNI and
    Host (like curl --resolve), verified against the CA `ca` (PEM)."""
    context = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return _exchange(tls, host, path)


def http_get(port: int, host: str, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return _exchange(sock, host, path)


def _exchange(sock: socket.socket, host: str, path: str) -> tuple[int, str]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    resp = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    resp.begin()
    body = resp.read().decode()
    if resp.status in (301, 302, 307, 308):
        return resp.status, f"Location: {resp.getheader('Location')}"
    return resp.status, body


def eventually(fn, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    """fn() once it stops raising (a certificate is issued just after a load)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_an_app_answers_over_https_with_the_internal_ca_and_http_redirects(bench: Bench) -> None:
    a = bench.app("a", "hello-a")
    proxy = bench.proxy()
    route = Route("p1/web", ("app.localhost",), (a,), tls="internal")
    assert proxy.ensure([route]).container == "created"
    ca = proxy.root_ca()
    assert ca.startswith("-----BEGIN CERTIFICATE-----")
    status, body = eventually(lambda: https_get(bench.https_port, "app.localhost", ca=ca))
    assert (status, body) == (200, "hello-a\n")
    # Verified against the internal CA: without it, the certificate is not trusted.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(bench.https_port, "app.localhost", ca=None)
    status, head = http_get(bench.http_port, "app.localhost", "/some/path?q=1")
    assert status == 308
    assert f"Location: https://app.localhost:{bench.https_port}/some/path?q=1" in head
    # A host no app serves gets a 404, not some app.
    assert http_get(bench.http_port, "other.localhost")[0] == 404

    (cert,) = proxy.certificates()
    assert cert.domain == "app.localhost"
    assert cert.issuer.startswith("Caddy Local Authority")
    assert cert.not_after is not None and cert.not_after > datetime.datetime.now(datetime.UTC)

    # Once Caddy has issued the certificate, the next ensure pins it (loads it from
    # storage in every later config); then ensure is idempotent and cheap.
    assert proxy.ensure([route]).loaded is True
    pairs = proxy.admin.config()["apps"]["tls"]["certificates"]["load_storage"]["pairs"]
    assert [p["certificate"] for p in pairs] == [
        "certificates/local/app.localhost/app.localhost.crt"
    ]
    started = time.monotonic()
    again = proxy.ensure([route])
    assert (again.container, again.loaded) == ("unchanged", False)
    assert time.monotonic() - started < 2

    # The container: host network, restarted by Docker, data in the volume, the admin
    # API only on a socket in a 0700 folder (no TCP admin port).
    info = bench.container()
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert info["Config"]["Labels"][LABEL_ROLE] == "proxy"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/data"]["Name"] == f"diplo-proxy-{bench.id}"
    assert mounts["/diplo"]["Source"] == str((bench.root / "home" / "proxy").resolve())
    assert (bench.root / "home" / "proxy").stat().st_mode & 0o777 == 0o700
    assert (bench.root / "home" / "proxy" / "admin.sock").is_socket()
    assert proxy.admin.config()["admin"]["listen"] == "unix//diplo/admin.sock"


def test_two_apps_on_two_domains_and_a_plain_http_one(bench: Bench) -> None:
    a, b, c = bench.app("a", "app-a"), bench.app("b", "app-b"), bench.app("c", "app-c")
    proxy = bench.proxy()
    proxy.ensure(
        [
            Route("p1/a", ("a.localhost", "www.a.localhost"), (a,), tls="internal"),
            Route("p1/b", ("b.localhost",), (b,)),  # auto: the internal CA for .localhost
            Route("p2/c", ("c.localhost",), (c,), tls="off"),
        ]
    )
    ca = proxy.root_ca()
    assert eventually(lambda: https_get(bench.https_port, "a.localhost", ca=ca))[1] == "app-a\n"
    assert eventually(lambda: https_get(bench.https_port, "www.a.localhost", ca=ca))[1] == "app-a\n"
    assert eventually(lambda: https_get(bench.https_port, "b.localhost", ca=ca))[1] == "app-b\n"
    assert http_get(bench.http_port, "c.localhost") == (200, "app-c\n")
    assert http_get(bench.http_port, "b.localhost")[0] == 308
    assert [c.domain for c in proxy.certificates()] == [
        "a.localhost",
        "b.localhost",
        "www.a.localhost",
    ]


def test_replicas_share_requests_and_an_unhealthy_one_gets_none(bench: Bench) -> None:
    a, b = bench.app("a", "app-a"), bench.app("b", "app-b")
    sick = bench.app("c", "app-c", healthy=False)  # answers /, but 404 on /up
    proxy = bench.proxy()
    spread = Route("p1/rr", ("rr.localhost",), (a, b), tls="off")
    checked = Route("p1/hc", ("hc.localhost",), (a, sick), tls="off", health_uri="/up")
    proxy.ensure([spread, checked])
    eventually(lambda: _equal(http_get(bench.http_port, "rr.localhost")[0], 200))
    assert {http_get(bench.http_port, "rr.localhost")[1] for _ in range(10)} == {
        "app-a\n",
        "app-b\n",
    }
    # Caddy checks every upstream when the config starts, then every 2 s.
    eventually(
        lambda: _equal(
            {http_get(bench.http_port, "hc.localhost")[1] for _ in range(10)}, {"app-a\n"}
        ),
        timeout=6,
    )


def test_a_proxy_image_that_is_nowhere_is_a_clear_error(bench: Bench) -> None:
    proxy = Proxy(
        bench.root / "home",
        ProxySettings(http_port=bench.http_port, https_port=bench.https_port),
        name=f"diplo-proxy-{bench.id}",
        volume=f"diplo-proxy-{bench.id}",
        image=f"diplo-test-missing/caddy:{bench.id}",
        labels=bench.labels,
    )
    bench.proxies.append(proxy)
    with pytest.raises(ImageUnavailable, match="is not on this host and cannot be pulled"):
        proxy.ensure([])
    with pytest.raises(docker.errors.NotFound):
        bench.container()


def test_switch_moves_traffic_with_no_failed_request(bench: Bench) -> None:
    a, b = bench.app("a", "app-a"), bench.app("b", "app-b")
    proxy = bench.proxy()
    route = Route("p1/web", ("app.localhost",), (a,), tls="internal")
    proxy.ensure([route])
    ca = proxy.root_ca()
    eventually(lambda: https_get(bench.https_port, "app.localhost", ca=ca))
    proxy.ensure([route])  # pins the certificate now issued
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status, body = https_get(bench.https_port, "app.localhost", ca=ca)
                (answers if status == 200 else failures).append(
                    body if status == 200 else str(status)
                )
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for target in [b, a] * 7 + [b]:  # 15 switches
            time.sleep(0.15)
            proxy.switch("p1/web", [target])
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"switch under load: {len(answers)} answers, failures: {failures}")
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    assert failures == [], (
        f"{len(failures)} of {len(answers) + len(failures)} requests failed; "
        f"net.ipv4.tcp_migrate_req is {migrate.read_text().strip()} (`make engine` sets 1)"
    )
    assert len(answers) > 50, answers
    assert {"app-a\n", "app-b\n"} <= set(answers)
    assert answers[-5:] == ["app-b\n"] * 5  # after the last switch, only b
    # The switch kept the rest of the config: ensure() with b finds nothing to load.
    assert proxy.ensure([Route("p1/web", ("app.localhost",), (b,), tls="internal")]).loaded is False


def test_in_flight_counts_a_slow_request_through_a_switch(bench: Bench) -> None:
    a, b = bench.app("a", "app-a"), bench.app("b", "app-b")
    proxy = bench.proxy()
    proxy.ensure([Route("p1/web", ("app.localhost",), (a,), tls="internal")])
    ca = proxy.root_ca()
    eventually(lambda: https_get(bench.https_port, "app.localhost", ca=ca))
    result: list[tuple[int, str]] = []
    slow = threading.Thread(
        target=lambda: result.append(
            https_get(bench.https_port, "app.localhost", "/cgi-bin/slow", ca=ca)
        )
    )
    slow.start()
    eventually(lambda: _equal(proxy.in_flight([a]), 1), timeout=2)
    assert proxy.in_flight([b]) == 0
    proxy.switch("p1/web", [b])  # a drains
    assert https_get(bench.https_port, "app.localhost", ca=ca) == (200, "app-b\n")
    assert proxy.in_flight([a]) == 1  # still counted while it drains
    assert proxy.in_flight([a, b]) == 1
    slow.join(10)
    assert result == [(200, "slow-app-a\n")]  # the switch did not cut it
    assert proxy.in_flight([a]) == 0


def _equal(value: object, wanted: object) -> None:
    assert value == wanted, value


def test_a_stream_passes_through_as_it_is_written(bench: Bench) -> None:
    """No `flush_interval: -1` (it would make switches cut requests in Caddy 2.6), and
    yet an event stream reaches the client event by event, not at its end."""
    a = bench.app("a", "app-a")
    proxy = bench.proxy()
    proxy.ensure([Route("p1/web", ("app.localhost",), (a,), tls="internal")])
    ca = proxy.root_ca()
    eventually(lambda: https_get(bench.https_port, "app.localhost", ca=ca))
    context = ssl.create_default_context(cadata=ca)
    with (
        socket.create_connection(("127.0.0.1", bench.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="app.localhost") as tls,
    ):
        request = "GET /cgi-bin/stream HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n"
        started = time.monotonic()
        tls.sendall(request.encode())
        seen = b""
        while b"data: one" not in seen:
            seen += tls.recv(4096)
        first = time.monotonic() - started
        while chunk := tls.recv(4096):
            seen += chunk
        total = time.monotonic() - started
    assert first < 1.5 < 2 <= total, (first, total)
    assert b"data: two" in seen


def test_a_killed_proxy_comes_back_with_every_route(bench: Bench) -> None:
    a, b = bench.app("a", "app-a"), bench.app("b", "app-b")
    proxy = bench.proxy()
    routes = [
        Route("p1/a", ("a.localhost",), (a,), tls="internal"),
        Route("p1/b", ("b.localhost",), (b,), tls="internal"),
    ]
    proxy.ensure(routes)
    ca = proxy.root_ca()
    eventually(lambda: https_get(bench.https_port, "a.localhost", ca=ca))
    eventually(lambda: https_get(bench.https_port, "b.localhost", ca=ca))
    proxy.ensure(routes)  # pins the certificates now issued

    # Caddy dies by itself (its process killed): Docker's restart policy brings it back,
    # and Caddy resumes its last config from the volume, before Diplo looks.
    pid = bench.container()["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: https_get(bench.https_port, "a.localhost", ca=ca))[1] == "app-a\n"
    assert bench.container()["RestartCount"] >= 1

    # `docker kill` counts as stopped by hand: Docker leaves it down; ensure() heals it.
    bench.api.kill(f"diplo-proxy-{bench.id}")
    eventually(lambda: _equal(bench.container()["State"]["Running"], False), timeout=5)
    time.sleep(1)  # and Docker does not start it again
    assert bench.container()["State"]["Running"] is False
    with pytest.raises(OSError):
        https_get(bench.https_port, "a.localhost", ca=ca, timeout=1)
    healed = proxy.ensure(routes)
    assert healed.container == "started"
    assert healed.loaded is False  # it resumed the very config Diplo derived
    assert proxy.root_ca() == ca  # same CA: it lives in the volume
    assert eventually(lambda: https_get(bench.https_port, "a.localhost", ca=ca))[1] == "app-a\n"
    assert eventually(lambda: https_get(bench.https_port, "b.localhost", ca=ca))[1] == "app-b\n"

    # Removed altogether: created again, config loaded again.
    ProxyContainer(bench.api).remove(f"diplo-proxy-{bench.id}")
    assert proxy.ensure(routes) == type(healed)("created", False)
    assert eventually(lambda: https_get(bench.https_port, "b.localhost", ca=ca))[1] == "app-b\n"


def test_a_refused_config_is_a_clear_error_and_the_old_one_keeps_serving(bench: Bench) -> None:
    a = bench.app("a", "app-a")
    proxy = bench.proxy()
    good = Route("p1/web", ("app.localhost",), (a,), tls="internal")
    proxy.ensure([good])
    ca = proxy.root_ca()
    eventually(lambda: https_get(bench.https_port, "app.localhost", ca=ca))

    # A certificate file that is no certificate: Caddy refuses the whole config.
    (bench.root / "bad.pem").write_text("not a certificate\n")
    bad = Route(
        "p1/own",
        ("own.localhost",),
        (a,),
        tls=CertFiles(str(bench.root / "bad.pem"), str(bench.root / "bad.pem")),
    )
    with pytest.raises(ProxyRejected) as err:
        proxy.ensure([good, bad])
    assert str(err.value).startswith("Caddy refused loading a config: loading config:")
    assert "PEM" in str(err.value) and "Traceback" not in str(err.value)
    assert https_get(bench.https_port, "app.localhost", ca=ca) == (200, "app-a\n")

    # A port another process holds: refused too, and the old ports still serve.
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        moved = bench.proxy(http_port=busy.getsockname()[1])
        with pytest.raises(ProxyRejected, match="address already in use"):
            moved.ensure([good])
    assert https_get(bench.https_port, "app.localhost", ca=ca) == (200, "app-a\n")
    assert http_get(bench.http_port, "app.localhost")[0] == 308

    # Bad routes never reach Caddy.
    with pytest.raises(InputError, match="not host:port"):
        proxy.switch("p1/web", ["nowhere"])
    with pytest.raises(ProxyRejected, match="unknown object ID"):
        proxy.switch("p1/missing", [a])
    assert https_get(bench.https_port, "app.localhost", ca=ca) == (200, "app-a\n")


def test_an_app_brings_its_own_certificate(bench: Bench) -> None:
    a = bench.app("a", "app-a")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Own Test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)  # self-signed: the test trusts it as its own root
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=3))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("own.example.com")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = bench.root / "own.crt", bench.root / "own.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    proxy = bench.proxy()
    tls = CertFiles(str(cert_file), str(key_file))
    proxy.ensure([Route("p1/own", ("own.example.com",), (a,), tls=tls)])
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    status, body = eventually(lambda: https_get(bench.https_port, "own.example.com", ca=pem))
    assert (status, body) == (200, "app-a\n")
    (served,) = proxy.certificates()
    assert served.issuer == "Own Test CA"
    assert served.not_after == cert.not_valid_after_utc
    copies = sorted(p.name for p in (bench.root / "home" / "proxy" / "certs").iterdir())
    assert sorted(c.rsplit(".", 2)[1] for c in copies) == ["cert", "key"]
    assert all(
        (bench.root / "home" / "proxy" / "certs" / c).stat().st_mode & 0o077 == 0 for c in copies
    )


def test_remove_takes_the_container_and_with_the_flag_the_volume(bench: Bench) -> None:
    a = bench.app("a", "app-a")
    proxy = bench.proxy()
    proxy.ensure([Route("p1/web", ("app.localhost",), (a,), tls="internal")])
    proxy.remove()
    with pytest.raises(docker.errors.NotFound):
        bench.container()
    assert bench.api.inspect_volume(f"diplo-proxy-{bench.id}")  # kept: certificates, CA
    assert not (bench.root / "home" / "proxy").exists()
    proxy.remove(volume=True)
    with pytest.raises(docker.errors.NotFound):
        bench.api.inspect_volume(f"diplo-proxy-{bench.id}")
