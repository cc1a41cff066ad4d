"""Content hashes: of host files an app reads, of build contexts, and of whole specs.
A change in any of them changes the app's spec hash and so redeploys it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from diplo.manifest import reads
from diplo.model import DesiredApp

_CHUNK = 1 << 20


class ContextTooLarge(ValueError):
    """A build context with more files or bytes than the policy allows."""


def file_digest(path: str | Path) -> str:
    """Digest of a regular file. Anything else (a FIFO, a device, a socket) is never
    opened: reading /dev/zero never ends, a FIFO blocks, and opening some devices acts."""
    h = hashlib.sha256()
    reads.note(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        h.update(f"special\0{stat.S_IFMT(st.st_mode)}".encode())
        return h.hexdigest()
    with open(path, "rb", opener=_nonblocking) as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _nonblocking(path: str, flags: int) -> int:
    # Should the file have been swapped for a FIFO since the stat, open does not block.
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _dockerignore(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order."""
    path = context / ".dockerignore"
    reads.note(path)
    if not path.is_file():
        return []
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).strip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's rules: `*` and `?` stop at `/`, `**` crosses folders, and a pattern that
    names a folder covers everything in it."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if pattern.startswith("/", i):
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(ch) or re.escape(ch))
        i += 1
    return re.compile("".join(out) + "(?:/.*)?")


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    # The last matching rule wins; "!" re-includes.
    ignored = False
    for negate, regex in rules:
        if regex.fullmatch(rel):
            ignored = not negate
    return ignored


def context_digest(context: str | Path, max_files: int = 100_000, max_bytes: int = 4 << 30) -> str:
    """Digest of every file the builder would receive: paths, modes, symlink targets and
    contents, honouring .dockerignore. Only regular files are read; more than `max_files`
    entries or `max_bytes` bytes raise ContextTooLarge."""
    root = Path(context)
    files = size = 0
    patterns = _dockerignore(root)
    # An ignored folder is skipped whole, unless a "!" rule may bring part of it back.
    prune = not any(negate for negate, _ in patterns)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        reads.note(dirpath)  # a file added or removed changes its folder
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if patterns and _ignored(rel, patterns):
                continue
            st = os.lstat(full)
            files += 1
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
            if files > max_files or size > max_bytes:
                raise ContextTooLarge(
                    f"the build context holds more than {max_files} files or {max_bytes} "
                    "bytes; add a .dockerignore, or choose a smaller folder"
                )
            h.update(f"{rel}\0{st.st_mode & 0o777}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                reads.note(full)
                h.update(os.readlink(full).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update(file_digest(full).encode())
            else:  # a FIFO, device or socket: never opened
                h.update(f"special\0{stat.S_IFMT(st.st_mode)}".encode())
        dirnames[:] = [
            d
            for d in dirnames
            if not (prune and _ignored(d if rel_dir == "." else f"{rel_dir}/{d}", patterns))
        ]
    return h.hexdigest()


def spec_digest(spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# What is not part of an app's spec hash. Ordering and Diplo-side checks: changing them
# does not need a new container. Nor does the number of replicas (replicas are added or
# removed, the others stay), nor what the proxy serves (domains, TLS: a proxy change), nor
# what alerts watch for; nor where the app is written, nor the hash itself, nor `masked`
# (the values are in the fields themselves).
UNHASHED = frozenset(
    {
        *("source", "spec_hash", "masked"),
        *("depends_on", "health", "deploy_timeout", "strategy", "drain", "prune", "keep_images"),
        *("replicas", "domains", "http_port", "tls", "tls_cert", "tls_key", "tls_digest"),
        *("load_balancing", "alerts"),
    }
)


def with_spec_hash(app: DesiredApp) -> DesiredApp:
    """`app` with its spec hash: what its container is made from, so that a change of it
    (and only of it) replaces the container."""
    data = {f.name: _plain(getattr(app, f.name)) for f in fields(app) if f.name not in UNHASHED}
    return replace(app, spec_hash=spec_digest(data))


def _plain(value: Any) -> Any:
    """`value` as `dataclasses.asdict` makes it, as far as JSON can tell: dataclasses as
    dicts, tuples and lists as lists. Without asdict's deep copy of every leaf (a load of
    500 apps: 147 -> 120 ms). The JSON, and so every spec hash, is the same as before: a
    change here would redeploy every app on upgrade."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value  # anything else is written as str() by spec_digest, as before
