"""Delivery of notifications off every other path: a worker thread per channel takes
them in order, and a failing send is retried with backoff (2 s doubling to 2 min) up to
`retries` times. Rules, reconciles and the collector only ever put a notification on a
queue, which never blocks; each attempt's outcome goes to `report`, a failure also to
`failed` (the log and the event bus)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from diplo.alerts.channels import DeliveryError, Sender
from diplo.alerts.state import Notification

log = structlog.get_logger("diplo.alerts")

BACKOFF = (2.0, 120.0)  # first retry after, longest wait
QUEUE_LIMIT = 1000  # per channel: beyond it the oldest waiting notification is dropped


@dataclass
class ChannelStatus:
    name: str
    type: str
    target: str
    sent: int = 0
    failed: int = 0  # attempts that failed
    dropped: int = 0  # notifications given up on
    queued: int = 0
    last_ok_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def public(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    note: Notification = field(compare=False)
    attempt: int = field(default=0, compare=False)


Report = Callable[[int, str, dict[str, Any]], None]  # alert id, channel, status


class Channel:
    """One channel's queue and worker."""

    def __init__(
        self,
        sender: Sender,
        report: Report,
        failed: Callable[[str, str], None],
        *,
        retries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sender, self.report, self.failed, self.retries = sender, report, failed, retries
        self.clock = clock
        self.status = ChannelStatus(sender.name, sender.kind, sender.target)
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self._busy = False  # a send in progress
        self._thread = threading.Thread(
            target=self._run, name=f"diplo-alerts-{sender.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    def stop(self, timeout: float) -> None:
        self.halt()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def put(self, note: Notification) -> None:
        self.report(note.alert_id, self.sender.name, {"state": note.state, "status": "queued"})
        with self._cv:
            if len(self._jobs) >= QUEUE_LIMIT:
                heapq.heappop(self._jobs)
                self.status.dropped += 1
            heapq.heappush(self._jobs, _Job(self.clock(), next(self._seq), note))
            self.status.queued = len(self._jobs)
            self._cv.notify()

    def idle(self) -> bool:
        with self._cv:
            return not self._jobs and not self._busy

    def _next(self) -> _Job | None:
        with self._cv:
            while not self._stop:
                if self._jobs:
                    wait = self._jobs[0].due - self.clock()
                    if wait <= 0:
                        job = heapq.heappop(self._jobs)
                        self.status.queued = len(self._jobs)
                        self._busy = True
                        return job
                    self._cv.wait(min(wait, 1.0))
                else:
                    self._cv.wait(1.0)
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._attempt(job)
            except Exception as exc:  # a bug must not end the channel's worker
                log.exception("alerts.delivery_crashed", channel=self.sender.name, error=str(exc))
            finally:
                with self._cv:
                    self._busy = False

    def _attempt(self, job: _Job) -> None:
        note, name = job.note, self.sender.name
        job.attempt += 1
        try:
            self.sender.send(note.payload)
        except DeliveryError as exc:
            now = self.clock()
            self.status.failed += 1
            self.status.last_error, self.status.last_error_at = exc.message, now
            retry = job.attempt <= self.retries
            status = {
                "state": note.state,
                "status": "retrying" if retry else "failed",
                "attempts": job.attempt,
                "at": round(now, 3),
                "error": exc.message,
            }
            self.report(note.alert_id, name, status)
            self.failed(name, exc.message)
            log.warning(
                "alerts.delivery_failed",
                channel=name,
                alert=note.key,
                attempt=job.attempt,
                error=exc.message,
                retry=retry,
            )
            if retry:
                delay = min(BACKOFF[1], BACKOFF[0] * 2 ** (job.attempt - 1))
                with self._cv:
                    job.due = now + delay
                    heapq.heappush(self._jobs, job)
                    self.status.queued = len(self._jobs)
            else:
                self.status.dropped += 1
            return
        now = self.clock()
        self.status.sent += 1
        self.status.last_ok_at = now
        self.report(
            note.alert_id,
            name,
            {"state": note.state, "status": "sent", "attempts": job.attempt, "at": round(now, 3)},
        )
        log.info("alerts.delivered", channel=name, alert=note.key, state=note.state)


class Dispatcher:
    def __init__(
        self,
        senders: list[Sender],
        report: Report,
        failed: Callable[[str, str], None],
        *,
        retries: int = 5,
    ) -> None:
        self.channels = [Channel(s, report, failed, retries=retries) for s in senders]

    def start(self) -> None:
        for ch in self.channels:
            ch.start()

    def halt(self) -> None:
        for ch in self.channels:
            ch.halt()

    def stop(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        for ch in self.channels:
            ch.stop(max(0.0, deadline - time.monotonic()))

    def send(self, note: Notification, only: str | None = None) -> None:
        """To every channel, or to the one named `only`."""
        for ch in self.channels:
            if only is None or ch.sender.name == only:
                ch.put(note)

    def idle(self) -> bool:
        return all(ch.idle() for ch in self.channels)

    def status(self) -> list[dict[str, Any]]:
        return [ch.status.public() for ch in self.channels]
