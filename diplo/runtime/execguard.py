"""Commands run in containers (health probes) with a hard deadline: at the deadline the
command is killed, and while one is still running in a container no second one starts
there, so a command that hangs cannot pile up threads, engine connections and processes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from diplo.errors import RuntimeFailure

T = TypeVar("T")

KILL_WAIT = 1.0  # how long a killed command gets to be reaped before we give up on it


class ExecGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}

    def run(
        self,
        container_id: str,
        what: str,
        work: Callable[[], T],
        kill: Callable[[], bool],
        timeout: float,
    ) -> T:
        """`work()` in a helper thread; past `timeout`, `kill()` (True: the command was
        signalled) and a short wait for it to end."""
        result: dict[str, object] = {}

        def target() -> None:
            try:
                result["value"] = work()
            except BaseException as exc:  # handed to the caller's thread below
                result["error"] = exc

        with self._lock:
            previous = self._running.get(container_id)
            if previous is not None and previous.is_alive():
                raise RuntimeFailure(
                    f"{what}: the previous command in this container is still running "
                    "(it could not be killed); no other starts until it ends"
                )
            worker = threading.Thread(target=target, name="diplo-exec", daemon=True)
            self._running[container_id] = worker
            worker.start()
        worker.join(timeout)
        if worker.is_alive():
            try:
                killed = kill()
            except Exception:  # killing is best effort; the guard still holds
                killed = False
            worker.join(KILL_WAIT if killed else 0)
            if worker.is_alive():
                raise RuntimeFailure(
                    f"{what}: timed out after {timeout:g}s and could not be killed; "
                    "no other command starts in this container until it ends"
                )
            raise RuntimeFailure(f"{what}: timed out after {timeout:g}s (killed)")
        with self._lock:
            if self._running.get(container_id) is worker:
                del self._running[container_id]
        if "error" in result:
            error = result["error"]
            assert isinstance(error, BaseException)
            raise error
        return result["value"]  # type: ignore[return-value]

    def busy(self) -> int:
        """How many commands are still running (for tests and diagnostics)."""
        with self._lock:
            return sum(1 for t in self._running.values() if t.is_alive())
