"""A work queue of app names, after client-go's: a key queued many times is handed out
once; a key being worked on is never handed to a second worker, and if it is queued
meanwhile it comes back once the first worker is done (level-based: the worker re-reads
everything). Delayed adds carry retry backoff. An urgent key (an engine event: drift to
heal) jumps ahead of everything queued, so a heal never waits behind a resync's batch.

A background key (a resync's look at every app) comes after all others, and at most
`background_limit` of them are worked on at once: a resync of 100 apps used to keep every
worker busy in Python for a second, and the API's event loop waited behind them for the
GIL. The other workers stay free for drift and edits meanwhile."""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

# Keys besides app names (DNS labels, so these never clash with one):
ALL = "*"  # reload the sources and look at every app (the resync)
RELOAD = "~"  # reload the sources and look at the apps that changed


class WorkQueue:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, background_limit: int = 1
    ) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()  # FIFO of keys ready to hand out
        self._urgent: deque[str] = deque()  # handed out before any of _queue
        self._urgent_keys: set[str] = set()  # keys that are urgent once ready
        self._background: deque[str] = deque()  # handed out after _queue, a few at a time
        self._background_keys: set[str] = set()  # keys queued for a background look only
        self._background_limit = max(1, background_limit)
        self._in_background: set[str] = set()  # background keys being worked on
        self._dirty: set[str] = set()  # queued (waiting to be handed out or re-queued)
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = 0
        self._shut = False

    def add(self, key: str, *, urgent: bool = False, background: bool = False) -> None:
        with self._cond:
            if self._shut:
                return
            self._put(key, urgent, background)

    def _put(self, key: str, urgent: bool = False, background: bool = False) -> None:
        """Queue `key` (with `_cond` held)."""
        if key in self._dirty:
            if background:
                return  # queued already, in this lane or a faster one
            was = self._lane(key)
            self._background_keys.discard(key)  # asked for by more than a resync
            if urgent:
                self._urgent_keys.add(key)
            now = self._lane(key)
            if now is not was and key in was:  # waiting in a slower lane: move it ahead
                was.remove(key)
                now.append(key)
                self._cond.notify()
            return
        self._dirty.add(key)
        if urgent:
            self._urgent_keys.add(key)
        elif background:
            self._background_keys.add(key)
        if key not in self._processing:
            self._ready(key)
            self._cond.notify()

    def _lane(self, key: str) -> deque[str]:
        if key in self._urgent_keys:
            return self._urgent
        return self._background if key in self._background_keys else self._queue

    def _ready(self, key: str) -> None:
        self._lane(key).append(key)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shut:
                return
            self._seq += 1
            heapq.heappush(self._delayed, (self._clock() + delay, self._seq, key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> str | None:
        """The next key, or None on shutdown or timeout. Call done(key) when finished."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._promote()
                lane = self._urgent or self._queue
                if not lane and len(self._in_background) < self._background_limit:
                    lane = self._background
                if lane:
                    key = lane.popleft()
                    if lane is self._background:
                        self._in_background.add(key)
                    self._dirty.discard(key)
                    self._urgent_keys.discard(key)
                    self._background_keys.discard(key)
                    self._processing.add(key)
                    return key
                if self._shut:
                    return None
                wait = None if deadline is None else deadline - self._clock()
                if self._delayed:
                    due = self._delayed[0][0] - self._clock()
                    wait = due if wait is None else min(wait, due)
                if wait is not None and wait <= 0:
                    if deadline is not None and self._clock() >= deadline:
                        return None
                    continue
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._in_background:  # a background slot is free
                self._in_background.discard(key)
                self._cond.notify()
            if key in self._dirty:  # queued again while being worked on
                self._ready(key)
                self._cond.notify()

    def _promote(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._put(key)  # a retry: in the normal lane, even if a resync queued it

    def shutdown(self) -> None:
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._urgent) + len(self._queue) + len(self._background) + len(self._delayed)

    def in_background(self, key: str) -> bool:
        """Whether `key` was handed out from the background lane (a resync's look)."""
        with self._cond:
            return key in self._in_background

    @property
    def processing(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._processing)
