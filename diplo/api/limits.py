"""Bounds on what clients can make the API hold: requests per window, open streams per
client and in all, and a log stream read without taking the shared thread pool."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.to_thread

from diplo.api.problems import Problem

MAX_CLIENTS = 10_000  # rate-limit buckets kept at most (a client per source address)


class RateLimiter:
    """At most `limit` hits per `window` seconds per client. Buckets with no recent hit are
    pruned once per window, and the table never holds more than `max_clients`."""

    def __init__(self, limit: int, window: float, max_clients: int = MAX_CLIENTS) -> None:
        self.limit, self.window, self.max_clients = limit, window, max_clients
        self.hits: dict[str, list[float]] = {}  # least recently hit first
        self.lock = threading.Lock()
        self._pruned = time.monotonic()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.hits.pop(client, []) if now - t < self.window]
            allowed = len(recent) < self.limit
            if allowed:
                recent.append(now)
            if recent:
                self.hits[client] = recent
            if now - self._pruned > self.window or len(self.hits) > self.max_clients:
                self._prune(now)
            return allowed

    def _prune(self, now: float) -> None:
        self._pruned = now
        for client in [c for c, ts in self.hits.items() if now - ts[-1] >= self.window]:
            del self.hits[client]
        while len(self.hits) > self.max_clients:  # the least recently seen go first
            del self.hits[next(iter(self.hits))]


class Sampled:
    """True at most once per `every` seconds per key: rejections are logged, not flooded."""

    def __init__(self, every: float = 60.0, max_keys: int = MAX_CLIENTS) -> None:
        self.every, self.max_keys = every, max_keys
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(key, -self.every) < self.every:
                return False
            if len(self.last) >= self.max_keys:
                self.last = {k: t for k, t in self.last.items() if now - t < self.every}
                if len(self.last) >= self.max_keys:
                    return False  # flooded by many sources: stay quiet
            self.last[key] = now
            return True


class StreamSlots:
    """Open streams (log follows, event subscriptions) per client and in all."""

    RETRY_AFTER = "10"

    def __init__(self, what: str, per_client: int, total: int) -> None:
        self.what, self.per_client, self.total = what, per_client, total
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            return sum(self.open.values())

    def take(self, client: str) -> Callable[[], None]:
        """A slot for `client`, and the function that gives it back (once); a 429 Problem
        past a cap."""
        with self.lock:
            mine = self.open.get(client, 0)
            if mine >= self.per_client:
                detail = f"at most {self.per_client} open {self.what} per client"
            elif sum(self.open.values()) >= self.total:
                detail = f"at most {self.total} open {self.what} on this server"
            else:
                self.open[client] = mine + 1
                return self._giver(client)
        raise Problem(429, "too many streams", detail, headers={"Retry-After": self.RETRY_AFTER})

    def _giver(self, client: str) -> Callable[[], None]:
        given = threading.Event()

        def give() -> None:
            if given.is_set():
                return
            given.set()
            with self.lock:
                left = self.open.get(client, 1) - 1
                if left > 0:
                    self.open[client] = left
                else:
                    self.open.pop(client, None)

        return give


def _next(chunks: Iterator[bytes]) -> bytes | None:
    try:
        return next(chunks, None)
    except Exception:  # the engine ended the stream (or it was closed under us): done
        return None


async def relay(
    chunks: Iterator[bytes], limiter: anyio.CapacityLimiter | None = None
) -> AsyncIterator[bytes]:
    """The chunks of a blocking stream (an engine's log stream), each read in a thread
    counted by `limiter` rather than the pool every sync route shares. When the client
    leaves, the stream is closed: a Docker log stream's close() shuts its socket, which
    ends the read still waiting in its thread."""
    try:
        yield b""  # the answer's head goes out now, not with a quiet container's first line
        while (
            chunk := await anyio.to_thread.run_sync(
                _next, chunks, limiter=limiter, abandon_on_cancel=True
            )
        ) is not None:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            # A generator that another thread is running cannot be closed (ValueError).
            with contextlib.suppress(Exception):
                close()
