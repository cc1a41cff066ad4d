"""Usage errors from the command line: a clear message and exit code 2, never an
"internal error"."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diplo.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve"], "give --manifests DIR, --repo URL, or both"),
        (["down"], "name the apps to remove, or pass --all"),
        (["serve", "--repo", "x", "--path", "../up"], "give a folder inside the repository"),
    ],
)
def test_usage_errors_exit_2_with_the_reason(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "internal error" not in result.output


def test_a_deployment_id_beyond_sqlite_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["rollback", "web", "--to", str(2**63)])
    assert result.exit_code == 2 and "internal error" not in result.output
