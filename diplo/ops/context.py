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
    from diplo.runtime.sampling import EngineMeter


@dataclass
class Context:
    _runtime: Runtime | None = None
    _ledger: Ledger | None = None
    _meter: EngineMeter | None = None
    # The host's reverse proxy, when it has one: deploys of apps with domains switch and
    # drain through it. None: no proxy (start-first then starts, gates and stops only).
    router: Router | None = None

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
