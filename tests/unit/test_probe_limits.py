"""Health probes against real sockets on 127.0.0.1 and the in-memory engine: a probe
never raises, has a total deadline, and a hanging command is killed, not leaked."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from diplo.executor.probes import run_probe
from diplo.model import ContainerSpec, HealthSpec
from diplo.runtime.memory import MemoryRuntime


@contextmanager
def server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A one-connection-at-a-time TCP server on 127.0.0.1; yields its port."""
    stop = threading.Event()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            with conn, suppress(OSError):
                handle(conn, stop)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        worker.join(5)
        lsock.close()


def http(path: str = "/", timeout: float = 0.5) -> HealthSpec:
    return HealthSpec(kind="http", port=8080, path=path, timeout=timeout)


def test_http_probe_of_a_non_ascii_path_is_percent_encoded_not_an_exception():
    seen: list[bytes] = []

    def ok(conn: socket.socket, stop: threading.Event) -> None:
        seen.append(conn.recv(4096))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with server(ok) as port:
        probe = run_probe(http("/é x"), ("127.0.0.1", port), MemoryRuntime(), "c")
    assert probe.ok and probe.detail == "HTTP 200"
    assert seen[0].startswith(b"GET /%C3%A9%20x HTTP/1.1\r\n")


def test_http_probe_of_a_trickling_server_ends_at_its_timeout():
    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(4096)
        for byte in b"HTTP/1.1 200 OK\r\n":
            if stop.wait(0.1):
                return
            conn.sendall(bytes([byte]))

    with server(trickle) as port:
        started = time.monotonic()
        probe = run_probe(http(timeout=0.5), ("127.0.0.1", port), MemoryRuntime(), "c")
        took = time.monotonic() - started
    assert not probe.ok and probe.detail == "timed out after 0.5s"
    assert took < 0.7, took


def test_http_probe_of_garbage_is_a_failed_probe():
    def garbage(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(4096)
        conn.sendall(b"\xff\xfe nonsense\r\n\r\n")

    with server(garbage) as port:
        probe = run_probe(http(), ("127.0.0.1", port), MemoryRuntime(), "c")
    assert not probe.ok and probe.detail.startswith("bad HTTP response")


class BrokenRuntime(MemoryRuntime):
    def exec(self, container_id: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        raise ValueError("unexpected")


def test_a_probe_that_hits_an_unexpected_exception_fails_with_the_reason():
    probe = run_probe(HealthSpec(kind="cmd", cmd=("true",)), None, BrokenRuntime(), "c")
    assert not probe.ok and probe.detail == "probe error: ValueError: unexpected"


def hanging(image: str = "busybox:latest") -> tuple[MemoryRuntime, str]:
    engine = MemoryRuntime(images={image: "sha256:" + "a" * 64})
    cid = engine.create(ContainerSpec(name="shop-db-1", image=image, labels={}, network="n"))
    engine.start(cid)
    return engine, cid


def test_hanging_cmd_probes_are_killed_not_leaked():
    engine, cid = hanging()
    engine.hang_exec.add("busybox:latest")
    health = HealthSpec(kind="cmd", cmd=("pg_isready",), timeout=0.01)
    before = threading.active_count()
    for _ in range(50):
        probe = run_probe(health, None, engine, cid)
        assert not probe.ok
        assert probe.detail == "pg_isready: timed out after 0.01s (killed)"
    assert threading.active_count() <= before


def test_no_second_probe_starts_while_an_unkillable_one_runs():
    engine, cid = hanging()
    engine.stuck_exec.add("busybox:latest")
    health = HealthSpec(kind="cmd", cmd=("pg_isready",), timeout=0.01)
    try:
        first = run_probe(health, None, engine, cid)
        assert "timed out after 0.01s and could not be killed" in first.detail
        before = threading.active_count()
        for _ in range(20):
            again = run_probe(health, None, engine, cid)
            assert (
                not again.ok
                and "the previous command in this container is still running" in again.detail
            )
        assert threading.active_count() == before
    finally:
        engine.unstuck.set()
    deadline = time.monotonic() + 2
    while engine._execs.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine._execs.busy() == 0  # once it ends, probes run again
    engine.stuck_exec.clear()
    assert run_probe(health, None, engine, cid).ok
