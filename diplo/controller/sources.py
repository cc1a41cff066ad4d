"""Where `diplo serve` reads its desired state from: a folder, or a path in a git
repository at a branch. Each load returns the desired state and the revision it came from;
a repository's commit is checked out into a stable folder only once its manifests are
valid, so that the last good commit's build contexts and env files stay in force."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from diplo.checkout import update_tree
from diplo.errors import DiploError, InputError, ManifestError, ManifestIssue
from diplo.gitsource import Commit, GitRepo, cache_path, redact_url
from diplo.manifest import reads
from diplo.manifest.files import find_manifest_files
from diplo.manifest.load import load_manifests
from diplo.model import DesiredApp, DesiredState, Revision
from diplo.ops.provenance import folder_revision, folder_source
from diplo.policy import Policy, SourceKind


@dataclass(frozen=True)
class Loaded:
    desired: DesiredState
    revision: Revision
    revisions: dict[str, Revision] = field(default_factory=dict)  # per app, after a merge

    def of(self, app: str) -> Revision:
        return self.revisions.get(app, self.revision)


class Source(Protocol):
    kind: str

    @property
    def name(self) -> str:
        """How deployments from this source are recorded (their `source`)."""
        ...

    def describe(self) -> dict[str, object]: ...

    def load(self) -> Loaded:
        """Raises ManifestError for invalid manifests, DiploError when unreachable."""
        ...


def _load_folder(folder: Path, policy: Policy, kind: SourceKind, root: Path) -> DesiredState:
    """The folder's manifests, held to the host's policy for this kind of source; `root`
    is what bind mounts, build contexts and env files must stay inside by default."""
    try:
        return load_manifests([str(folder)], policy=policy, kind=kind, root=root)
    except InputError as exc:  # an empty folder: nothing is desired
        if "no manifest files" not in exc.message:
            raise
        return DesiredState()


class FolderSource:
    kind = "folder"

    def __init__(self, folder: Path, policy: Policy | None = None) -> None:
        self.folder = folder.resolve()
        self.policy = policy or Policy()
        # The last valid load: its manifest files, the signature of all it looked at
        # (manifest/reads.py), and what it gave
        self._kept: tuple[list[Path], reads.Signature, DesiredState] | None = None
        self.loads = 0  # manifest loads made (skipped ones are not)

    @property
    def name(self) -> str:
        return folder_source(self.folder)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "path": str(self.folder)}

    def load(self) -> Loaded:
        """The folder's desired state; the last one, without reading the manifests again,
        while nothing it was made of changed (the files and folders it read, the paths
        it checked). An edit the watch misses (a file outside the folder: an env_file, a
        build context, a bind-mounted file) is seen at the next resync all the same."""
        kept = self._kept
        if kept is not None and self._same(kept[0], kept[1]):
            desired = kept[2]
        else:
            began = time.time()
            self._kept = None
            # listed before the load: a manifest added meanwhile makes the next look differ
            files = self._manifests()
            with reads.record() as seen:
                desired = _load_folder(self.folder, self.policy, "folder", self.folder)
            self.loads += 1
            sig = reads.signature(seen)
            if reads.settled(sig, began):  # else read again next time, when it has settled
                self._kept = (files, sig, desired)
        return Loaded(desired, folder_revision([str(self.folder)]))

    def _manifests(self) -> list[Path]:
        try:
            return find_manifest_files([str(self.folder)])
        except InputError:  # none
            return []

    def _same(self, files: list[Path], sig: reads.Signature) -> bool:
        """Whether the folder holds the same manifest files (a folder listing, no folder's
        time: what an app writes in a bind-mounted folder here changes nothing), and all
        the last load looked at is as it was."""
        return self._manifests() == files and reads.signature(s[:2] for s in sig) == sig


@dataclass
class BadCommit:
    sha: str
    subject: str
    error: str
    issues: list[dict[str, object]]


class GitSource:
    """A path in a repository at a branch, fetched shallowly into $DIPLO_HOME/git."""

    kind = "git"

    def __init__(
        self, url: str, branch: str, path: str, home: Path, policy: Policy | None = None
    ) -> None:
        self.url, self.branch, self.path = url, branch, path.strip("/")
        self.policy = policy or Policy()  # strict by default: whoever pushes is not trusted
        self.cache = cache_path(home, url)
        self.repo = GitRepo(url, branch, self.cache / "repo")
        self.tree = self.cache / "tree"  # the last good commit's files, at a stable path
        self.head: Commit | None = None  # the branch head at the last successful poll
        self.good: Commit | None = None  # the commit whose manifests are in force
        self.bad: BadCommit | None = None  # a newer commit that was refused
        self.last_poll: float | None = None
        self.last_poll_ok: float | None = None
        self.poll_error: str | None = None
        self._desired: DesiredState | None = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, object]:
        def commit(c: Commit | None) -> dict[str, str] | None:
            return None if c is None else {"sha": c.sha, "subject": c.subject, "time": c.time}

        return {
            "kind": self.kind,
            "url": self.name,
            "branch": self.branch,
            "path": self.path or ".",
            "head": commit(self.head),
            "applied": commit(self.good),
            "refused": None if self.bad is None else self.bad.__dict__,
            "last_poll": self.last_poll,
            "last_poll_ok": self.last_poll_ok,
            "poll_error": self.poll_error,
        }

    @property
    def name(self) -> str:
        return redact_url(self.url)

    def revision(self, c: Commit) -> Revision:
        return Revision(self.name, c.sha, c.subject, c.author, c.time)

    def load(self) -> Loaded:
        with self._lock:
            self.last_poll = time.time()
            try:
                head = self.repo.fetch()
            except Exception as exc:
                self.poll_error = getattr(exc, "message", str(exc))
                raise
            self.head, self.poll_error, self.last_poll_ok = head, None, time.time()
            if self.good is not None and head.sha == self.good.sha and self._desired is not None:
                self.bad = None  # a refused commit the branch no longer has
                return Loaded(self._desired, self.revision(head))
            if self.bad is not None and head.sha == self.bad.sha:  # refused already
                raise ManifestError([ManifestIssue(**i) for i in self.bad.issues])  # type: ignore[arg-type]
            staging = self.cache / "staging"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                limits = self.policy.of("repository").limits
                bounds = (limits.checkout_files, limits.checkout_bytes)
                folder = self.repo.materialize(head.sha, self.path, staging, bounds)
                # Validated before it replaces the good tree.
                _load_folder(folder, self.policy, "repository", staging)
            except ManifestError as exc:
                where = f"{head.sha[:10]}:"
                issues = [replace(i, file=_in_commit(i.file, staging, where)) for i in exc.issues]
                raise self._refuse(head, ManifestError(issues)) from exc
            except DiploError as exc:
                issue = ManifestIssue(f"{head.sha[:10]}:{self.path or '.'}", 0, 0, exc.message)
                raise self._refuse(head, ManifestError([issue])) from exc
            if self.tree.is_dir():
                update_tree(staging, self.tree)  # in place: bind-mounted folders follow
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.rename(self.tree)
            folder = self.tree / self.path if self.path else self.tree
            desired = _load_folder(folder, self.policy, "repository", self.tree)
            self.good, self.bad, self._desired = head, None, desired
            return Loaded(desired, self.revision(head))

    def _refuse(self, head: Commit, exc: ManifestError) -> ManifestError:
        """Remember a commit whose manifests are invalid; it is not applied."""
        text = f"commit {head.sha[:10]} ({head.subject}) refused: {exc.message}"
        self.bad = BadCommit(head.sha, head.subject, text, [dict(i.__dict__) for i in exc.issues])
        shutil.rmtree(self.cache / "staging", ignore_errors=True)
        return exc


def _in_commit(file: str, staging: Path, where: str) -> str:
    """A file of the staging checkout named as `SHA:path` (the loader resolves paths, so
    the staging folder may be written through a link or relatively)."""
    for root in {str(staging), str(staging.resolve())}:
        file = file.replace(root + "/", where)
    return file


def merge(loads: list[Loaded]) -> Loaded:
    """Several sources at once: their apps side by side; one app name in two is an error."""
    if len(loads) == 1:
        return loads[0]
    apps: list[DesiredApp] = []
    files: list[str] = []
    projects: list[str] = []
    seen: set[str] = set()
    named_by: dict[str, str] = {}  # project -> the source that names it
    served_by: dict[str, DesiredApp] = {}  # domain -> the app that claims it
    for part in loads:
        for app in part.desired.apps:
            owner = named_by.setdefault(app.project, part.revision.source)
            if owner != part.revision.source:
                issue = ManifestIssue(
                    app.source or app.name, 0, 0, f"project {app.project!r} is named by two sources"
                )
                raise ManifestError([issue])
            if app.name in seen:
                issue = ManifestIssue(app.source or app.name, 0, 0, "defined by two sources")
                raise ManifestError([issue])
            seen.add(app.name)
            for domain in app.domains:
                other = served_by.setdefault(domain, app)
                if other is not app:
                    message = (
                        f"domain {domain!r} is also claimed by app {other.name!r} "
                        f"({other.source or 'another source'})"
                    )
                    file, _, line = (app.source or app.name).rpartition(":")
                    where = (file, int(line), 1) if line.isdigit() else (app.name, 0, 0)
                    raise ManifestError([ManifestIssue(*where, message)])
            apps.append(app)
        files += part.desired.files
        projects += part.desired.projects
    revisions = {a.name: p.revision for p in loads for a in p.desired.apps}
    allow_empty = any(part.desired.allow_empty for part in loads)
    desired = DesiredState(tuple(apps), tuple(files), tuple(dict.fromkeys(projects)), allow_empty)
    return Loaded(desired, loads[0].revision, revisions)
