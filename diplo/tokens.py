"""The API tokens of this host. The admin token (reads and actions) is DIPLO_TOKEN, or one
generated once into $DIPLO_HOME/token (mode 0600) by `diplo serve` and read by the CLI.
The optional viewer token (reads only) is DIPLO_VIEWER_TOKEN."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

MIN_LENGTH = 24  # a chosen token shorter than this is guessable


class WeakToken(ValueError):
    """A chosen token that must not be used (callers make it an InputError: this module
    sits below diplo.errors' layer)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def _chosen(name: str) -> str | None:
    token = os.environ.get(name)
    if not token:
        return None
    if len(token) < MIN_LENGTH or token != token.strip():
        raise WeakToken(
            f"{name} is too weak: it has {len(token)} characters"
            + (" with spaces around" if token != token.strip() else ""),
            f"use at least {MIN_LENGTH} random characters, e.g. `openssl rand -hex 24`",
        )
    return token


def api_token(home: Path) -> tuple[str, bool]:
    """The admin token, and whether the operator chose it (DIPLO_TOKEN)."""
    if token := _chosen("DIPLO_TOKEN"):
        return token, True
    path = home / "token"
    if path.is_file() and (token := path.read_text().strip()):
        return token, False
    # None yet, or an empty one (a crash between creating and writing it): a new one, written
    # aside and renamed into place, so that no reader ever sees it half written.
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    aside = home / f".token.{os.getpid()}"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    try:
        os.link(aside, path)  # only where there is none: another process may be first
    except FileExistsError:
        if theirs := path.read_text().strip():
            os.unlink(aside)
            return theirs, False
        os.replace(aside, path)  # the empty one
    else:
        os.unlink(aside)
    return token, False


def viewer_token(admin: str) -> str | None:
    """DIPLO_VIEWER_TOKEN (reads only), if set; never the admin token itself."""
    token = _chosen("DIPLO_VIEWER_TOKEN")
    if token is not None and secrets.compare_digest(token, admin):
        raise WeakToken(
            "DIPLO_VIEWER_TOKEN is the admin token: a viewer could act",
            "give viewers a token of their own",
        )
    return token
