"""GET /apps without the framework: the busiest read (dashboards and `diplo status` poll
it) is answered straight from the controller's cached body, plain or gzipped, by a thin
ASGI layer in front of FastAPI (or in `diplo serve`'s front process, from the body the
controller publishes), after the same token check as every read (two digests compared).
Everything else goes to the app behind unchanged."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from diplo.api.access import Access, header, raw_header
from diplo.api.problems import Problem

Scope = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class ListingFastPath:
    def __init__(self, app: ASGI, listing: Callable[[], bytes], access: Access) -> None:
        self.app = app
        self.listing = listing  # the current body of GET /apps
        self.access = access
        self._gz: tuple[bytes, bytes] | None = None  # (plain body, its gzip)
        self._lock = threading.Lock()

    def _gzipped(self, body: bytes) -> bytes:
        with self._lock:
            if self._gz is None or self._gz[0] is not body:
                self._gz = (body, gzip.compress(body, 6))
            return self._gz[1]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/apps" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        try:
            self.access.check(header(scope, b"authorization"), act=False)
        except Problem as problem:
            await problem.response()(scope, receive, send)
            return
        body = self.listing()
        headers = [(b"content-type", b"application/json"), (b"vary", b"Accept-Encoding")]
        accept = raw_header(scope, b"accept-encoding")
        if b"gzip" in accept and len(body) >= 512:
            body = self._gzipped(body)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
