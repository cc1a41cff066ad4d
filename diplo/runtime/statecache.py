"""Container inspects kept between health ticks, for as long as the engine's event stream
says the container did not change.

A tick of `diplo serve` looks at every app: at 100 apps that was 100 inspects every 5 s,
each a round trip and a JSON document parsed with the GIL held, and the API's event loop
waited behind them (issue 14). What an inspect gives the health loop (running or not,
since when, the engine's HEALTHCHECK verdict, the address a probe dials) changes only
with an event of that container: `start`, `die`, `restart`, `health_status`... So an
answer is kept while all of these hold:
- an event stream is connected, and was before the inspect began (events are not
  replayed: a stream that reconnects drops everything);
- no event of that container came since the inspect began (one that came during it
  means the answer may already be old);
- the listing that asks shows the container as the kept answer was listed (running, and
  the same health in its status);
- it is younger than `max_age`: what raises no container event (a network reconnect
  that changes the address) is seen this late."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from diplo.model import ContainerState

MAX_AGE = 30.0  # s
TOUCHED_KEPT = 4096  # containers whose last event is remembered (for inspects in flight)


class StateCache:
    def __init__(self, max_age: float = MAX_AGE, clock: Callable[[], float] = time.monotonic):
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, str, ContainerState]] = {}  # id -> (at, listed, state)
        self._seq = 0  # events seen so far
        self._touched: dict[str, int] = {}  # id -> the sequence number of its last event
        self._streams = 0  # event streams connected now
        self._reset = 0  # the sequence number of the last stream that came or went

    def watching(self) -> None:
        """An event stream just connected: what happened before it is unknown."""
        with self._lock:
            self._streams += 1
            self._seq += 1
            self._reset = self._seq
            self._kept.clear()
            self._touched.clear()

    def unwatched(self) -> None:
        """An event stream ended: nothing kept can be trusted any more."""
        with self._lock:
            self._streams = max(0, self._streams - 1)
            self._seq += 1
            self._reset = self._seq
            self._kept.clear()
            self._touched.clear()

    def event(self, container_id: str) -> None:
        with self._lock:
            self._seq += 1
            self._kept.pop(container_id, None)
            if len(self._touched) >= TOUCHED_KEPT:  # bounded: inspects in flight keep nothing
                self._touched.clear()
                self._reset = self._seq
            self._touched[container_id] = self._seq

    def get(self, container_id: str, listed: str) -> ContainerState | None:
        with self._lock:
            if not self._streams:
                return None
            kept = self._kept.get(container_id)
            if kept is None:
                return None
            at, was, state = kept
            if was != listed or self._clock() - at > self._max_age:
                del self._kept[container_id]
                return None
            return state

    def mark(self) -> int | None:
        """Taken before an inspect: `put` keeps its answer only if nothing happened to the
        container meanwhile. None: no stream, nothing will be kept."""
        with self._lock:
            return self._seq if self._streams else None

    def put(self, container_id: str, listed: str, state: ContainerState, mark: int | None) -> None:
        with self._lock:
            if mark is None or not self._streams:
                return
            if mark < self._reset or self._touched.get(container_id, 0) > mark:
                return  # a stream came or went, or the container changed, since `mark`
            self._kept[container_id] = (self._clock(), listed, state)
