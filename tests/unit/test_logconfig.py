"""Logs never carry a secret through a traceback's local variables (security review H3)."""

from __future__ import annotations

import pytest
import structlog

from diplo.logconfig import configure

SECRET = "tok-SECRET-123"


def _crash() -> None:
    token = SECRET  # a local, as a reconcile's locals hold env values
    raise ValueError(f"boom ({len(token)} chars)")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_logged_traceback_shows_no_locals(fmt: str, capsys: pytest.CaptureFixture[str]):
    configure(fmt, "info")
    try:
        _crash()
    except ValueError:
        structlog.get_logger("diplo.test").exception("reconcile.crashed", app="web")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "reconcile.crashed" in text and "ValueError" in text and "_crash" in text
    assert SECRET not in text
