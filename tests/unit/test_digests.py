"""Env values are shown and stored as keyed digests: equal on one host, useless for
checking guesses without the host's key (security review M4)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from diplo import model
from diplo.hostkey import host_key
from diplo.model import redact, set_digest_key


@pytest.fixture(autouse=True)
def _restore_key():
    saved = model._digest_key, model._key_source
    yield
    model._digest_key, model._key_source = saved


def test_a_digest_is_keyed_and_128_bits():
    set_digest_key(b"k" * 32)
    digest = redact("summer2024")
    assert digest.startswith("hmac:") and len(digest) == len("hmac:") + 32
    assert digest == redact("summer2024") and digest != redact("summer2025")
    assert hashlib.sha256(b"summer2024").hexdigest()[:12] not in digest  # no bare hash
    set_digest_key(b"another host's key".ljust(32))
    assert redact("summer2024") != digest  # another key, another digest


def test_the_host_key_is_made_once_private_and_shared(tmp_path: Path):
    home = tmp_path / "home"
    key = host_key(home)
    assert len(key) == 32 and host_key(home) == key  # a second process reads the same
    assert stat.S_IMODE((home / "host.key").stat().st_mode) == 0o600
    set_digest_key(key)
    first = redact("pa55w0rd")
    set_digest_key(host_key(home))  # as another CLI run or diplo serve does
    assert redact("pa55w0rd") == first


def test_diplo_home_is_private(tmp_path: Path):
    """The ledger, the token and checkouts are only the owner's (security review L5)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    host_key(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
