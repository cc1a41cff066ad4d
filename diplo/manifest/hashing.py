"""Content hashes: of host files an app reads, of build contexts, and of whole specs.
A change in any of them changes the app's spec hash and so redeploys it."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _dockerignore(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order."""
    path = context / ".dockerignore"
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


def context_digest(context: str | Path) -> str:
    """Digest of every file the builder would receive: paths, modes, symlink targets and
    contents, honouring .dockerignore."""
    root = Path(context)
    patterns = _dockerignore(root)
    # An ignored folder is skipped whole, unless a "!" rule may bring part of it back.
    prune = not any(negate for negate, _ in patterns)
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
            if not (prune and _ignored(d if rel_dir == "." else f"{rel_dir}/{d}", patterns))
        ]
    return h.hexdigest()


def spec_digest(spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
