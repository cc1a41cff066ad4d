"""This host's secret key ($DIPLO_HOME/host.key, mode 0600, made once): it keys the
digests that stand in for env values, so that every Diplo process of the host computes
the same digests and nobody without the key can check a guess against one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def host_key(home: Path) -> bytes:
    path = home / "host.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
