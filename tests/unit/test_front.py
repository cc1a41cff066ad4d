"""serve's front: GET /apps from the published body, every other request (streams and
WebSockets included) relayed to the API's private socket, with the client's address; the
front's process, its start on serve's socket and its end with serve's."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from diplo.api.access import Access, HostCheck
from diplo.api.fastpath import ListingFastPath
from diplo.errors import DiploError, InputError
from diplo.front.config import Exposure
from diplo.front.listing import Published, publisher
from diplo.front.process import Folder, listen, start_front
from diplo.front.relay import FromFront, Relay

from .apiworld import uvicorn_on

TOKEN = "front-test-token-long-enough"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Backend:
    """A stand-in for the API on a UNIX socket, saying what it was sent."""

    def __init__(self) -> None:
        self.stream_left = threading.Event()
        self.app = FromFront(
            Starlette(
                routes=[
                    Route("/echo", self.echo, methods=["GET", "POST", "PUT", "DELETE"]),
                    Route("/stream", self.stream),
                    WebSocketRoute("/ws", self.ws),
                    WebSocketRoute("/refuse", self.refuse),
                ]
            )
        )

    async def echo(self, request: Request) -> Response:
        answer = JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "body": (await request.body()).decode(),
                "headers": dict(request.headers),
                "client": list(request.client) if request.client else None,
                "scheme": request.url.scheme,
            }
        )
        if "set" in request.query_params:
            answer.set_cookie("session", request.query_params["set"])
        return answer

    async def stream(self, request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            try:
                yield b"first\n"
                await asyncio.sleep(60)
                yield b"never\n"
            finally:
                self.stream_left.set()

        return StreamingResponse(lines(), media_type="text/plain")

    async def ws(self, websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or [None]
        await websocket.accept(subprotocol=offered[0])
        client = websocket.client
        await websocket.send_text(json.dumps({"client": list(client) if client else None}))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close":
                await websocket.close(4401, "bye")
                return
            if message.get("text") is not None:
                await websocket.send_text("echo " + message["text"])
            else:
                await websocket.send_bytes(message["bytes"][::-1])

    async def refuse(self, websocket: WebSocket) -> None:
        await websocket.close(1008)


def running(app: Any, sock: socket.socket) -> contextlib.AbstractContextManager[uvicorn.Server]:
    return uvicorn_on(uvicorn.Config(app, log_level="warning", lifespan="on"), sock)


@pytest.fixture
def folder() -> Iterator[Folder]:
    made = Folder()
    yield made
    made.remove()


@pytest.fixture
def backend(folder: Folder) -> Iterator[Backend]:
    made = Backend()
    with running(made.app, folder.bind()):
        yield made


@pytest.fixture
def front(folder: Folder, backend: Backend) -> Iterator[str]:
    """The front's app, as its process builds it, on 127.0.0.1 (a free port)."""
    publisher(folder.listing)(b'{"apps": []}')
    app = HostCheck(
        ListingFastPath(Relay(str(folder.socket)), Published(folder.listing).body, Access(TOKEN)),
        "127.0.0.1",
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with running(app, sock):
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_get_apps_is_the_published_body_checked_against_the_tokens(front: str, folder: Folder):
    base = f"http://{front}"
    assert httpx.get(base + "/apps").status_code == 401
    assert httpx.get(base + "/apps", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert httpx.get(base + "/apps", headers=AUTH).json() == {"apps": []}
    body = json.dumps({"apps": [{"app": "web", "note": "x" * 600}]}).encode()
    publisher(folder.listing)(body)  # the next request has it
    plain = httpx.get(base + "/apps", headers={**AUTH, "Accept-Encoding": "identity"})
    assert plain.content == body
    raw = httpx.Client().send(
        httpx.Request("GET", base + "/apps", headers={**AUTH, "Accept-Encoding": "gzip"}),
        stream=True,
    )
    assert raw.headers["content-encoding"] == "gzip"
    assert gzip.decompress(b"".join(raw.iter_raw())) == body  # raw: as sent
    raw.close()


def test_a_request_reaches_the_api_whole_with_the_clients_address(front: str):
    with httpx.Client(base_url=f"http://{front}") as client:
        sent = client.post(
            "/echo?a=1&b=%2F",
            content=b'{"ref": "main"}',
            headers={**AUTH, "X-Hub-Signature-256": "sha256=abc", "Content-Type": "text/x"},
        )
        assert sent.status_code == 200
        seen = sent.json()
        assert seen["method"] == "POST" and seen["path"] == "/echo"
        assert seen["query"] == "a=1&b=%2F" and seen["body"] == '{"ref": "main"}'
        assert seen["headers"]["x-hub-signature-256"] == "sha256=abc"
        assert seen["headers"]["authorization"] == f"Bearer {TOKEN}"
        assert seen["headers"]["host"] == front
        assert seen["client"][0] == "127.0.0.1" and seen["client"][1] != 0
        local_port = seen["client"][1]
        assert seen["scheme"] == "http"
        # No client can claim an address: the header is the front's alone.
        forged = client.get("/echo", headers={"X-Diplo-Client": "10.9.9.9:1"}).json()
        assert forged["client"] == ["127.0.0.1", local_port]  # the same connection, kept
        for method in ("PUT", "DELETE"):
            assert client.request(method, "/echo").json()["method"] == method


def test_the_front_adds_no_header_and_keeps_no_cookie(front: str):
    """The relay is no HTTP client: a session cookie one browser gets is not sent with
    another's requests, and no Accept-Encoding the client did not send is asked for."""
    raw = f"GET /echo?set=admin-session HTTP/1.1\r\nHost: {front}\r\nConnection: close\r\n\r\n"
    host, port = front.split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(raw.encode())
        answer = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
    assert "set-cookie: session=admin-session" in answer.lower()
    seen = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert "accept-encoding" not in seen["headers"] and "user-agent" not in seen["headers"]
    other = httpx.get(f"http://{front}/echo").json()
    assert "cookie" not in other["headers"]


def test_a_stream_flows_as_written_and_ends_when_its_client_leaves(front: str, backend: Backend):
    with httpx.stream("GET", f"http://{front}/stream", timeout=10) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()  # kept: a dropped iterator closes the connection
        assert next(chunks) == b"first\n"  # before the stream ends
        time.sleep(0.2)
        assert not backend.stream_left.is_set()  # open for as long as its client is
    # the client is gone: the API's side sees it too (a follow's slot is given back)
    assert backend.stream_left.wait(10)


def test_websockets_are_relayed_both_ways_with_the_close_code(front: str):
    with ws_connect(f"ws://{front}/ws", subprotocols=["diplo"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "diplo"
        first = json.loads(ws.recv())
        assert first["client"][0] == "127.0.0.1"
        ws.send("hello")
        assert ws.recv() == "echo hello"
        ws.send(b"abc")
        assert ws.recv() == b"cba"
        ws.send("close")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert closed.value.rcvd.reason == "bye"


def test_a_websocket_the_api_refuses_is_refused(front: str):
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"ws://{front}/refuse")
    assert refused.value.response.status_code == 403


def test_a_front_without_its_api_answers_502(folder: Folder):
    publisher(folder.listing)(b'{"apps": []}')
    app = ListingFastPath(Relay(str(folder.socket)), Published(folder.listing).body, Access(TOKEN))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with running(app, sock):
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert httpx.get(base + "/apps", headers=AUTH).status_code == 200  # still served
        down = httpx.get(base + "/echo")
        assert down.status_code == 502
        assert down.json()["title"] == "the controller is not answering"


def test_published_bodies_replace_each_other_whole(tmp_path: Path):
    path = tmp_path / "apps.json"
    publish = publisher(path)
    published = Published(path)  # the front starts after serve's first publication
    with pytest.raises(FileNotFoundError):
        published.body()
    publish(b"one")
    assert published.body() == b"one"
    publish(b"two, longer")
    assert published.body() == b"two, longer"
    assert published.body() == b"two, longer"  # read once per publication
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apps.json", "apps.json.gen"]
    path.unlink()
    path.mkdir()  # the next publication fails: the front keeps the last one
    publish(b"three")
    assert published.body() == b"two, longer"


def test_a_port_in_use_is_an_input_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(InputError, match=r"cannot listen on 127\.0\.0\.1:"):
            listen("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_the_front_process_serves_on_serves_socket_and_ends_with_its_input(
    folder: Folder, backend: Backend
):
    publisher(folder.listing)(b'{"apps": ["from the file"]}')
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    ended: list[int] = []
    front = start_front(
        listener, folder, "127.0.0.1", Exposure(), Access(TOKEN), "text", ended.append
    )
    try:
        assert listener.fileno() == -1  # serve keeps no copy: the front alone accepts
        # a request sent before the front is up waits in the backlog, it is not refused
        listing = httpx.get(f"http://127.0.0.1:{port}/apps", headers=AUTH, timeout=30)
        assert listing.json() == {"apps": ["from the file"]}
        assert httpx.get(f"http://127.0.0.1:{port}/echo").json()["client"][0] == "127.0.0.1"
        # the signals a terminal or systemd sends to every process of serve: serve stops it
        for sig in (signal.SIGINT, signal.SIGTERM):
            front.proc.send_signal(sig)
        time.sleep(0.3)
        assert front.proc.poll() is None and ended == []
        assert httpx.get(f"http://127.0.0.1:{port}/apps", headers=AUTH).status_code == 200
        assert (
            httpx.get(f"http://127.0.0.1:{port}/echo", headers={"Host": "evil.example"}).status_code
            == 421
        )
    finally:
        front.stop()
    assert front.proc.returncode == 0 and ended == []  # a stop, not an end on its own
    with pytest.raises(httpx.ConnectError):  # refused, not left waiting
        httpx.get(f"http://127.0.0.1:{port}/apps", headers=AUTH, timeout=5)


def test_a_front_that_ends_on_its_own_is_reported(folder: Folder):
    publisher(folder.listing)(b'{"apps": []}')
    ended: list[int] = []
    front = start_front(
        listen("127.0.0.1", 0), folder, "127.0.0.1", Exposure(), Access(TOKEN), "text",
        ended.append,
    )  # fmt: skip
    try:
        front.proc.kill()
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ended == [-9] and front.code == -9
    finally:
        front.stop()


def test_serve_stops_with_an_error_when_its_front_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A real run_server (the in-memory engine): its front killed, serve stops, says so,
    and leaves nothing (no serve.json, no private folder, no process)."""
    from diplo import serve
    from diplo.controller.sources import FolderSource
    from diplo.ledger import Ledger
    from diplo.ops.context import Context
    from diplo.runtime.memory import MemoryRuntime

    class Engine(MemoryRuntime):
        def events(self, stop: Any) -> Iterator[tuple[str, str]]:
            while not stop():
                time.sleep(0.01)
            return iter(())

    home = tmp_path / "home"
    monkeypatch.setenv("DIPLO_HOME", str(home))
    monkeypatch.setenv("DIPLO_TOKEN", TOKEN)
    monkeypatch.setattr(serve.signal, "signal", lambda *_: None)
    monkeypatch.setattr(serve, "_tidy_heap", threading.Event)
    started: list[Any] = []
    folders: list[Folder] = []

    def start(*args: Any, **kw: Any) -> Any:
        folders.append(args[1])
        started.append(start_front(*args, **kw))
        return started[-1]

    monkeypatch.setattr(serve, "start_front", start)
    (tmp_path / "m").mkdir()
    ledger = Ledger(home / "ledger.db")
    ctx = Context(_runtime=Engine(), _ledger=ledger)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()

    def kill_the_front() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        os.kill(started[0].proc.pid, 9)

    killer = threading.Thread(target=kill_the_front)
    killer.start()
    try:
        with pytest.raises(DiploError, match="front process ended on its own"):
            serve.run_server(
                ctx, [FolderSource(tmp_path / "m")], "127.0.0.1", port, resync=60, workers=1
            )
    finally:
        killer.join()
        ledger.close()
    assert not (home / "serve.json").exists()
    assert not folders[0].path.exists()
    assert started[0].proc.poll() is not None


def test_the_front_process_serves_tls_with_serves_certificate(
    folder: Folder, backend: Backend, tmp_path: Path
):
    import ssl

    from .test_api_limits import self_signed

    cert, key = self_signed(tmp_path)
    publisher(folder.listing)(b'{"apps": []}')
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    exposure = Exposure(tls=(cert, key))
    front = start_front(listener, folder, "127.0.0.1", exposure, Access(TOKEN), "text", print)
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted) as client:
            assert client.get("/apps", headers=AUTH, timeout=30).json() == {"apps": []}
            # behind the front, the API hears the scheme its client used
            assert client.get("/echo").json()["scheme"] == "https"
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
            httpx.get(f"https://127.0.0.1:{port}/apps")
    finally:
        front.stop()
