"""This host's secret key ($DIPLO_HOME/host.key, mode 0600, made once, in a home only its
owner reads): it keys the digests that stand in for env values, so that every Diplo
process of the host computes the same digests, and nobody without the key can check a
guess against one. It also seals what Diplo must keep but never show: the env values of
recent deployments, for rollbacks (Fernet: AES-128-CBC with HMAC-SHA256)."""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.fernet import Fernet



def host_key(home: Path) -> bytes:
    _private(home)
    path = home / "host.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def _private(home: Path) -> None:
    """$DIPLO_HOME holds the ledger, the API token and the repositories' checkouts (with
    any .env committed there): nobody else on the host reads it."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if home.stat().st_uid == os.geteuid() and home.stat().st_mode & 0o077:
        home.chmod(0o700)


def _fernet(key: bytes) -> Fernet:
    from cryptography.fernet import Fernet  # only when something is sealed: a slow import

    derived = hmac.new(key, b"diplo sealed values", "sha256").digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(key: bytes, data: bytes) -> bytes:
    return _fernet(key).encrypt(data)


def unseal(key: bytes, blob: bytes) -> bytes | None:
    """The sealed data, or None when this key did not seal it (another host's ledger)."""
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(key).decrypt(blob)
    except InvalidToken:
        return None
