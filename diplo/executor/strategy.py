"""The seam between running a plan and replacing an app's container: a deploy strategy.

A strategy gets everything it needs in a `DeployContext`, so that a new one (start-first
behind a proxy, a Swarm service update) is a new module beside `recreate.py` plus one
entry in `run.STRATEGIES`, and never reaches into the Executor."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from diplo.executor.gate import Gate
from diplo.executor.job import Job, Reporter
from diplo.ledger import Ledger
from diplo.model import RunContainer
from diplo.runtime.base import Runtime


class Router(Protocol):
    """The reverse proxy as a deploy sees it (implemented outside the executor, which
    never imports it). `key` is an app's "project/app"; an upstream is "IP:port", a
    replica's address on its project network and the app's http_port."""

    def switch(self, key: str, upstreams: Sequence[str]) -> None:
        """Send the app's traffic to exactly `upstreams` from now on, atomically: no
        request is lost or sent to a mix of old and new. Raises on failure."""
        ...

    def in_flight(self, upstreams: Sequence[str]) -> int:
        """Requests the proxy is still serving from any of `upstreams`."""
        ...


@dataclass(frozen=True)
class DeployContext:
    """What a strategy works with; built by the Executor once per run."""

    runtime: Runtime
    ledger: Ledger
    reporter: Reporter
    gate: Gate
    wait: bool  # False: a started container counts as deployed, without the health gate
    router: Router | None = None  # None: no proxy on this host (yet); nothing is switched
    clock: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], None] = field(default=time.sleep)


class Strategy(Protocol):
    def deploy(self, job: Job, action: RunContainer) -> str:
        """Put `action`'s container in place of `action.replaces` and return its id.
        On any exception (StepFailed, Cancelled, or a bug), the app must be left running
        as it was before, and the exception re-raised."""
        ...


StrategyFactory = Callable[[DeployContext], Strategy]
