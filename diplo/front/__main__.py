"""`python -m diplo.front`: started by `diplo serve` with the listening socket, told the
rest on its standard input (one JSON line: no token in its command line or environment),
and stopped when that input ends, which is when serve stops or dies."""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from diplo.api.access import Access, HostCheck
from diplo.api.fastpath import ListingFastPath
from diplo.front.config import Exposure, server_config
from diplo.front.listing import Published
from diplo.front.relay import Relay
from diplo.logconfig import configure


class FrontServer(uvicorn.Server):
    """Stopped by serve only: a Ctrl-C reaches both processes (and systemd's stop sends
    SIGTERM to both), and serve's own shutdown, which ends this one by closing its input,
    must be the one that runs: an end of its own makes serve stop with an error."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def main() -> None:
    plan = json.loads(sys.stdin.buffer.readline())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    configure(plan["log_format"], "info")
    access = Access.from_shared(plan["access"])
    exposure = Exposure.from_dict(plan["exposure"])
    app = HostCheck(
        ListingFastPath(Relay(plan["backend"]), Published(Path(plan["listing"])).body, access),
        plan["host"],
        exposure.allowed_hosts,
    )
    config = server_config(app, plan["host"], 0, exposure)
    config.lifespan = "on"
    server = FrontServer(config)

    def until_serve_ends() -> None:
        sys.stdin.buffer.read()
        server.should_exit = True

    threading.Thread(target=until_serve_ends, name="diplo-front-stdin", daemon=True).start()
    gc.collect()
    gc.freeze()  # what start-up made lives as long as the process: no collection walks it
    server.run(sockets=[socket.socket(fileno=plan["fd"])])


if __name__ == "__main__":
    main()
