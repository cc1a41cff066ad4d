"""Per-app locks shared by every Diplo process on a host (flock on files under
$DIPLO_HOME/locks): `diplo apply` and `diplo serve` never deploy one app at once, so
there are no duplicate containers and no lost ledger rows. The kernel drops a lock when
its process dies, so a crashed Diplo never leaves an app locked."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from diplo.errors import LockTimeout


class AppLocks:
    def __init__(self, home: Path) -> None:
        self.folder = home / "locks"

    @contextlib.contextmanager
    def hold(
        self,
        apps: Iterable[str],
        *,
        timeout: float = 600.0,
        waiting: Callable[[str], None] | None = None,
    ) -> Iterator[None]:
        """Hold the locks of `apps` (taken in name order, so two holders never deadlock)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fds: list[int] = []
        try:
            for app in sorted(set(apps)):
                fds.append(self._take(app, timeout, waiting))
            yield
        finally:
            for fd in reversed(fds):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _take(self, app: str, timeout: float, waiting: Callable[[str], None] | None) -> int:
        fd = os.open(self.folder / f"{app}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if waiting is not None and not told:
                    waiting(app)
                    told = True
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LockTimeout(
                        f"{app}: another Diplo process has been deploying it for over {timeout:g}s",
                        hint="wait for it, or cancel it with `diplo cancel`",
                    ) from None
                time.sleep(0.05)
