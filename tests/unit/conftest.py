"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from .gitrepo import git

if TYPE_CHECKING:
    from .cliworld import ServedWorld


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    return repo


@pytest.fixture(autouse=True)
def _digest_key_of_the_test() -> Iterator[None]:
    """A CLI command installs the host's key source, which reads $DIPLO_HOME lazily: it
    must not outlive the test (and its monkeypatched DIPLO_HOME) into the next one."""
    from diplo import model

    saved = model._digest_key, model._key_source
    yield
    model._digest_key, model._key_source = saved


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Every CLI command (and every `configure()`) binds structlog to the streams of its
    test, which pytest closes after it: put the configuration back so that no later test
    logs into a closed stream."""
    config = structlog.get_config()
    yield
    structlog.configure(**config)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedWorld]:
    """apiworld's `diplo serve` (apps web and worker, deployed once) on a free port, for
    the CLI to talk to."""
    from .apiworld import TOKEN
    from .cliworld import serve

    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIPLO_TOKEN", TOKEN)
    monkeypatch.delenv("DIPLO_DEBUG", raising=False)
    server = serve(tmp_path)
    try:
        yield server
    finally:
        server.stop()
        server.world.ledger.close()
    assert not server.thread.is_alive()


class FakeFront:
    """What run_server's front would be, without a process: the calls, recorded."""

    def __init__(self, calls: list[dict[str, Any]], **call: Any) -> None:
        calls.append(call)
        self.code: int | None = None
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def front_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """run_server without its front process: the port is not bound (any free one is), and
    each start of the front is recorded (host, exposure, access...)."""
    import socket

    import diplo.serve as serve_module

    calls: list[dict[str, Any]] = []

    def listen(host: str, port: int) -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock

    def start_front(listener: socket.socket, folder: Any, host: str, exposure: Any,
                    access: Any, log_format: str, exited: Any) -> FakeFront:  # fmt: skip
        listener.close()
        return FakeFront(calls, host=host, exposure=exposure, access=access, folder=folder)

    monkeypatch.setattr(serve_module, "listen", listen)
    monkeypatch.setattr(serve_module, "start_front", start_front)
    return calls
