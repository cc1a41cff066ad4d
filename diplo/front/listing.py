"""`GET /apps` handed from the controller to the front: a file in serve's private folder,
replaced whole (rename) by every change, and a counter beside it in a shared page that
the controller bumps after each replacement. The front reads the counter per request (a
memory read: a stat per request cost it 5 % of its throughput) and the file again only
when the counter moved."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("diplo.front")

COUNTER = struct.Struct("<Q")


def counter_of(path: Path) -> Path:
    return path.with_name(f"{path.name}.gen")


def publisher(path: Path) -> Callable[[bytes], None]:
    """What the controller calls with each new body (in order, from one thread at a time)."""
    draft = path.with_name(f".{path.name}.draft")
    counter = counter_of(path)
    if not counter.exists() or counter.stat().st_size != COUNTER.size:
        counter.write_bytes(COUNTER.pack(0))
    with open(counter, "r+b") as f:
        page = mmap.mmap(f.fileno(), COUNTER.size)
    published = [COUNTER.unpack_from(page)[0]]  # on from a publisher before this one

    def publish(body: bytes) -> None:
        try:
            with open(draft, "wb") as out:
                out.write(body)
            os.replace(draft, path)  # the front reads the old body or the new, never half
        except OSError as exc:  # the front keeps the last body: stale, not broken
            log.warning("front.publish_failed", error=str(exc))
            return
        published[0] += 1
        COUNTER.pack_into(page, 0, published[0])  # after the file: never ahead of it

    return publish


class Published:
    """The front's side: the newest body published at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(counter_of(path), "rb") as f:
            self._page = mmap.mmap(f.fileno(), COUNTER.size, access=mmap.ACCESS_READ)
        self._seen = -1
        self._body: bytes | None = None

    def body(self) -> bytes:
        (count,) = COUNTER.unpack_from(self._page)
        if count != self._seen:
            try:
                self._body = self.path.read_bytes()  # after the counter: never older
            except OSError:
                if self._body is None:
                    raise
                log.warning("front.listing_unreadable", path=str(self.path))
                return self._body  # gone from under us (a tmp cleaner?): the last, stale
            self._seen = count
        assert self._body is not None
        return self._body
