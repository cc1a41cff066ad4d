"""An in-process event bus: the controller publishes, API clients (server-sent events)
subscribe. A slow subscriber loses its oldest events rather than blocking anyone."""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

SUBSCRIBER_BUFFER = 1000


@dataclass(frozen=True)
class BusEvent:
    id: int
    kind: str  # deploy.succeeded | deploy.failed | drift.healed | health.changed | ...
    app: str | None
    at: float
    data: dict[str, Any] = field(default_factory=dict)


class Bus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[queue.Queue[BusEvent]] = []
        self._ids = itertools.count(1)
        self.recent: list[BusEvent] = []

    def publish(self, kind: str, app: str | None = None, **data: Any) -> BusEvent:
        event = BusEvent(next(self._ids), kind, app, time.time(), data)
        with self._lock:
            self.recent = [*self.recent[-99:], event]
            for q in self._subs:
                while True:
                    try:
                        q.put_nowait(event)
                        break
                    except queue.Full:
                        with contextlib.suppress(queue.Empty):
                            q.get_nowait()
        return event

    def subscribe(self) -> queue.Queue[BusEvent]:
        q: queue.Queue[BusEvent] = queue.Queue(SUBSCRIBER_BUFFER)
        with self._lock:
            self._subs.append(q)
        return q

    def unsubscribe(self, q: queue.Queue[BusEvent]) -> None:
        with self._lock:
            if q in self._subs:
                self._subs.remove(q)


class BusReporter:
    """A deploy's progress as events on the bus (the API's /events)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def step(self, app: str, step: str, detail: str = "") -> None:
        self.bus.publish("deploy.step", app, step=step, detail=detail)

    def done(self, app: str, ok: bool, message: str) -> None:
        self.bus.publish("deploy.succeeded" if ok else "deploy.failed", app, message=message)
