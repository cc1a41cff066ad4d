"""Healing apps that turn bad after a good deploy, and the backoff of every retry.

An app that turns unhealthy is restarted with backoff (1 s doubling to 5 min; reset after
10 min healthy). Exits are Docker's restart policy's to handle; a crash loop shows in
status with its restart count. A reconcile that fails is retried on the same schedule."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from diplo.errors import DiploError
from diplo.health import Backoff
from diplo.ops.status import AppView

log = structlog.get_logger("diplo.controller")


class Healer:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.backoffs: dict[str, Backoff] = {}
        self.restart_after: dict[str, float] = {}  # app -> clock time of its next restart

    def _backoff(self, app: str) -> Backoff:
        return self.backoffs.get(app, Backoff())

    def failed(self, app: str) -> float:
        """The app failed (a deploy, or by itself): how long until it is tried again."""
        backoff = self._backoff(app)
        self.backoffs[app] = backoff.failed()
        return backoff.delay()

    def healthy(self, app: str) -> None:
        self.backoffs[app] = self._backoff(app).healthy(self._clock())

    def restarts(self, app: str) -> int:
        return self._backoff(app).restarts

    def tick(
        self,
        rows: Iterable[AppView],
        *,
        leave_alone: Callable[[str], bool],
        restart: Callable[[str, str], object],
    ) -> None:
        """Restart each unhealthy app whose backoff has passed (`leave_alone`: a deploy is
        in flight, or the app is not desired)."""
        now = self._clock()
        for row in rows:
            name = row.app
            backoff = self._backoff(name)
            if row.health == "healthy":
                self.backoffs[name] = backoff.healthy(now)
                continue
            if row.health != "unhealthy" or leave_alone(name):
                continue
            if now < self.restart_after.get(name, 0.0):
                continue
            self.restart_after[name] = now + backoff.delay()
            self.backoffs[name] = backoff.failed()
            log.warning(
                "app.unhealthy_restart",
                app=name,
                restarts=backoff.restarts + 1,
                next_wait=backoff.failed().delay(),
            )
            try:
                restart(name, f"unhealthy: {row.health_detail}")
            except DiploError as exc:
                log.warning("app.restart_failed", app=name, error=exc.message)
