"""Where a deployment's desired state came from: a folder, a git work tree, or a
repository commit. Recorded with each deployment and shown by history and status."""

from __future__ import annotations

from pathlib import Path

from diplo.model import Deployment, Revision


def folder_source(folder: Path) -> str:
    """How deployments from manifests in `folder` record their source."""
    return f"folder:{folder}"


def folder_revision(paths: list[str]) -> Revision:
    """The revision of manifests read from files: their folder, and the git commit when
    the folder is in a work tree (dirty when it has uncommitted changes)."""
    from diplo.gitsource import worktree_revision  # git's adapter, only when asked

    first = Path(paths[0]).resolve() if paths else Path.cwd()
    folder = first if first.is_dir() else first.parent
    tree = worktree_revision(folder)
    if tree is None:
        return Revision(source=folder_source(folder))
    c = tree.commit
    return Revision(folder_source(folder), c.sha, c.subject, c.author, c.time, tree.dirty)


def deployment_revision(dep: Deployment) -> Revision:
    return Revision(
        dep.source or "",
        dep.commit_sha,
        dep.commit_subject,
        dep.commit_author,
        dep.commit_time,
        bool(dep.dirty),
    )
