"""The git command line, wrapped for a GitOps controller: shallow fetches of one branch
into a bare cache, writing a commit's folder out, and reading a work tree's HEAD.

Credentials come only from the environment (git's credential helpers, SSH keys and
config); nothing here ever prompts, and every git process has a timeout after which it
is killed together with its helpers (ssh, git-remote-https)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import unquote

from diplo.checkout import unpack
from diplo.errors import GitError

_SEP = "\x1f"
# Subject last and taken from %B: the brief's "first line", which %s is not (it joins
# the first paragraph).
_FORMAT = "%H%x1f%an <%ae>%x1f%cI%x1f%B"
_SHA = re.compile(r"[0-9a-f]{4,64}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s'\"]*)@")
# Variables that would point git at some other repository than the one we mean
# (set, for example, when Diplo runs from inside a git hook).
_LOCATION_VARS = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_SHALLOW_FILE",
        "GIT_PREFIX",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_GRAFT_FILE",
    }
)
# git's complaint -> what to do about it; the first match wins (an ssh failure to connect
# ends in "Could not read from remote repository", which is not about credentials).
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("host key verification failed",),
        "add the server's key to ~/.ssh/known_hosts of the user running diplo",
    ),
    (
        ("could not resolve", "failed to connect", "connection refused", "timed out",
         "network is unreachable", "no route to host"),
        "check the URL and that this host can reach the server (DNS, firewall, proxy)",
    ),
    (
        ("authentication failed", "permission denied", "could not read username",
         "could not read password", "terminal prompts disabled", " 401", " 403"),
        "give git credentials for the user running diplo (a credential helper, an SSH key "
        "or ~/.ssh/config); diplo never prompts",
    ),
    (
        ("does not appear to be a git repository", "not found", "no such file"),
        "check the repository URL (a path, file://, https://, ssh:// or user@host:path)",
    ),
)  # fmt: skip
# What an upload-pack says when it will not (or cannot) send a commit asked for by SHA.
_NO_SUCH_OBJECT = ("not our ref", "unadvertised object", "no such remote ref", "remote ref")


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


def _redact_match(m: re.Match[str]) -> str:
    scheme, info = m.group(1), m.group(2)
    # An ssh user name ("git@") is not a secret and helps reading errors; a password,
    # or any user part of an http(s) URL (often a bare token), is.
    if scheme.lower().rstrip(":/") in ("ssh", "git+ssh", "ssh+git") and ":" not in info:
        return m.group(0)
    return f"{scheme}***@"


def redact_url(url: str) -> str:
    """https://user:token@host/x -> https://***@host/x; other forms are unchanged."""
    m = _USERINFO.match(url)
    return url if m is None else _redact_match(m) + url[m.end() :]


def _scrub(text: str, url: str) -> str:
    """Text from git with every credential-looking part of any URL, and the pieces of
    `url`'s own user part, replaced (git may print them decoded or reformatted)."""
    text = _USERINFO.sub(_redact_match, text)
    m = _USERINFO.match(url)
    if m is not None and _redact_match(m) != m.group(0):
        for piece in m.group(2).split(":"):
            for form in {piece, unquote(piece)}:
                if len(form) >= 3:
                    text = text.replace(form, "***")
    return text


def cache_path(home: Path, url: str) -> Path:
    return home / "git" / hashlib.sha256(url.encode()).hexdigest()[:16]


# Diplo's own secrets: git and ssh (and any helper they run) have no use for them.
_SECRET_VARS = frozenset(
    {"DIPLO_TOKEN", "DIPLO_VIEWER_TOKEN", "DIPLO_WEBHOOK_SECRET", "DIPLO_WEBHOOK_SECRET_GITHUB",
     "DIPLO_WEBHOOK_SECRET_GITEA", "DIPLO_WEBHOOK_SECRET_GITLAB", "DIPLO_GIT_USER",
     "DIPLO_GIT_PASSWORD"}
)  # fmt: skip


def split_credentials(url: str) -> tuple[str, str | None]:
    """An http(s) URL without its `user:password@` part, and the HTTP header that carries
    that credential instead (or DIPLO_GIT_USER / DIPLO_GIT_PASSWORD from the environment),
    so that no credential is ever in a process's arguments, which every local user can
    read in /proc/PID/cmdline. Other URLs are returned as they are."""
    m = _USERINFO.match(url)
    scheme = (m.group(1) if m else url.split("://", 1)[0] + "://").lower()
    if scheme not in ("http://", "https://"):
        return url, None
    user, password = "", ""
    if m is not None:
        user, _, password = m.group(2).partition(":")
        url = m.group(1) + url[m.end() :]
        user, password = unquote(user), unquote(password)
    user = user or os.environ.get("DIPLO_GIT_USER", "")
    password = password or os.environ.get("DIPLO_GIT_PASSWORD", "")
    if not user and not password:
        return url, None
    if not password:  # a bare token as the user part, as GitHub and GitLab accept
        user, password = "x-access-token", user
    basic = base64.b64encode(f"{user or 'x-access-token'}:{password}".encode()).decode()
    return url, f"Authorization: Basic {basic}"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCATION_VARS and k not in _SECRET_VARS}
    # LC_ALL=C: errors are read for hints, so they must be in English.
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", LANGUAGE="", **extra)
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


def _spawn(
    args: list[str], cwd: Path | None, stdout: int | IO[bytes], stderr: int | IO[bytes], **env: str
) -> subprocess.Popen[bytes]:
    # A new session: no controlling terminal to prompt on, and one process group to
    # kill on timeout, so ssh or git-remote-https cannot outlive git holding our pipes.
    return subprocess.Popen(
        ["git", *args],
        cwd=cwd,
        env=_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _missing(cwd: Path | None, what: str) -> GitError:
    if cwd is not None and not cwd.is_dir():
        return GitError(f"{what}: {cwd} does not exist")
    return GitError(f"{what}: git is not installed", hint="install git (apt-get install git)")


def _timeout(what: str, timeout: float) -> GitError:
    return GitError(
        f"{what}: git did not finish within {timeout:g}s",
        hint="check the network and the repository URL; a large first fetch may need a "
        "longer timeout",
    )


def _detail(stderr: bytes, returncode: int, url: str) -> str:
    """git's complaint as one line: boilerplate dropped, credentials scrubbed."""
    lines: list[str] = []
    for raw in stderr.decode(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(("hint:", "warning:", "Please make sure", "and the rep")):
            continue
        for prefix in ("fatal: ", "error: ", "remote: "):
            line = line.removeprefix(prefix)
        if line and line not in lines:
            lines.append(line)
    text = "; ".join(lines) or f"git exited with status {returncode}"
    text = _scrub(text, url)
    return text if len(text) <= 400 else text[:397] + "..."


class _Failed(GitError):
    """A git process that exited non-zero; `detail` is its scrubbed stderr."""

    def __init__(self, message: str, detail: str, hint: str | None) -> None:
        super().__init__(message, hint=hint)
        self.detail = detail


def _run(
    args: list[str],
    *,
    what: str,
    timeout: float,
    url: str = "",
    cwd: Path | None = None,
    hint: Callable[[str], str | None] = lambda _: None,
    after_kill: Callable[[], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> bytes:
    """Run git and return its stdout; GitError (with git's reason) when it fails."""
    try:
        proc = _spawn(args, cwd, subprocess.PIPE, subprocess.PIPE, **(env or {}))
    except FileNotFoundError as exc:
        raise _missing(cwd, what) from exc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill(proc)
        proc.communicate()
        if after_kill is not None:
            after_kill()
        raise _timeout(what, timeout) from exc
    if proc.returncode != 0:
        detail = _detail(err, proc.returncode, url)
        raise _Failed(f"{what}: {detail}", detail, hint(detail))
    return out


def _check_sha(sha: str) -> str:
    rev = sha.strip().lower()
    if not _SHA.fullmatch(rev):
        raise GitError(f"{sha!r} is not a commit SHA", hint="give the commit's hex SHA")
    return rev


def _check_branch(branch: str) -> None:
    bad = (
        not branch
        or branch.startswith(("-", "/"))
        or branch.endswith(("/", ".", ".lock"))
        or any(s in branch for s in ("..", "//", "@{", " ", "~", "^", ":", "?", "*", "[", "\\"))
        or any(ord(c) < 32 or ord(c) == 127 for c in branch)
        or any(part.startswith(".") for part in branch.split("/"))
    )
    if bad or branch == "@":
        raise GitError(f"{branch!r} is not a valid branch name", hint="give a name such as main")


def _subpath_parts(subpath: str) -> tuple[str, ...]:
    parts = tuple(p for p in PurePosixPath(subpath.strip()).parts if p not in ("/", "."))
    if ".." in parts or any("\x00" in p for p in parts):
        raise GitError(f"path {subpath!r} leaves the repository", hint="give a path inside it")
    return parts


class GitRepo:
    """One branch of one repository, fetched shallowly into a bare cache repository.

    One instance per cache folder: its lock serialises the threads that use it, and
    nothing else is expected to write to the folder."""

    def __init__(self, url: str, branch: str, cache_dir: Path, *, timeout: float = 120.0) -> None:
        if not url.strip() or url.startswith("-") or any(ord(c) < 32 for c in url):
            raise GitError(f"{redact_url(url)!r} is not a repository URL", hint="check --repo")
        _check_branch(branch)
        self.url, self.branch, self.dir, self.timeout = url, branch, cache_dir, timeout
        # git is given the URL without credentials; they travel in its environment.
        self._fetch_url, header = split_credentials(url)
        self._auth_env = (
            {}
            if header is None
            else {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": header,
            }
        )
        self._lock = threading.Lock()

    @property
    def _where(self) -> str:
        return f"{redact_url(self.url)} (branch {self.branch!r})"

    def _hint(self, detail: str) -> str:
        low, url = detail.lower(), redact_url(self.url)
        if "couldn't find remote ref" in low:
            return f"check the branch name; `git ls-remote --heads {url}` lists the branches"
        for markers, hint in _HINTS:
            if any(m in low for m in markers):
                return hint
        return f"try `git ls-remote {url}` as the user running diplo"

    def _git(self, *args: str, what: str, remote: bool = False) -> bytes:
        return _run(
            [f"--git-dir={self.dir}", *args],
            what=what,
            timeout=self.timeout,
            url=self.url,
            hint=self._hint if remote else lambda _: None,
            after_kill=self._clear_locks if remote else None,
            env=self._auth_env if remote else {},
        )

    def _clear_locks(self) -> None:
        # A fetch killed on timeout leaves its lock files behind, and git would refuse
        # every later fetch. Only this instance writes here, and it is holding its lock.
        for lock in [*self.dir.glob("*.lock"), *(self.dir / "refs").rglob("*.lock")]:
            lock.unlink(missing_ok=True)

    def _init(self) -> None:
        if (self.dir / "HEAD").is_file() and (self.dir / "objects").is_dir():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        _run(["init", "--quiet", "--bare", str(self.dir)], what="git init", timeout=self.timeout)

    def _fetch(self, *options: str, refspec: str, what: str) -> None:
        self._git(
            "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", *options,
            "--", self._fetch_url, refspec,
            what=what, remote=True,
        )  # fmt: skip

    def fetch(self) -> Commit:
        """The branch head, fetched (depth 1) into the cache."""
        ref = f"refs/heads/{self.branch}"
        with self._lock:
            self._init()
            try:
                self._fetch("--depth=1", refspec=f"+{ref}:{ref}", what=f"fetching {self._where}")
            except _Failed as exc:
                if "couldn't find remote ref" in exc.detail:
                    raise GitError(
                        f"branch {self.branch!r} does not exist in {redact_url(self.url)}",
                        hint=exc.hint,
                    ) from exc
                raise
            return self._info(ref)

    def ensure_commit(self, sha: str) -> Commit:
        """A commit that shallow fetches did not bring: asked for by SHA, else found by
        deepening the branch's history. Kept under refs/diplo/keep/ so gc leaves it."""
        rev = _check_sha(sha)
        with self._lock:
            self._init()
            if self._has(rev):
                return self._info(rev)
            if len(rev) not in (40, 64):
                raise GitError(
                    f"commit {rev} is not in the cache of {self._where}",
                    hint="give the full 40-character SHA so it can be fetched",
                )
            keep = f"refs/diplo/keep/{rev}"
            what = f"fetching commit {rev[:12]} from {self._where}"
            try:
                self._fetch("--depth=1", refspec=f"+{rev}:{keep}", what=what)
            except _Failed as exc:  # refused by SHA (or unknown): walk the branch instead
                if not any(s in exc.detail.lower() for s in _NO_SUCH_OBJECT):
                    raise
                self._deepen(rev, what)
                self._git("update-ref", keep, rev, what=f"keeping commit {rev[:12]}")
            return self._info(rev)

    def _deepen(self, rev: str, what: str) -> None:
        ref = f"refs/heads/{self.branch}"
        for option in ("--deepen=100", "--unshallow"):
            if not self._shallow():
                break
            self._fetch(option, refspec=f"+{ref}:{ref}", what=what)
            if self._has(rev):
                return
        if not self._has(rev):
            raise GitError(
                f"commit {rev[:12]} is not in {self._where} or its history",
                hint="it may never have been pushed, or was force-pushed away; check the SHA",
            )

    def _shallow(self) -> bool:
        out = self._git("rev-parse", "--is-shallow-repository", what="reading the cache")
        return out.strip() == b"true"

    def _has(self, rev: str) -> bool:
        try:
            self._git("cat-file", "-e", f"{rev}^{{commit}}", what="reading the cache")
        except _Failed:
            return False
        return True

    def commit_info(self, sha: str) -> Commit:
        """A commit already in the cache (see fetch and ensure_commit)."""
        rev = _check_sha(sha)
        with self._lock:
            return self._info(rev)

    def _info(self, rev: str) -> Commit:
        try:
            out = self._git(
                "log", "-1", f"--format={_FORMAT}", f"{rev}^{{commit}}", "--",
                what=f"reading commit {rev[:12]}",
            )  # fmt: skip
        except _Failed as exc:
            raise GitError(
                f"commit {rev[:12]} is not in the cache of {self._where}",
                hint="fetch the branch, or ensure_commit an older commit, first",
            ) from exc
        sha, author, time, body = out.decode(errors="replace").split(_SEP, 3)
        subject = next(iter(body.strip().splitlines()), "")
        return Commit(sha, subject, author, time)

    def materialize(
        self, sha: str, subpath: str, dest: Path, limits: tuple[int, int] | None = None
    ) -> Path:
        """Write the tree of `subpath` at `sha` into `dest` (absent or empty), laid out as
        in the repository; returns dest/subpath. Symlinks may not leave dest. `limits`:
        (files, bytes) beyond which nothing is used."""
        rev = _check_sha(sha)
        parts = _subpath_parts(subpath)
        sub = "/".join(parts)
        with self._lock:
            full = self._info(rev).sha
            if sub:
                self._check_folder(full, sub, subpath)
            dest.mkdir(parents=True, exist_ok=True)
            if any(dest.iterdir()):
                raise GitError(f"{dest} is not empty", hint="materialize into a fresh folder")
            try:
                self._archive(full, sub, dest, limits)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
        return dest.joinpath(*parts)

    def _check_folder(self, full: str, sub: str, subpath: str) -> None:
        out = self._git(
            "--literal-pathspecs", "ls-tree", "-z", full, "--", sub, what=f"reading {full[:12]}"
        )
        entry = out.split(b"\0")[0].decode(errors="replace")  # "<mode> <type> <oid>\t<path>"
        kind = entry.split(" ")[1] if entry.count(" ") >= 2 else ""
        if kind == "tree":
            return
        is_what = {"blob": "a file, not a folder", "commit": "a submodule (not fetched)"}
        where = f"at commit {full[:12]} of {self._where}"
        raise GitError(
            f"{subpath!r} is {is_what[kind]} {where}" if kind in is_what
            else f"there is no folder {subpath!r} {where}",
            hint="check --path: a folder in the repository, or '.' for all of it",
        )  # fmt: skip

    def _archive(
        self, full: str, sub: str, dest: Path, limits: tuple[int, int] | None = None
    ) -> None:
        """`git archive` streamed into dest: nothing held in memory, killed on timeout."""
        what = f"writing out commit {full[:12]} of {self._where}"
        args = [f"--git-dir={self.dir}", "--literal-pathspecs", "archive", "--format=tar", full]
        killed = threading.Event()
        with tempfile.TemporaryFile() as err:
            try:
                proc = _spawn([*args, "--", sub] if sub else args, None, subprocess.PIPE, err)
            except FileNotFoundError as exc:
                raise _missing(None, what) from exc

            def expire() -> None:
                killed.set()
                _kill(proc)

            timer = threading.Timer(self.timeout, expire)
            timer.start()
            assert proc.stdout is not None
            broken: tarfile.TarError | None = None
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                    unpack(tar, dest, *(limits or (None, None)))
                proc.stdout.read()  # the end padding, so that git can exit
            except tarfile.TarError as exc:
                broken = exc  # git died mid-stream: its stderr, read below, says why
            except OSError as exc:  # disk full, or an entry clashing with another
                _kill(proc)
                raise GitError(f"{what}: {exc}") from exc
            except BaseException:
                _kill(proc)  # a refused entry: the rest of the archive is not wanted
                raise
            finally:
                timer.cancel()
                proc.stdout.close()
                returncode = proc.wait()
            if killed.is_set():
                raise _timeout(what, self.timeout)
            if returncode != 0:
                err.seek(0)
                raise GitError(f"{what}: {_detail(err.read(), returncode, self.url)}")
            if broken is not None:
                raise GitError(f"{what}: unreadable archive ({broken})")


def worktree_revision(path: Path) -> WorkTreeRevision | None:
    """HEAD of the work tree that holds `path`, and whether it has uncommitted changes;
    None outside a work tree, before its first commit, or without git. Looks for .git on
    the file system first, so plain folders cost no process."""
    start = path if path.is_dir() else path.parent
    if not start.is_dir():
        return None
    if not any((p / ".git").exists() for p in [start, *start.resolve().parents]):
        return None
    try:
        out = _run(["log", "-1", f"--format={_FORMAT}"], what="git log", timeout=30, cwd=start)
        # No optional locks: a status must not take index.lock from under the user's git.
        status = _run(
            ["status", "--porcelain"],
            what="git status",
            timeout=30,
            cwd=start,
            env={"GIT_OPTIONAL_LOCKS": "0"},
        )
    except GitError:
        return None  # no commits yet, not a work tree after all, git missing or too slow
    fields = out.decode(errors="replace").split(_SEP, 3)
    if len(fields) != 4:
        return None
    sha, author, time, body = fields
    commit = Commit(sha, next(iter(body.strip().splitlines()), ""), author, time)
    return WorkTreeRevision(commit, bool(status.strip()))
