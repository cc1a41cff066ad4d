"""Real git repositories made in tmp_path for the git source's tests (no network)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ann Dev",
    "GIT_AUTHOR_EMAIL": "ann@example.test",
    "GIT_COMMITTER_NAME": "Ann Dev",
    "GIT_COMMITTER_EMAIL": "ann@example.test",
}


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GIT_DIR"} | GIT_ENV  # see `elsewhere`
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    """Commit `files` (None: delete that file) and return the new commit's SHA."""
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
