"""serve's side of the front: the sockets bound here (a port in use is serve's error, before
anything starts, and a client that connects early waits in the backlog, not refused), the
child started on them, and stopped by closing its standard input."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import structlog

from diplo.api.access import Access
from diplo.errors import InputError
from diplo.front.config import Exposure

log = structlog.get_logger("diplo.front")

BACKLOG = 2048
STOP_WAIT = 5.0  # s: the front's graceful stop takes 2 at most (uvicorn's own limit)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="is another server using that port? choose another with --listen",
        ) from None


class Folder:
    """serve's private folder (0700, short enough for a UNIX socket's path): the
    controller's socket and the published `GET /apps` body."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="diplo-serve-"))
        self.socket = self.path / "api.sock"
        self.listing = self.path / "apps.json"

    def bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket))
        sock.listen(BACKLOG)
        return sock

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Front:
    """The running front; `exited` is called (from a thread of its own) if it ends while
    serve runs."""

    def __init__(self, proc: subprocess.Popen[bytes], exited: Callable[[int], None]) -> None:
        self.proc = proc
        self.stopping = False
        self.code: int | None = None
        self._exited = exited
        threading.Thread(target=self._watch, name="diplo-front-watch", daemon=True).start()

    def _watch(self) -> None:
        code = self.proc.wait()
        if not self.stopping:
            self.code = code
            log.error("serve.front_exited", code=code)
            self._exited(code)

    def stop(self) -> None:
        self.stopping = True
        stdin: IO[bytes] | None = self.proc.stdin
        if stdin is not None:
            stdin.close()  # the front's signal to finish its requests and go
        try:
            self.proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_front(
    listener: socket.socket,
    folder: Folder,
    host: str,
    exposure: Exposure,
    access: Access,
    log_format: str,
    exited: Callable[[int], None],
) -> Front:
    """The front, serving on `listener` (whose copy here is closed: once the front is gone,
    a client is refused rather than left waiting)."""
    plan: dict[str, Any] = {
        "fd": listener.fileno(),
        "backend": str(folder.socket),
        "listing": str(folder.listing),
        "host": host,
        "exposure": exposure.as_dict(),
        "access": access.shared(),
        "log_format": log_format,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "diplo.front"], stdin=subprocess.PIPE, pass_fds=[listener.fileno()]
    )
    listener.close()
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(plan).encode() + b"\n")
    proc.stdin.flush()
    return Front(proc, exited)
