"""The front's relay to the controller's server on its UNIX socket: HTTP requests streamed
both ways (a log follow flows as it is written and ends when its client leaves), and
WebSockets message by message. The client's address and scheme travel in two headers
that only the front sets; the controller's side (`FromFront`) believes them because
nothing but the front can reach its socket (a folder only serve's user can enter)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import structlog
from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Origin, Subprotocol

from diplo.api.access import header
from diplo.api.problems import problem_response

log = structlog.get_logger("diplo.front")

CLIENT, SCHEME = b"x-diplo-client", b"x-diplo-scheme"
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the request's; the two
# above are dropped from what a client sends, so that no client can claim an address.
HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", CLIENT, SCHEME,
    }
)  # fmt: skip
# What the WebSocket client writes itself from its own handshake.
HANDSHAKE = frozenset(
    {
        b"host", b"origin", b"user-agent", b"sec-websocket-key", b"sec-websocket-version",
        b"sec-websocket-extensions", b"sec-websocket-protocol",
    }
)  # fmt: skip
UNSENDABLE = {1005, 1006, 1015}  # close codes that only say "none was sent"


def forwarded(scope: MutableMapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """The request's own headers, and who sent it and how, for the controller's server."""
    headers = [(k, v) for k, v in scope["headers"] if k not in HOP]
    client = scope.get("client")
    if client:
        headers.append((CLIENT, f"{client[0]}:{client[1]}".encode("latin-1")))
    secure = scope.get("scheme") in ("https", "wss")
    headers.append((SCHEME, b"https" if secure else b"http"))
    return headers


def target(scope: MutableMapping[str, Any]) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (path + (b"?" + query if query else b"")).decode("latin-1")


class Relay:
    """The ASGI app of the front, behind its `GET /apps` fast path."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        # The transport, not a client: a client keeps the cookies it is sent (one user's
        # session would go out with every other's request) and adds headers of its own.
        self.transport = httpx.AsyncHTTPTransport(
            uds=socket_path,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.transport.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        sent = {k for k, _ in scope["headers"]}
        has_body = b"content-length" in sent or b"transfer-encoding" in sent
        request = httpx.Request(
            scope["method"],
            "http://front" + target(scope),
            headers=forwarded(scope),
            content=_body(receive) if has_body else None,
            # Streams (log follows, events) stay open for as long as their client wants.
            extensions={"timeout": {"connect": 5.0, "read": None, "write": None, "pool": None}},
        )
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            log.warning("front.backend_unreachable", error=str(exc) or type(exc).__name__)
            answer = problem_response(
                502, "the controller is not answering", "diplo serve may be stopping"
            )
            await answer(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP
                    ],
                }
            )
            await _until_either(_pump(response, send), _left(receive))
        finally:
            await response.aclose()  # the controller's side sees the client leave

    async def websocket(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        host = header(scope, b"host") or "localhost"
        origin = header(scope, b"origin")
        extra = Headers(
            [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in forwarded(scope)
                if k not in HANDSHAKE
            ]
        )
        try:
            upstream = await unix_connect(
                self.socket_path,
                f"ws://{host}{target(scope)}",
                origin=Origin(origin) if origin else None,
                subprotocols=[Subprotocol(p) for p in scope.get("subprotocols", [])] or None,
                additional_headers=extra,
                user_agent_header=header(scope, b"user-agent") or None,
                compression=None,
                proxy=None,
                open_timeout=10,
                ping_interval=None,
                max_size=None,
            )
        except InvalidStatus as exc:  # refused (no session, a bad origin): so is the client
            log.info("front.websocket_refused", status=exc.response.status_code)
            await send({"type": "websocket.close", "code": 1008})
            return
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("front.backend_unreachable", error=str(exc) or type(exc).__name__)
            await send({"type": "websocket.close", "code": 1011})
            return
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            await _until_either(_downstream(upstream, send), _upstream(upstream, receive))


async def _body(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client left mid-body: the controller's side sees a short one
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def _pump(response: httpx.Response, send: Any) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the controller stopped mid-answer
        assert isinstance(response.stream, httpx.AsyncByteStream)
        async for chunk in response.stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _left(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_either(*jobs: Any) -> None:
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _downstream(upstream: ClientConnection, send: Any) -> None:
    """The controller's messages to the client, then its close code."""
    try:
        async for message in upstream:
            key = "text" if isinstance(message, str) else "bytes"
            await send({"type": "websocket.send", key: message})
    except ConnectionClosed:
        pass
    code = upstream.close_code or 1000
    with contextlib.suppress(Exception):  # the client may be gone already
        await send(
            {
                "type": "websocket.close",
                "code": 1011 if code in UNSENDABLE else code,
                "reason": upstream.close_reason or "",
            }
        )


async def _upstream(upstream: ClientConnection, receive: Any) -> None:
    """The client's messages to the controller, then its leaving."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code = message.get("code", 1000)
            await upstream.close(1000 if code in UNSENDABLE else code)
            return
        if message["type"] == "websocket.receive":
            data = message.get("text")
            await upstream.send(data if data is not None else message.get("bytes") or b"")


class FromFront:
    """The controller's server side: the client's address and scheme as the front saw
    them (its socket gives none). A request that did not come through the socket keeps
    its own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("client"):
            scope = dict(scope)
            client = header(scope, CLIENT)
            host, _, port = client.rpartition(":")
            if host and port.isdigit():
                scope["client"] = (host, int(port))
            scheme = header(scope, SCHEME)
            if scheme in ("http", "https"):
                secure = scheme == "https"
                if scope["type"] == "websocket":
                    scope["scheme"] = "wss" if secure else "ws"
                else:
                    scope["scheme"] = scheme
        await self.app(scope, receive, send)
