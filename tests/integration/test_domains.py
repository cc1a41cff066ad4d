"""Apps with domains, end to end: `diplo apply` runs the host's Caddy, serves each app's
replicas over HTTPS at its domains, deploys start-first with no failed request, keeps a
broken release away from traffic, scales without dropping requests, and brings a killed
proxy back with every route. Each test has its own proxy (name, volume, free ports in
$DIPLO_HOME/config.yaml), removed afterwards."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from diplo.proxy import Proxy, ProxySettings

from .conftest import Sandbox, free_port, site
from .test_proxy import eventually, http_get, https_get
from .test_serve import Server

pytestmark = pytest.mark.docker


@dataclass
class Site:
    box: Sandbox
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)

    @property
    def name(self) -> str:
        return self.box.proxy

    def configure(self) -> None:
        self.box.home.mkdir(parents=True, exist_ok=True)
        (self.box.home / "config.yaml").write_text(
            f"proxy:\n  name: {self.name}\n  http_port: {self.http_port}\n"
            f"  https_port: {self.https_port}\n"
        )

    def proxy(self) -> Proxy:
        settings = ProxySettings(self.http_port, self.https_port)
        return Proxy(self.box.home, settings, name=self.name, volume=f"{self.name}-data")

    def get(self, domain: str, path: str = "/", ca: str | None = None) -> tuple[int, str]:
        return https_get(self.https_port, domain, path, ca=ca or self.ca)

    @property
    def ca(self) -> str:
        proxy = self.proxy()
        try:
            return proxy.root_ca()
        finally:
            proxy.close()


@pytest.fixture
def web(sandbox: Sandbox, proxy_image: None) -> Iterator[Site]:
    s = Site(sandbox)
    s.configure()
    try:
        yield s
    finally:
        proxy = s.proxy()
        with contextlib.suppress(Exception):
            proxy.remove(volume=True)
        proxy.close()


def app_spec(box: Sandbox, text: str, **extra: Any) -> dict[str, Any]:
    """busybox httpd serving `text` at / and its own hostname at /cgi-bin/who."""
    www = Path(site(box.root, f"www-{text}", text))
    cgi = www / "cgi-bin"
    cgi.mkdir(exist_ok=True)
    (cgi / "who").write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'; hostname\n")
    (cgi / "who").chmod(0o755)
    return {
        "image": "busybox:latest",
        "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "init": True,
        "ports": ["8080"],
        "volumes": [f"{www}:/www:ro"],
        "health": {"http": {"path": "/", "port": 8080}, "interval": "200ms"},
        "tls": "internal",
        **extra,
    }


class Loop:
    """A client asking the domain over and over, on new connections, in a thread."""

    def __init__(self, site_: Site, domain: str) -> None:
        self.site, self.domain, self.ca = site_, domain, site_.ca
        self.bodies: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = self.site.get(self.domain, ca=self.ca)
                if status != 200:
                    self.failures.append(f"{status} {body[:80]}")
                else:
                    self.bodies.append(body.strip())
            except Exception as exc:
                self.failures.append(repr(exc))
            time.sleep(0.02)

    def stop(self) -> Loop:
        self._stop.set()
        self._thread.join(10)
        return self


def test_replicas_behind_a_domain_over_https_and_a_start_first_deploy_drops_nothing(
    sandbox: Sandbox, web: Site
):
    box = sandbox
    app, domain = box.name("web"), f"web-{box.id}.localhost"
    box.manifest({app: app_spec(box, "v1", domains=[domain], replicas=2)})
    box.diplo("apply", check=True)
    assert len(box.containers(app, all=False)) == 2
    assert eventually(lambda: web.get(domain)) == (200, "v1\n")
    # HTTP redirects to HTTPS, keeping the port
    status, location = http_get(web.http_port, domain)
    assert status == 308 and location == f"Location: https://{domain}:{web.https_port}/"
    # Both replicas get requests.
    seen = {web.get(domain, "/cgi-bin/who")[1].strip() for _ in range(20)}
    assert len(seen) == 2
    # status shows the domain, and the certificate Caddy serves for it
    shown = box.diplo("status", check=True).stdout
    line = next(row for row in shown.splitlines() if domain in row)
    assert app in line and "internal" in line and "Caddy Local Authority" in line
    assert box.status()[app]["domains"] == [domain]

    loop = Loop(web, domain)
    time.sleep(0.5)
    box.manifest({app: app_spec(box, "v2", domains=[domain], replicas=2)})
    box.diplo("apply", check=True)
    time.sleep(0.5)
    loop.stop()
    assert loop.failures == []
    assert loop.bodies[0] == "v1" and loop.bodies[-1] == "v2"
    assert set(loop.bodies) == {"v1", "v2"} and len(loop.bodies) > 20
    first_v2 = loop.bodies.index("v2")
    assert "v1" not in loop.bodies[first_v2:]  # one switch, not a mix afterwards
    assert len(box.containers(app, all=True)) == 2  # the old replicas are gone


def test_a_broken_release_never_gets_a_request_and_a_scale_drops_none(sandbox: Sandbox, web: Site):
    box = sandbox
    app, domain = box.name("web"), f"shop-{box.id}.localhost"
    good = app_spec(box, "good", domains=[domain], replicas=3)
    box.manifest({app: good})
    box.diplo("apply", check=True)
    eventually(lambda: web.get(domain))
    ids = {c["Id"] for c in box.containers(app, all=False)}

    loop = Loop(web, domain)
    broken = app_spec(box, "broken", domains=[domain], replicas=3)
    broken["health"] = {"http": {"path": "/missing", "port": 8080}, "retries": 2}
    broken["deploy"] = {"timeout": "15s"}
    box.manifest({app: broken})
    failed = box.diplo("apply")
    assert failed.returncode == 1
    for n in (1, 3):  # 3 -> 1 -> 3
        box.manifest({app: {**good, "replicas": n}})
        box.diplo("apply", check=True)
        assert len(box.containers(app, all=False)) == n
    loop.stop()
    assert loop.failures == [] and set(loop.bodies) == {"good"}
    survivors = {c["Id"] for c in box.containers(app, all=False)}
    assert len(survivors & ids) >= 1  # replica 1 was never restarted


def test_a_killed_proxy_comes_back_with_every_route(sandbox: Sandbox, web: Site):
    box = sandbox
    apps = {box.name(n): f"{n}-{box.id}.localhost" for n in ("a", "b")}
    box.manifest({a: app_spec(box, a, domains=[d]) for a, d in apps.items()})
    box.diplo("apply", check=True)
    for a, d in apps.items():
        assert eventually(lambda d=d: web.get(d)) == (200, f"{a}\n")
    box.api.kill(web.name)
    box.diplo("apply", check=True)  # nothing to deploy: the proxy alone is brought back
    assert box.api.inspect_container(web.name)["State"]["Running"]
    for a, d in apps.items():
        assert eventually(lambda d=d: web.get(d)) == (200, f"{a}\n")


def test_down_takes_the_route_away_and_the_last_one_the_proxy(sandbox: Sandbox, web: Site):
    box = sandbox
    apps = {box.name(n): f"{n}-{box.id}.localhost" for n in ("a", "b")}
    box.manifest({a: app_spec(box, a, domains=[d]) for a, d in apps.items()})
    box.diplo("apply", check=True)
    (a, da), (b, db) = apps.items()
    eventually(lambda: web.get(db))
    box.diplo("down", a, check=True)
    assert eventually(lambda: web.get(db)) == (200, f"{b}\n")
    # an unknown host now: no certificate for it, or a 404 if one is still stored
    with contextlib.suppress(ssl.SSLError):
        assert web.get(da)[0] == 404
    out = box.diplo("down", b, check=True).stdout
    assert f"proxy {web.name}" in out
    assert not [c for c in box.api.containers(all=True) if f"/{web.name}" in c["Names"]]


def test_serve_brings_a_killed_proxy_back_by_itself(sandbox: Sandbox, web: Site):
    box = sandbox
    app, domain = box.name("web"), f"served-{box.id}.localhost"
    box.manifest({app: app_spec(box, "served", domains=[domain])})
    srv = Server(box).start()
    try:
        assert eventually(lambda: web.get(domain), 60) == (200, "served\n")
        box.api.kill(web.name)
        began = time.monotonic()
        assert eventually(lambda: web.get(domain), 30) == (200, "served\n")
        assert time.monotonic() - began < 15
    finally:
        srv.stop()
    # Brought back by serve (its health loop, or a resync if that came first), not Docker.
    assert "action=started" in srv.output and "proxy.container" in srv.output


def test_a_route_left_on_a_removed_replica_is_served_again(sandbox: Sandbox, web: Site):
    """A start-first deploy interrupted between its switch and its end (Ctrl-C, a kill of
    `diplo serve`) can leave Caddy sending an app's requests to a container that is gone:
    every request fails until the app's next switch. `diplo serve`'s resync and a
    `diplo apply` each send them to the app's running replicas again."""
    box = sandbox
    app, domain = box.name("web"), f"stale-{box.id}.localhost"
    box.manifest({app: app_spec(box, "stale", domains=[domain])})
    box.diplo("apply", check=True)
    assert eventually(lambda: web.get(domain)) == (200, "stale\n")

    def strand() -> None:  # the state such an interruption leaves: no container there
        proxy = web.proxy()
        try:
            proxy.switch(f"{box.project}/{app}", ["127.0.0.1:1"])
        finally:
            proxy.close()
        try:  # Caddy holds a request a while for an upstream to answer, then fails it
            status = https_get(web.https_port, domain, ca=web.ca, timeout=2.0)[0]
        except OSError:
            status = None
        assert status != 200

    def answered() -> tuple[int, str]:
        got = web.get(domain)
        assert got[0] == 200, got
        return got

    strand()
    box.diplo("apply", check=True)  # nothing to deploy
    assert web.get(domain) == (200, "stale\n")

    srv = Server(box).start()  # a resync every 5 s
    try:
        assert eventually(lambda: srv.get(f"/apps/{app}"), 30)
        strand()
        assert eventually(answered, 30) == (200, "stale\n")
    finally:
        srv.stop()
