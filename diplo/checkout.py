"""A commit's files on disk: unpacked from `git archive` so that nothing in them can
lead a later reader (the manifest loader, docker build) to a file of the host, and a
checkout updated in place to a new commit, so that running containers keep their bind
mounts."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from diplo.errors import GitError


def unpack(
    tar: tarfile.TarFile, dest: Path, max_files: int | None = None, max_bytes: int | None = None
) -> None:
    """Extract files, folders and symlinks only. Nothing is written through a symlink,
    and a symlink that resolves outside dest is refused, so later readers of dest (the
    manifest loader, docker build) cannot be led to files of the host. Stops at
    `max_files` entries or `max_bytes` of file content: a commit of a small, highly
    compressible pack must not fill the disk before anything in it is validated."""
    root = os.path.realpath(dest)
    links: list[tuple[str, str]] = []
    files = size = 0
    for member in tar:
        files += 1
        size += member.size if member.isreg() else 0
        if (max_files is not None and files > max_files) or (
            max_bytes is not None and size > max_bytes
        ):
            raise GitError(
                f"the checkout holds more than {max_files} files or {max_bytes} bytes; "
                "nothing of it is used",
                hint="the host's policy sets limits.checkout_files and limits.checkout_bytes",
            )
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise GitError(f"archive entry {member.name!r} leaves the destination")
        parts = [p for p in name.parts if p != "."]
        if not parts:
            continue
        parent = root
        for part in parts[:-1]:
            parent = os.path.join(parent, part)
            try:
                if not stat.S_ISDIR(os.lstat(parent).st_mode):  # lstat: a symlink is no folder
                    raise GitError(f"{member.name!r}: {part!r} is not a folder")
            except FileNotFoundError:
                os.mkdir(parent, 0o755)
        target = os.path.join(parent, parts[-1])
        if member.isdir():
            if not os.path.isdir(target) or os.path.islink(target):
                os.mkdir(target, 0o755)  # a symlink in the way: FileExistsError
        elif member.isreg():
            mode = 0o755 if member.mode & 0o111 else 0o644
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            src = tar.extractfile(member)
            assert src is not None
            with os.fdopen(os.open(target, flags, mode), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                os.utime(out.fileno(), (member.mtime, member.mtime))  # the commit time
        elif member.issym():
            if os.path.isabs(member.linkname):
                raise _outside(member.name, member.linkname)
            os.symlink(member.linkname, target)
            links.append((member.name, target))
        else:
            raise GitError(f"archive entry {member.name!r} is not a file, folder or symlink")
    # Checked once everything exists, so chains of links are resolved as a reader would.
    for entry, link in links:
        real = os.path.realpath(link)
        if real != root and not real.startswith(root + os.sep):
            raise _outside(entry, os.readlink(link))


def _outside(name: str, target: str) -> GitError:
    return GitError(
        f"symlink {name!r} points outside the repository ({target!r}); nothing was written",
        hint="make the link relative and inside the repository, or remove it",
    )


def update_tree(new: Path, tree: Path) -> None:
    """Make `tree` hold exactly what `new` holds, in place: folders that exist in both
    keep their inode, so a running container that bind-mounts a folder of the checkout
    sees the new commit's files instead of an empty folder (a rename of the whole tree
    would leave it on the deleted one). Files are rewritten only when they differ.
    Both trees come from `materialize`, which refused links that leave them."""
    for dirpath, dirnames, filenames in os.walk(new):
        rel = os.path.relpath(dirpath, new)
        dest_dir = tree / rel if rel != "." else tree
        for name in dirnames:
            src, dest = os.path.join(dirpath, name), dest_dir / name
            if os.path.islink(src):
                _replace_link(src, dest)
            elif dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                dest.unlink()
                dest.mkdir(0o755)
            elif not dest.exists():
                dest.mkdir(0o755)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            src, dest = os.path.join(dirpath, name), dest_dir / name
            if os.path.islink(src):
                _replace_link(src, dest)
                continue
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.is_symlink():
                dest.unlink()
            mode = os.stat(src).st_mode & 0o777
            if dest.exists() and _same_file(src, dest):
                os.chmod(dest, mode)
                continue
            # In place (same inode): a file bind mount follows the new content too.
            with open(src, "rb") as fin, open(dest, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            shutil.copystat(src, dest)
    # What the new commit no longer has goes, deepest first.
    for dirpath, dirnames, filenames in os.walk(tree, topdown=False):
        rel = os.path.relpath(dirpath, tree)
        src_dir = new / rel if rel != "." else new
        for name in filenames + dirnames:
            dest = Path(dirpath) / name
            if not os.path.lexists(src_dir / name):
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                else:
                    dest.unlink()


def _replace_link(src: str, dest: Path) -> None:
    target = os.readlink(src)
    if dest.is_symlink() and os.readlink(dest) == target:
        return
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif os.path.lexists(dest):
        dest.unlink()
    os.symlink(target, dest)


def _same_file(a: str, b: Path) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while chunk := fa.read(1 << 20):
            if chunk != fb.read(len(chunk)):
                return False
    return True
