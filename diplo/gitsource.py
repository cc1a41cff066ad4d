"""The git command line, wrapped for a GitOps controller: shallow fetches of one branch
into a bare cache, checking a commit's folder out, and reading a work tree's HEAD.

Credentials come only from the environment (git's credential helpers, SSH config);
nothing here ever prompts, and every call has a timeout."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from diplo.errors import GitError

_SEP = "\x1f"
_FORMAT = _SEP.join(["%H", "%s", "%an <%ae>", "%cI"])


@dataclass(frozen=True)
class Commit:
    sha: str  # full 40-hex
    subject: str  # first line of the message
    author: str  # "Name <email>"
    time: str  # ISO 8601 commit time


@dataclass(frozen=True)
class WorkTreeRevision:
    commit: Commit
    dirty: bool


def redact_url(url: str) -> str:
    """https://user:token@host/x -> https://***@host/x; other forms are unchanged."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]+@", r"\1***@", url)


def cache_path(home: Path, url: str) -> Path:
    return home / "git" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _env() -> dict[str, str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


def _run(
    args: list[str], cwd: Path | None, timeout: float, what: str, url: str = ""
) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env=_env(), capture_output=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed", hint="apt-get install git") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(
            f"{what}: git did not finish within {timeout:g}s", hint="check the network"
        ) from exc
    if proc.returncode != 0:
        text = proc.stderr.decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        detail = (fatal or lines or [f"exit {proc.returncode}"])[0]
        detail = detail.removeprefix("fatal: ").removeprefix("error: ")
        if url:
            detail = detail.replace(url, redact_url(url))
        raise GitError(f"{what}: {detail}", hint=_hint(text))
    return proc


def _hint(detail: str) -> str | None:
    low = detail.lower()
    if "couldn't find remote ref" in low or "not found in upstream" in low:
        return "check --branch"
    if "does not appear to be a git repository" in low or "repository not found" in low:
        return "check --repo"
    if "authentication" in low or "permission denied" in low or "could not read" in low:
        return "give git credentials through its credential helper or SSH config"
    return None


class GitRepo:
    """One branch of one repository, fetched shallowly into a bare cache repository."""

    def __init__(self, url: str, branch: str, cache_dir: Path, *, timeout: float = 120.0) -> None:
        self.url, self.branch, self.dir, self.timeout = url, branch, cache_dir, timeout
        self._lock = threading.Lock()

    def _git(self, *args: str, what: str) -> subprocess.CompletedProcess[bytes]:
        return _run(list(args), self.dir, self.timeout, what, self.url)

    def _init(self) -> None:
        if (self.dir / "HEAD").is_file():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        _run(["init", "-q", "--bare", str(self.dir)], None, self.timeout, "git init")

    @property
    def _where(self) -> str:
        return f"fetching {redact_url(self.url)} ({self.branch})"

    def fetch(self) -> Commit:
        """The branch head, fetched (depth 1) into the cache."""
        with self._lock:
            self._init()
            ref = f"refs/heads/{self.branch}"
            self._git(
                "fetch", "-q", "--depth", "1", "--no-tags", self.url, f"+{ref}:{ref}",
                what=self._where,
            )  # fmt: skip
            return self._info(ref)

    def ensure_commit(self, sha: str) -> Commit:
        """An older commit, fetched when shallow fetches did not bring it."""
        with self._lock:
            self._init()
            try:
                return self._info(sha)
            except GitError:
                pass
            try:
                self._git("fetch", "-q", "--depth", "1", self.url, sha, what=self._where)
            except GitError:  # servers that refuse a want by SHA: the whole branch
                ref = f"refs/heads/{self.branch}"
                self._git("fetch", "-q", "--unshallow", self.url, f"+{ref}:{ref}", what=self._where)
            return self._info(sha)

    def commit_info(self, sha: str) -> Commit:
        with self._lock:
            return self._info(sha)

    def _info(self, rev: str) -> Commit:
        out = self._git(
            "log", "-1", f"--format={_FORMAT}", f"{rev}^{{commit}}", "--",
            what=f"reading commit {rev[:12]}",
        )  # fmt: skip
        sha, subject, author, time = out.stdout.decode(errors="replace").strip().split(_SEP)
        return Commit(sha, subject, author, time)

    def materialize(self, sha: str, subpath: str, dest: Path) -> Path:
        """Write the tree of `subpath` at `sha` into the fresh folder `dest`; returns the
        folder that holds subpath's files."""
        sub = subpath.strip("/")
        if sub in ("", "."):
            sub = ""
        with self._lock:
            args = ["archive", "--format=tar", sha] + ([sub] if sub else [])
            try:
                out = self._git(*args, what=f"checking out {sha[:10]}")
            except GitError as exc:
                if "did not match any files" in exc.message or "pathspec" in exc.message:
                    raise GitError(
                        f"commit {sha[:10]} has no folder {subpath!r}", hint="check --path"
                    ) from exc
                raise
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
            tar.extractall(dest, filter="data")  # refuses links and paths out of dest
        folder = dest / sub if sub else dest
        if not folder.is_dir():
            raise GitError(f"commit {sha[:10]}: {subpath!r} is not a folder", hint="check --path")
        return folder


def worktree_revision(path: Path) -> WorkTreeRevision | None:
    """HEAD of the work tree that holds `path`, and whether it has uncommitted changes;
    None outside a work tree (checked on the file system first: no process to spawn)."""
    start = path if path.is_dir() else path.parent
    if not any((p / ".git").exists() for p in [start, *start.parents]):
        return None
    try:
        out = _run(["log", "-1", f"--format={_FORMAT}"], start, 10, "git log")
        status = _run(["status", "--porcelain"], start, 10, "git status")
    except GitError:
        return None  # no commits yet, or not a work tree after all
    fields = out.stdout.decode(errors="replace").strip().split(_SEP)
    if len(fields) != 4:
        return None
    return WorkTreeRevision(Commit(*fields), bool(status.stdout.strip()))
