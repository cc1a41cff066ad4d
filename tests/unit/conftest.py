"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .gitrepo import git


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    return repo
