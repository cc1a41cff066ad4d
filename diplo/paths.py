"""Where Diplo keeps its files on a host: the ledger, the per-app locks, the API token,
the git cache. One place, so that every process of a host agrees on it."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """$DIPLO_HOME, else $XDG_STATE_HOME/diplo (~/.local/state/diplo)."""
    if home := os.environ.get("DIPLO_HOME"):
        return Path(home)
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "diplo"
