"""Repository credentials never reach a process's arguments (readable by every local user
in /proc/PID/cmdline), and Diplo's own secrets never reach git (security review M6)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from diplo import gitsource
from diplo.errors import GitError
from diplo.gitsource import GitRepo, split_credentials

URL = "https://deploy:ghp_SECRETtoken123@127.0.0.1:9/org/infra.git"


def test_split_credentials_moves_the_user_part_into_a_header(monkeypatch):
    monkeypatch.delenv("DIPLO_GIT_USER", raising=False)
    monkeypatch.delenv("DIPLO_GIT_PASSWORD", raising=False)
    url, header = split_credentials(URL)
    assert url == "https://127.0.0.1:9/org/infra.git"
    assert (
        header == "Authorization: Basic " + base64.b64encode(b"deploy:ghp_SECRETtoken123").decode()
    )
    token_only = split_credentials("https://ghp_tok%40en@example.com/r.git")
    assert token_only[0] == "https://example.com/r.git"
    assert (
        token_only[1]
        == "Authorization: Basic " + base64.b64encode(b"x-access-token:ghp_tok@en").decode()
    )
    assert split_credentials("https://example.com/r.git") == ("https://example.com/r.git", None)
    assert split_credentials("git@example.com:org/r.git") == ("git@example.com:org/r.git", None)
    assert split_credentials("/srv/repo") == ("/srv/repo", None)
    monkeypatch.setenv("DIPLO_GIT_PASSWORD", "from-env")
    assert split_credentials("https://example.com/r.git")[1] == (
        "Authorization: Basic " + base64.b64encode(b"x-access-token:from-env").decode()
    )


def test_git_runs_without_credentials_in_argv_nor_diplo_secrets_in_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DIPLO_TOKEN", "tok-SECRET-123")
    hooks = [f"DIPLO_WEBHOOK_SECRET{p}" for p in ("", "_GITHUB", "_GITEA", "_GITLAB")]
    for name in hooks:
        monkeypatch.setenv(name, "hook-SECRET-456")
    seen: list[tuple[list[str], dict[str, str]]] = []
    real = subprocess.Popen

    def spy(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        seen.append((list(args), dict(kw.get("env") or {})))
        return real(args, **kw)

    monkeypatch.setattr(gitsource.subprocess, "Popen", spy)
    repo = GitRepo(URL, "main", tmp_path / "cache", timeout=20)
    with pytest.raises(GitError) as err:
        repo.fetch()  # nothing listens on port 9: refused at once
    assert "ghp_SECRETtoken123" not in str(err.value)
    fetches = [(a, e) for a, e in seen if "fetch" in a]
    assert fetches, seen
    for args, env in seen:
        assert not any("ghp_SECRETtoken123" in a for a in args), args
        assert "DIPLO_TOKEN" not in env and not set(hooks) & set(env)
    args, env = fetches[0]
    assert "https://127.0.0.1:9/org/infra.git" in args
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
