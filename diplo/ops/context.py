"""The adapters an operation works with, created lazily so that bad input is rejected
before the engine or the ledger is touched. Only the composition roots (the CLI's entry
point and `diplo serve`) build one; tests build one over the in-memory engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from diplo.hostkey import host_key
from diplo.ledger import Ledger
from diplo.locks import AppLocks
from diplo.paths import default_home
from diplo.runtime.base import Runtime

if TYPE_CHECKING:
    from diplo.executor.strategy import Router
    from diplo.proxy.manager import Proxy
    from diplo.runtime.sampling import EngineMeter


@dataclass
class Context:
    _runtime: Runtime | None = None
    _ledger: Ledger | None = None
    _meter: EngineMeter | None = None
    # The host's reverse proxy (Caddy), beside the real engine, or one a test gives.
    _proxy: Proxy | None = None
    # What deploys of apps with domains switch and drain through: by default the host's
    # proxy (ops/proxy.py). None without one: start-first then starts, gates and stops.
    _router: Router | None = None

    @property
    def proxy_enabled(self) -> bool:
        """Whether apps with domains are served through a proxy here: beside the real
        engine (the in-memory engine of the tests has no network to proxy to)."""
        if self._proxy is not None:
            return True
        from diplo.runtime.docker_engine import DockerRuntime

        return isinstance(self.runtime, DockerRuntime)

    @property
    def proxy(self) -> Proxy:
        """The host's proxy, as $DIPLO_HOME/config.yaml describes it (not started here)."""
        if self._proxy is None:
            from diplo.hostconfig import load_config
            from diplo.proxy.config import ProxySettings
            from diplo.proxy.manager import Proxy

            cfg = load_config().proxy
            settings = ProxySettings(cfg.http_port, cfg.https_port, cfg.email)
            self._proxy = Proxy(
                default_home(), settings, name=cfg.name, volume=f"{cfg.name}-data", image=cfg.image
            )
        return self._proxy

    @property
    def router(self) -> Router | None:
        if self._router is None and self.proxy_enabled:
            from diplo.ops.proxy import ProxyRouter

            self._router = ProxyRouter(self)
        return self._router

    @router.setter
    def router(self, router: Router | None) -> None:
        self._router = router

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            from diplo.runtime.docker_engine import DockerRuntime  # the heavy import, late

            self._runtime = DockerRuntime()
        return self._runtime

    @property
    def meter(self) -> EngineMeter | None:
        """The metrics collector's engine side, beside the real engine only (an in-memory
        engine of the tests has no kernel counters to read)."""
        if self._meter is None:
            from diplo.runtime.docker_engine import DockerRuntime

            if isinstance(self.runtime, DockerRuntime):
                from diplo.runtime.sampling import EngineMeter

                self._meter = EngineMeter()
        return self._meter

    @property
    def locks(self) -> AppLocks:
        return AppLocks(default_home())

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger.open_default()
        return self._ledger

    @property
    def key(self) -> bytes:
        """This host's secret key (see diplo/hostkey.py)."""
        return host_key(default_home())

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        if self._proxy is not None:
            self._proxy.close()
