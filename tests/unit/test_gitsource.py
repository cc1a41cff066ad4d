"""The git wrapper against real local repositories made by the tests."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from diplo.errors import GitError
from diplo.gitsource import GitRepo, cache_path, redact_url, worktree_revision

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ann Dev",
    "GIT_AUTHOR_EMAIL": "ann@example.test",
    "GIT_COMMITTER_NAME": "Ann Dev",
    "GIT_COMMITTER_EMAIL": "ann@example.test",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    return repo


@pytest.mark.parametrize("as_url", [False, True])
def test_fetch_follows_the_branch_head(upstream: Path, tmp_path: Path, as_url: bool):
    first = commit(upstream, {"deploy/diplo.yaml": "apps: {}\n"}, "First\n\nbody")
    url = f"file://{upstream}" if as_url else str(upstream)
    repo = GitRepo(url, "main", cache_path(tmp_path / "home", url))
    head = repo.fetch()
    assert head.sha == first and head.subject == "First"
    assert head.author == "Ann Dev <ann@example.test>" and head.time[:4].isdigit()
    assert repo.fetch().sha == first  # nothing new: same head
    second = commit(upstream, {"deploy/diplo.yaml": "apps: {a: {}}\n"}, "Second")
    assert repo.fetch().sha == second


def test_materialize_a_folder_or_the_whole_tree(upstream: Path, tmp_path: Path):
    sha = commit(upstream, {"deploy/diplo.yaml": "x: 1\n", "README": "hi\n"}, "c")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    repo.fetch()
    folder = repo.materialize(sha, "deploy/", tmp_path / "out")
    assert folder == tmp_path / "out" / "deploy"
    assert (folder / "diplo.yaml").read_text() == "x: 1\n"
    assert not (tmp_path / "out" / "README").exists()
    whole = repo.materialize(sha, "", tmp_path / "all")
    assert (whole / "README").read_text() == "hi\n"
    with pytest.raises(GitError, match="no folder 'nope'"):
        repo.materialize(sha, "nope", tmp_path / "none")


def test_an_older_commit_can_be_had_after_shallow_fetches(upstream: Path, tmp_path: Path):
    old = commit(upstream, {"deploy/diplo.yaml": "v: 1\n"}, "old")
    commit(upstream, {"deploy/diplo.yaml": "v: 2\n"}, "new")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    repo.fetch()
    assert repo.ensure_commit(old).subject == "old"
    folder = repo.materialize(old, "deploy", tmp_path / "out")
    assert (folder / "diplo.yaml").read_text() == "v: 1\n"
    with pytest.raises(GitError):
        repo.ensure_commit("0" * 40)


def test_unknown_branch_and_unreachable_repository(upstream: Path, tmp_path: Path):
    commit(upstream, {"a": "1"}, "c")
    with pytest.raises(GitError) as err:
        GitRepo(str(upstream), "nope", tmp_path / "c1").fetch()
    assert "nope" in err.value.message and err.value.hint == "check --branch"
    with pytest.raises(GitError) as err:
        GitRepo(str(tmp_path / "missing"), "main", tmp_path / "c2").fetch()
    assert str(tmp_path / "missing") in err.value.message and err.value.hint == "check --repo"


def test_credentials_never_appear_in_errors_and_nothing_prompts(tmp_path: Path):
    url = "https://alice:tok3n@127.0.0.1:9/repo.git"
    started = time.monotonic()
    with pytest.raises(GitError) as err:
        GitRepo(url, "main", tmp_path / "c", timeout=20).fetch()
    assert time.monotonic() - started < 20  # fails fast: no prompt, no hang
    assert "tok3n" not in str(err.value) and "alice" not in str(err.value)
    assert redact_url(url) == "https://***@127.0.0.1:9/repo.git"
    assert redact_url("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_worktree_revision_clean_dirty_and_outside(upstream: Path, tmp_path: Path):
    sha = commit(upstream, {"deploy/diplo.yaml": "a: 1\n"}, "Add")
    clean = worktree_revision(upstream / "deploy" / "diplo.yaml")
    assert clean is not None and clean.commit.sha == sha and clean.dirty is False
    (upstream / "deploy" / "diplo.yaml").write_text("a: 2\n")
    dirty = worktree_revision(upstream / "deploy")
    assert dirty is not None and dirty.dirty is True
    outside = tmp_path / "plain"
    outside.mkdir()
    assert worktree_revision(outside) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    assert worktree_revision(empty) is None  # no commits yet
