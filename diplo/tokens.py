"""The API token of this host: DIPLO_TOKEN, or one generated once into
$DIPLO_HOME/token (mode 0600) by `diplo serve` and read by the CLI."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def api_token(home: Path) -> tuple[str, bool]:
    """The token, and whether the operator chose it (DIPLO_TOKEN)."""
    if token := os.environ.get("DIPLO_TOKEN"):
        return token, True
    path = home / "token"
    if path.is_file():
        return path.read_text().strip(), False
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, False
