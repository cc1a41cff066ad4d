"""One app's deploy as the parts below the Executor see it: its deadline, its cancel
signals, how a step fails, and where its progress is reported.

A `Job` gets a clock and cancel checks, not the Executor: the gate and the strategies
depend on this module, so it must not depend back on the code that schedules them."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol, TypeVar

from diplo.errors import DiploError

T = TypeVar("T")

POLL = 0.2  # how often waits look at the clock and at cancel requests


class Reporter(Protocol):
    def step(self, app: str, step: str, detail: str = "") -> None: ...

    def done(self, app: str, ok: bool, message: str) -> None: ...


class NullReporter:
    def step(self, app: str, step: str, detail: str = "") -> None:
        pass

    def done(self, app: str, ok: bool, message: str) -> None:
        pass


class StepFailed(Exception):
    def __init__(self, step: str, cause: str) -> None:
        super().__init__(cause)
        self.step = step
        self.cause = cause


class Cancelled(Exception):
    def __init__(self, step: str, by: str) -> None:
        super().__init__(by)
        self.step = step
        self.by = by


def guard(step: str, fn: Callable[[], T]) -> T:
    """Run one engine call; an engine error fails `step` with the engine's message."""
    try:
        return fn()
    except DiploError as exc:
        raise StepFailed(step, exc.message) from exc


class Job:
    """One app's deploy: its deadline and its cancel signals.

    `run_cancelled` names who cancelled the whole run (None while nobody did); it is
    cheap and asked on every check. `cancel_requested` asks the ledger which of the
    given deployments `diplo cancel` flagged; it is a query, so it is asked at most
    every POLL seconds, and only for a deploy that has a deployment row."""

    def __init__(
        self,
        app: str,
        timeout: float,
        dep_id: int | None,
        *,
        clock: Callable[[], float],
        run_cancelled: Callable[[], str | None],
        cancel_requested: Callable[[list[int]], Collection[int]],
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.dep_id = dep_id
        self._clock = clock
        self._run_cancelled = run_cancelled
        self._cancel_requested = cancel_requested
        self.deadline = clock() + timeout
        self._next_poll = 0.0
        self._flagged = False
        self.step = "prepare"

    def cancelled_by(self) -> str | None:
        by = self._run_cancelled()
        if by is not None:
            return by
        if self.dep_id is not None and not self._flagged and self._clock() >= self._next_poll:
            self._next_poll = self._clock() + POLL
            self._flagged = bool(self._cancel_requested([self.dep_id]))
        return "diplo cancel" if self._flagged else None

    def remaining(self) -> float:
        """Seconds left before the deadline (0 once past it)."""
        return max(0.0, self.deadline - self._clock())

    def expired(self) -> bool:
        return self._clock() > self.deadline

    def check(self, step: str | None = None, detail: str = "") -> None:
        """Raise Cancelled or StepFailed (deadline) if the deploy must stop now."""
        step = step or self.step
        by = self.cancelled_by()
        if by is not None:
            raise Cancelled(step, by)
        if self.expired():
            why = f"deploy deadline of {self.timeout:g}s exceeded"
            raise StepFailed(step, why + (f" ({detail})" if detail else ""))

    def should_stop(self) -> bool:
        return self.cancelled_by() is not None or self.expired()
