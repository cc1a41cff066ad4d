"""`Proxy`: what ops calls to run the host's Caddy. It keeps the container right, loads
the config derived from the routes it is given (Caddy's admin API is the only writer),
switches one app's upstreams, and reads what is in flight and which certificates are
served. Its state on the host is $DIPLO_HOME/proxy (mode 0700): the admin socket, the
boot config, and copies of the certificate files apps bring (`certs/`), which is how
Caddy, in its container, reads them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from diplo.errors import InputError, ProxyUnavailable
from diplo.proxy.admin import AdminClient
from diplo.proxy.certs import Certificate, served
from diplo.proxy.config import (
    ACCESS_DIR,
    ACCESS_FILE,
    ADMIN_SOCKET,
    CertFiles,
    ProxySettings,
    Route,
    boot_config,
    build_config,
    check_switch,
    draining_id,
    draining_of,
    upstreams_id,
    with_draining,
)
from diplo.runtime.proxy_container import STATE_MOUNT, ProxyContainer, ProxyContainerSpec

log = structlog.get_logger("diplo.proxy")

NAME = "diplo-proxy"
VOLUME = "diplo-proxy-data"
BOOT = "boot.json"
MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"
START_WAIT = 20.0  # seconds for a (re)started Caddy to open its admin socket


@dataclass(frozen=True)
class Ensured:
    container: str  # created, recreated, started or unchanged
    loaded: bool  # False: Caddy already ran this config


class Proxy:
    def __init__(
        self,
        home: Path,
        settings: ProxySettings | None = None,
        *,
        name: str = NAME,
        volume: str = VOLUME,
        image: str | None = None,
        labels: Mapping[str, str] | None = None,
        runtime: ProxyContainer | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.settings = settings or ProxySettings()
        if self.settings.admin_socket != ADMIN_SOCKET:
            raise InputError(f"the proxy's admin socket is {ADMIN_SOCKET} in its container")
        self.state_dir = Path(home) / "proxy"
        self.name = name
        self.volume = volume
        self.image = image
        self.labels = dict(labels or {})
        self.runtime = runtime or ProxyContainer()
        self.admin = AdminClient(self.state_dir / Path(ADMIN_SOCKET).name, timeout=timeout)
        self._warned = False

    def close(self) -> None:
        self.admin.close()

    @property
    def access_log(self) -> Path:
        """Caddy's access log on the host (diplo/metrics/requests.py reads it)."""
        return self.state_dir / ACCESS_DIR / ACCESS_FILE

    # --- the whole proxy -----------------------------------------------------------------

    def ensure(self, routes: Sequence[Route]) -> Ensured:
        """The container running with the right settings and Caddy serving exactly these
        routes. Cheap when nothing changed: a few engine calls and one GET of Caddy's
        config (about 15 ms)."""
        build_config(self.settings, routes)  # bad routes: an InputError, nothing touched
        self._prepare_state_dir()
        staged = [self._stage(r) for r in routes]
        self._check_reload_safety()
        action = self.runtime.ensure(self._spec())
        current = self._wait_answers(START_WAIT)
        stored = self.runtime.stored_certificates(self.name)
        desired = build_config(self.settings, staged, stored)
        # What a switch left draining stays counted until the next switch of that app.
        carry = {r.key: draining_of(current).get(draining_id(r.key), []) for r in routes}
        desired = with_draining(desired, {k: v for k, v in carry.items() if v})
        loaded = current != desired
        if loaded:
            self.admin.load(desired)
            log.info("proxy config loaded", routes=len(routes), container=action)
        self._prune_certs(staged)
        return Ensured(action, loaded)

    def remove(self, volume: bool = False) -> None:
        """Remove the container; with `volume`, Caddy's data too (certificates, its CA)."""
        self.runtime.remove(self.name, self.volume if volume else None)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # --- one app -------------------------------------------------------------------------

    def switch(self, key: str, upstreams: Sequence[str]) -> None:
        """Send an app's new requests to `upstreams`, atomically; requests in flight on
        the old ones finish there. The old ones (those not in `upstreams`) are left in
        the app's draining holder: Caddy keeps counting their requests (`in_flight`)
        until this app's next switch. (The executor's `Router` protocol.)"""
        check_switch(key, upstreams)
        new = sorted(upstreams)
        old = [str(u.get("dial", "")) for u in self.admin.get(upstreams_id(key), "upstreams") or []]
        draining = sorted(set(old) - set(new))
        self.admin.set_upstreams(draining_id(key), draining)
        self.admin.set_upstreams(upstreams_id(key), new)
        log.info("proxy switched", app=key, upstreams=new, draining=draining)

    def in_flight(self, upstreams: Sequence[str]) -> int:
        """Requests the proxy has in flight to these upstreams now."""
        counts = self.admin.upstreams()
        return sum(counts.get(u, 0) for u in set(upstreams))

    # --- reading -------------------------------------------------------------------------

    def certificates(self) -> list[Certificate]:
        """Each HTTPS domain Caddy serves, with the issuer and expiry of its certificate."""
        return [served(d, self.settings.https_port) for d in self.tls_domains()]

    def tls_domains(self) -> list[str]:
        config = self.admin.config() or {}
        servers = ((config.get("apps") or {}).get("http") or {}).get("servers") or {}
        domains: set[str] = set()
        for route in (servers.get("https") or {}).get("routes") or []:
            for match in route.get("match") or []:
                domains.update(match.get("host") or [])
        return sorted(domains)

    def root_ca(self) -> str:
        """The PEM root of Caddy's internal CA: what clients trust for `tls: internal`."""
        return self.admin.root_ca()

    # --- internals -----------------------------------------------------------------------

    def _spec(self) -> ProxyContainerSpec:
        return ProxyContainerSpec(
            name=self.name,
            volume=self.volume,
            state_dir=str(self.state_dir.resolve()),
            command=("run", "--resume", "--config", f"{STATE_MOUNT}/{BOOT}"),
            image=self.image,
            labels=self.labels,
        )

    def _prepare_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)  # the admin socket is reached through it
        boot = self.state_dir / BOOT
        text = json.dumps(boot_config(self.settings), indent=2) + "\n"
        if not boot.exists() or boot.read_text() != text:
            boot.write_text(text)

    def _stage(self, route: Route) -> Route:
        """A route whose certificate files are copies in the state folder, named by
        content (a changed file is a changed config), at the path Caddy sees."""
        if not isinstance(route.tls, CertFiles):
            return route
        certs = self.state_dir / "certs"
        certs.mkdir(mode=0o700, exist_ok=True)
        paths = []
        for kind, source in (("cert", route.tls.cert), ("key", route.tls.key)):
            try:
                data = Path(source).read_bytes()
            except OSError as exc:
                raise InputError(
                    f"{route.key}: cannot read the tls {kind} file {source}: {exc.strerror}"
                ) from exc
            name = f"{hashlib.sha256(data).hexdigest()[:24]}.{kind}.pem"
            target = certs / name
            if not target.exists():
                tmp = certs / f".{name}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            paths.append(f"{STATE_MOUNT}/certs/{name}")
        return replace(route, tls=CertFiles(cert=paths[0], key=paths[1]))

    def _prune_certs(self, staged: Sequence[Route]) -> None:
        used = {
            Path(p).name
            for r in staged
            if isinstance(r.tls, CertFiles)
            for p in (r.tls.cert, r.tls.key)
        }
        certs = self.state_dir / "certs"
        if certs.is_dir():
            for f in certs.iterdir():
                if f.name not in used:
                    f.unlink(missing_ok=True)

    def _check_reload_safety(self) -> None:
        """Caddy 2.6 reloads on a new SO_REUSEPORT socket and closes the old one: without
        net.ipv4.tcp_migrate_req=1, connections queued on the old one are reset, so a
        switch under load can fail a request. Said once per Proxy."""
        if self._warned:
            return
        self._warned = True
        try:
            value = Path(MIGRATE_REQ).read_text().strip()
        except OSError:
            return
        if value == "0":
            log.warning(
                "a proxy reload may reset connections queued at that instant",
                fix="sysctl -w net.ipv4.tcp_migrate_req=1 (make engine sets it)",
            )

    def _wait_answers(self, wait: float) -> Any:
        """Caddy's current config, once its admin socket answers (within `wait` s)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self.admin.config()
            except ProxyUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
