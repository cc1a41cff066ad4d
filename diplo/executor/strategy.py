"""The seam between running a plan and replacing an app's container: a deploy strategy.

A strategy gets everything it needs in a `DeployContext`, so that a new one (start-first
behind a proxy, a Swarm service update) is a new module beside `recreate.py` plus one
entry in `run.STRATEGIES`, and never reaches into the Executor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from diplo.executor.gate import Gate
from diplo.executor.job import Job, Reporter
from diplo.ledger import Ledger
from diplo.model import RunContainer
from diplo.runtime.base import Runtime


@dataclass(frozen=True)
class DeployContext:
    """What a strategy works with; built by the Executor once per run."""

    runtime: Runtime
    ledger: Ledger
    reporter: Reporter
    gate: Gate
    wait: bool  # False: a started container counts as deployed, without the health gate


class Strategy(Protocol):
    def deploy(self, job: Job, action: RunContainer) -> str:
        """Put `action`'s container in place of `action.replaces` and return its id.
        On any exception (StepFailed, Cancelled, or a bug), the app must be left running
        as it was before, and the exception re-raised."""
        ...


StrategyFactory = Callable[[DeployContext], Strategy]
