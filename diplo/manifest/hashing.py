"""Content hashes: of host files an app reads, of build contexts, and of whole specs.
A change in any of them changes the app's spec hash and so redeploys it."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.strip("/"))
    return patterns


def _ignored(rel: str, patterns: list[str]) -> bool:
    # Last matching pattern wins; "!" re-includes (the .dockerignore rule).
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*"):
            ignored = not negate
    return ignored


def context_digest(context: str | Path) -> str:
    """Digest of every file the builder would receive: paths, modes, symlink targets and
    contents, honouring .dockerignore."""
    root = Path(context)
    patterns = _dockerignore(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if patterns and _ignored(rel, patterns):
                continue
            st = os.lstat(full)
            h.update(f"{rel}\0{st.st_mode & 0o777}\0".encode())
            if os.path.islink(full):
                h.update(os.readlink(full).encode())
            else:
                h.update(file_digest(full).encode())
        dirnames[:] = [
            d
            for d in dirnames
            if not (patterns and _ignored(d if rel_dir == "." else f"{rel_dir}/{d}", patterns))
        ]
    return h.hexdigest()


def spec_digest(spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
