"""The git wrapper against real repositories made by the tests in tmp_path (no network:
local paths, file:// URLs, and closed or silent ports on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diplo.errors import GitError
from diplo.gitsource import GitRepo, cache_path, redact_url, worktree_revision

from .gitrepo import commit, git


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 must be reached directly, whatever proxy the machine has."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


# -- fetch ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_fetch_follows_the_branch_head(upstream: Path, tmp_path: Path, as_url: bool):
    first = commit(upstream, {"deploy/diplo.yaml": "apps: {}\n"}, "First\n\nbody")
    url = f"file://{upstream}" if as_url else str(upstream)
    repo = GitRepo(url, "main", cache_path(tmp_path / "home", url))
    head = repo.fetch()
    assert head.sha == first and head.subject == "First"
    assert head.author == "Ann Dev <ann@example.test>"
    assert head.time.startswith(git(upstream, "log", "-1", "--format=%cI")[:10])
    assert repo.fetch() == head  # nothing new: the same head
    second = commit(upstream, {"deploy/diplo.yaml": "apps: {a: {}}\n"}, "Second")
    assert repo.fetch().sha == second
    assert repo.commit_info(first).subject == "First"  # the old head stays readable
    shallow = git(tmp_path, f"--git-dir={repo.dir}", "rev-parse", "--is-shallow-repository")
    assert shallow == "true"


def test_the_subject_is_the_first_line_of_the_message(upstream: Path, tmp_path: Path):
    commit(upstream, {"a": "1"}, "Line one\nline two of the same paragraph")
    assert GitRepo(str(upstream), "main", tmp_path / "c").fetch().subject == "Line one"


def test_concurrent_fetches_share_one_cache(upstream: Path, tmp_path: Path):
    sha = commit(upstream, {"a": "1"}, "c")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(repo.fetch().sha)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [sha] * 6


def test_a_branch_other_than_main(upstream: Path, tmp_path: Path):
    commit(upstream, {"a": "1"}, "on main")
    git(upstream, "checkout", "-q", "-b", "release/1")
    sha = commit(upstream, {"a": "2"}, "on release")
    assert GitRepo(str(upstream), "release/1", tmp_path / "c").fetch().sha == sha


# -- materialize ---------------------------------------------------------------------


@pytest.mark.parametrize("subpath", ["deploy", "deploy/", "/deploy", "./deploy"])
def test_materialize_a_folder(upstream: Path, tmp_path: Path, subpath: str):
    files = {"deploy/diplo.yaml": "x: 1\n", "deploy/web/f": "w", "README": "hi"}
    sha = commit(upstream, files, "c")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    repo.fetch()
    folder = repo.materialize(sha, subpath, tmp_path / "out")
    assert folder == tmp_path / "out" / "deploy"
    assert (folder / "diplo.yaml").read_text() == "x: 1\n"
    assert (folder / "web" / "f").read_text() == "w"
    assert not (tmp_path / "out" / "README").exists()


@pytest.mark.parametrize("subpath", ["", "."])
def test_materialize_the_whole_tree(upstream: Path, tmp_path: Path, subpath: str):
    sha = commit(upstream, {"deploy/diplo.yaml": "x: 1\n", "README": "hi\n"}, "c")
    (upstream / "run.sh").write_text("#!/bin/sh\n")
    (upstream / "run.sh").chmod(0o755)
    sha = commit(upstream, {}, "exec")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    repo.fetch()
    whole = repo.materialize(sha, subpath, tmp_path / "all")
    assert whole == tmp_path / "all"
    assert (whole / "README").read_text() == "hi\n"
    assert (whole / "deploy" / "diplo.yaml").is_file()
    assert os.access(whole / "run.sh", os.X_OK) and not os.access(whole / "README", os.X_OK)


def test_materialize_refuses_what_is_not_a_folder(upstream: Path, tmp_path: Path):
    sha = commit(upstream, {"deploy/diplo.yaml": "x: 1\n"}, "c")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    repo.fetch()
    with pytest.raises(GitError, match="there is no folder 'nope'") as err:
        repo.materialize(sha, "nope", tmp_path / "none")
    assert err.value.hint and "--path" in err.value.hint
    assert not (tmp_path / "none").exists()  # checked before anything is written
    with pytest.raises(GitError, match="is a file, not a folder"):
        repo.materialize(sha, "deploy/diplo.yaml", tmp_path / "file")
    with pytest.raises(GitError, match="leaves the repository"):
        repo.materialize(sha, "deploy/../..", tmp_path / "up")
    with pytest.raises(GitError, match="not in the cache"):
        repo.materialize("ab" * 20, "deploy", tmp_path / "unknown")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(GitError, match="not empty"):
        repo.materialize(sha, "deploy", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # left alone


def test_symlinks_inside_are_kept_and_links_out_are_refused(upstream: Path, tmp_path: Path):
    commit(upstream, {"deploy/real.env": "A=1\n"}, "c")
    (upstream / "deploy" / "app.env").symlink_to("real.env")
    good = commit(upstream, {}, "inside link")
    (upstream / "deploy" / "secret.env").symlink_to("../../../../../etc/hostname")
    relative = commit(upstream, {}, "relative link out")
    (upstream / "deploy" / "secret.env").unlink()
    (upstream / "deploy" / "secret.env").symlink_to("/etc/hostname")
    absolute = commit(upstream, {}, "absolute link out")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    repo.fetch()
    for sha in (good, relative):
        repo.ensure_commit(sha)
    folder = repo.materialize(good, "deploy", tmp_path / "good")
    assert (folder / "app.env").is_symlink() and (folder / "app.env").read_text() == "A=1\n"
    for sha, dest in ((relative, tmp_path / "rel"), (absolute, tmp_path / "abs")):
        with pytest.raises(GitError, match=r"symlink 'deploy/secret\.env' points outside"):
            repo.materialize(sha, "deploy", dest)
        assert not dest.exists()  # nothing half-written is left


# -- older commits -------------------------------------------------------------------


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_an_older_commit_after_shallow_fetches(upstream: Path, tmp_path: Path, as_url: bool):
    old = commit(upstream, {"deploy/diplo.yaml": "v: 1\n"}, "old")
    commit(upstream, {"deploy/diplo.yaml": "v: 2\n"}, "middle")
    url = f"file://{upstream}" if as_url else str(upstream)
    repo = GitRepo(url, "main", tmp_path / "cache")
    repo.fetch()
    commit(upstream, {"deploy/diplo.yaml": "v: 3\n"}, "new")
    repo.fetch()
    with pytest.raises(GitError, match="not in the cache"):
        repo.commit_info(old)  # shallow: not here until asked for
    assert repo.ensure_commit(old).subject == "old"
    assert repo.ensure_commit(old[:10]).sha == old  # now cached: a short SHA will do
    folder = repo.materialize(old, "deploy", tmp_path / "out")
    assert (folder / "diplo.yaml").read_text() == "v: 1\n"
    keep = git(tmp_path, f"--git-dir={repo.dir}", "for-each-ref", "refs/diplo/keep")
    assert old in keep  # so that gc does not drop it again


def test_an_older_commit_when_the_server_refuses_a_sha(
    upstream: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Protocol v0 without uploadpack.allowReachableSHA1InWant refuses a want by SHA,
    # as some servers do: the history of the branch is deepened instead.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.version")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "0")
    old = commit(upstream, {"a": "1"}, "old")
    for n in range(3):
        commit(upstream, {"a": str(n + 2)}, f"later {n}")
    repo = GitRepo(f"file://{upstream}", "main", tmp_path / "cache")
    repo.fetch()
    assert repo.ensure_commit(old).subject == "old"
    with pytest.raises(GitError, match=r"commit 000000000000 is not in .* or its history"):
        repo.ensure_commit("0" * 40)


def test_a_commit_that_does_not_exist(upstream: Path, tmp_path: Path):
    commit(upstream, {"a": "1"}, "c")
    repo = GitRepo(str(upstream), "main", tmp_path / "cache")
    repo.fetch()
    with pytest.raises(GitError) as err:
        repo.ensure_commit("0123456789" * 4)
    assert "0123456789" in err.value.message and str(upstream) in err.value.message
    with pytest.raises(GitError, match="full 40-character"):
        repo.ensure_commit("abcdef12")  # short and not cached: cannot be fetched
    for bad in ("--output=/tmp/x", "HEAD", "main", ""):
        with pytest.raises(GitError, match="is not a commit SHA"):
            repo.ensure_commit(bad)
        with pytest.raises(GitError, match="is not a commit SHA"):
            repo.commit_info(bad)


# -- failures ------------------------------------------------------------------------


def test_an_unknown_branch(upstream: Path, tmp_path: Path):
    commit(upstream, {"a": "1"}, "c")
    with pytest.raises(GitError) as err:
        GitRepo(str(upstream), "nope", tmp_path / "c1").fetch()
    assert err.value.message == f"branch 'nope' does not exist in {upstream}"
    assert err.value.hint and "ls-remote --heads" in err.value.hint
    for bad in ("", "-x", "a..b", "a b", "x:y", "refs/heads/", ".hidden"):
        with pytest.raises(GitError, match="not a valid branch name"):
            GitRepo(str(upstream), bad, tmp_path / "c2")


def test_a_repository_that_is_not_there(tmp_path: Path):
    missing = tmp_path / "missing"
    for url in (str(missing), f"file://{missing}"):
        with pytest.raises(GitError) as err:
            GitRepo(url, "main", tmp_path / "c").fetch()
        assert url in err.value.message and "'main'" in err.value.message
        assert "\n" not in err.value.message
        assert err.value.hint and "check the repository URL" in err.value.hint
    with pytest.raises(GitError, match="not a repository URL"):
        GitRepo("--upload-pack=touch /tmp/pwned", "main", tmp_path / "c")


def test_credentials_never_appear_and_nothing_prompts(tmp_path: Path):
    url = "https://alice:s3cr3t-pass@127.0.0.1:9/repo.git"
    started = time.monotonic()
    with pytest.raises(GitError) as err:
        GitRepo(url, "main", tmp_path / "c", timeout=20).fetch()
    assert time.monotonic() - started < 10  # a closed port: no prompt, no hang
    text = f"{err.value.message} {err.value.hint}"
    assert "s3cr3t" not in text and "alice" not in text
    assert "https://***@127.0.0.1:9/repo.git (branch 'main')" in err.value.message
    assert err.value.hint and "reach the server" in err.value.hint


def test_a_silent_server_is_given_up_on_after_the_timeout(tmp_path: Path):
    with socket.socket() as server:  # accepts connections and never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://bob:t0ken-xyz@127.0.0.1:{server.getsockname()[1]}/repo.git"
        started = time.monotonic()
        with pytest.raises(GitError) as err:
            GitRepo(url, "main", tmp_path / "c", timeout=1).fetch()
    assert time.monotonic() - started < 5
    assert "did not finish within 1s" in err.value.message
    assert "t0ken" not in str(err.value) and "bob" not in str(err.value)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
@pytest.mark.parametrize("url", ["ssh://git@127.0.0.1:9/repo.git", "git@127.0.0.1:repo.git"])
def test_ssh_urls_fail_without_asking(tmp_path: Path, url: str):
    started = time.monotonic()
    with pytest.raises(GitError) as err:  # port 9 (or 22 with no sshd): refused, or no key
        GitRepo(url, "main", tmp_path / "c", timeout=20).fetch()
    assert time.monotonic() - started < 15
    assert url in err.value.message and err.value.hint


def test_redact_url():
    assert redact_url("https://alice:tok@host/x") == "https://***@host/x"
    assert redact_url("https://ghp_token@github.com/o/r") == "https://***@github.com/o/r"
    assert redact_url("https://u:p@ss@host/x") == "https://***@host/x"  # '@' in a password
    assert redact_url("ssh://u:pw@host/x") == "ssh://***@host/x"
    assert redact_url("ssh://git@host/x") == "ssh://git@host/x"  # a user name, no secret
    for same in ("git@github.com:o/r.git", "/srv/repo", "file:///srv/repo", "https://h/x"):
        assert redact_url(same) == same


def test_cache_path(tmp_path: Path):
    a = cache_path(tmp_path, "https://h/a.git")
    assert a == cache_path(tmp_path, "https://h/a.git") and a.parent == tmp_path / "git"
    assert len(a.name) == 16 and int(a.name, 16) >= 0
    assert a != cache_path(tmp_path, "https://h/b.git")


# -- work trees ----------------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """GIT_DIR pointing at another repository (as inside a git hook) must not matter."""
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    yield


def test_worktree_revision_clean_dirty_and_outside(upstream: Path, tmp_path: Path, elsewhere):
    sha = commit(upstream, {"deploy/diplo.yaml": "a: 1\n"}, "Add\n\nmore")
    clean = worktree_revision(upstream / "deploy" / "diplo.yaml")
    assert clean is not None and clean.dirty is False
    assert (clean.commit.sha, clean.commit.subject) == (sha, "Add")
    assert clean.commit.author == "Ann Dev <ann@example.test>"
    (upstream / "deploy" / "diplo.yaml").write_text("a: 2\n")
    dirty = worktree_revision(upstream / "deploy")
    assert dirty is not None and dirty.dirty is True and dirty.commit.sha == sha
    git(upstream, "checkout", "--", ".")
    (upstream / "new.txt").write_text("untracked")
    untracked = worktree_revision(upstream)
    assert untracked is not None and untracked.dirty is True
    outside = tmp_path / "plain"
    outside.mkdir()
    assert worktree_revision(outside) is None
    assert worktree_revision(outside / "missing.yaml") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    assert worktree_revision(empty) is None  # no commits yet


def test_worktree_revision_without_git(upstream: Path, monkeypatch: pytest.MonkeyPatch):
    commit(upstream, {"a": "1"}, "c")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert worktree_revision(upstream) is None
