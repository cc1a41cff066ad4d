"""Which files are manifests: what `-f` names, and what a watched folder holds."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from diplo.errors import InputError
from diplo.manifest import reads

MANIFEST_NAMES = ("diplo.yaml", "diplo.yml")


def find_manifest_files(paths: Iterable[str]) -> list[Path]:
    """Files named by `-f`: a file as is; a folder gives its *.yaml/*.yml files and,
    in sub-folders, every diplo.yaml/diplo.yml."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            direct = sorted(
                f
                for f in p.iterdir()
                if f.is_file() and f.suffix in (".yaml", ".yml") and not f.name.startswith(".")
            )
            nested = sorted(
                f
                for name in MANIFEST_NAMES
                for f in p.rglob(name)
                if f.parent != p
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not direct and not nested:
                raise InputError(f"{raw}: no manifest files (*.yaml, */diplo.yaml) in this folder")
            found.extend(direct + nested)
        else:
            hint = "create it, or point -f at a manifest file or folder"
            raise InputError(f"{raw}: no such file or folder", hint=hint)
    reads.note(*found)  # which files there are: its caller compares the list itself
    unique: dict[Path, None] = {}
    for f in found:
        unique.setdefault(f.resolve(), None)
    return list(unique)
