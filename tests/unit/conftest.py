"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .gitrepo import git


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    return repo


@pytest.fixture(autouse=True)
def _digest_key_of_the_test() -> Iterator[None]:
    """A CLI command installs the host's key source, which reads $DIPLO_HOME lazily: it
    must not outlive the test (and its monkeypatched DIPLO_HOME) into the next one."""
    from diplo import model

    saved = model._digest_key, model._key_source
    yield
    model._digest_key, model._key_source = saved
