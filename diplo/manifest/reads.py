"""What a manifest load looked at on disk: the files it read, the folders it listed and
the paths whose existence it checked. A controller keeps their signatures and skips a
load whose inputs are all as they were: at 500 apps, the periodic resync read and checked
every manifest again, 350-500 ms of CPU that a heal waited behind for the GIL."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Seen = set[tuple[str, bool]]  # (path, whether its content matters or only that it is there)

_seen: ContextVar[Seen | None] = ContextVar("diplo_manifest_reads", default=None)

# A file changed within this long of the load that read it may have changed after it was
# read, in the same timestamp (coarse file systems tick in 1-2 s): then nothing is kept.
RACY = 2.0

Mark = tuple[int, int, int, int, int] | None
Signature = tuple[tuple[str, bool, Mark, Mark], ...]


def note(*paths: str | os.PathLike[str], content: bool = True) -> None:
    """The load being recorded (if any) read these files or listed these folders; or,
    with `content=False`, checked only that they are there (a bind-mounted folder: what
    the app writes in it is no input of the load)."""
    seen = _seen.get()
    if seen is not None:
        seen.update((os.fspath(p), content) for p in paths)


@contextmanager
def record() -> Iterator[Seen]:
    """Collect what the loads in this block look at."""
    seen: Seen = set()
    token = _seen.set(seen)
    try:
        yield seen
    finally:
        _seen.reset(token)


def _mark(st: os.stat_result, content: bool) -> Mark:
    if not content:
        return (0, 0, st.st_ino, st.st_dev, stat.S_IFMT(st.st_mode))
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)


def signature(seen: Iterable[tuple[str, bool]]) -> Signature:
    """Each path as it is now: the link itself when it is one, and what it leads to
    (symlinks followed, so a retargeted link anywhere on the way shows); None when
    missing. A path noted both ways counts with its content."""
    content: dict[str, bool] = {}
    for path, full in seen:
        content[path] = content.get(path, False) or full
    out: list[tuple[str, bool, Mark, Mark]] = []
    for path in sorted(content):
        full = content[path]
        try:
            own = os.lstat(path)
        except OSError:
            out.append((path, full, None, None))
            continue
        target: Mark = _mark(own, full)
        if stat.S_ISLNK(own.st_mode):
            try:
                target = _mark(os.stat(path), full)
            except OSError:
                target = None
        out.append((path, full, _mark(own, full), target))
    return tuple(out)


def settled(sig: Signature, began: float) -> bool:
    """Whether none of the files changed so close to the load (begun at wall time
    `began`) that a change may have come after it read them."""
    limit = int((began - RACY) * 1e9)
    return all(
        m is None or m[0] < limit for _, full, own, target in sig if full for m in (own, target)
    )
