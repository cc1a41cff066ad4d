"""A new commit updates the checkout in place: a container that bind-mounts a folder of
the repository keeps seeing it, with the new commit's files (security review H5)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from diplo.checkout import update_tree
from diplo.controller.sources import GitSource


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"},
    )  # fmt: skip


def _commit(repo: Path, files: dict[str, str | None], message: str) -> None:
    for rel, text in files.items():
        path = repo / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def test_a_bind_mounted_folder_keeps_its_inode_and_gets_the_new_files(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    manifest = {"project": "site", "apps": {"web": {"image": "busybox:latest"}}}
    _commit(
        repo,
        {"diplo.yaml": yaml.safe_dump(manifest), "www/index.html": "v1", "www/old.txt": "x"},
        "v1",
    )
    source = GitSource(str(repo), "main", "", tmp_path / "home")
    source.load()
    www = source.tree / "www"
    inode, held = os.stat(www).st_ino, os.open(www, os.O_RDONLY)  # as a bind mount holds it
    try:
        _commit(repo, {"www/index.html": "v2", "www/old.txt": None, "www/new.txt": "n"}, "v2")
        source.load()
        assert os.stat(www).st_ino == inode
        assert sorted(os.listdir(f"/proc/self/fd/{held}")) == ["index.html", "new.txt"]
        assert (www / "index.html").read_text() == "v2"
    finally:
        os.close(held)


def test_update_tree_makes_the_tree_equal_to_the_new_one(tmp_path: Path):
    new, tree = tmp_path / "new", tmp_path / "tree"
    for root, files in (
        (tree, {"a/x": "1", "a/gone": "g", "b": "file becomes folder", "c/d": "folder->file"}),
        (new, {"a/x": "2", "b/inner": "i", "c": "now a file", "e/f": "f"}),
    ):
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    (new / "link").symlink_to("a/x")
    update_tree(new, tree)

    def listing(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): ("-> " + os.readlink(p)) if p.is_symlink() else p.read_text()
            for p in sorted(root.rglob("*"))
            if p.is_symlink() or p.is_file()
        }

    assert listing(tree) == listing(new)
    assert not (tree / "a" / "gone").exists()
