"""`diplo apply` of manifests without apps changes nothing and says so (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from diplo.cli import main


@pytest.mark.parametrize("text", ["", "project: shop\n", "apps: {}\n"])
def test_apply_of_a_file_without_apps_is_exit_2_naming_it(tmp_path: Path, monkeypatch, text):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    path = tmp_path / "diplo.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path.resolve()}: no apps; nothing was changed" in result.output
    assert not (tmp_path / "home").exists()  # nothing touched, not even DIPLO_HOME
