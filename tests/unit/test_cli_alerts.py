"""`diplo alerts` as a user meets it: through a running `diplo serve` (apiworld's, where
`web`'s deploy failed and fires and `worker`'s was fixed), and without one, from the
ledger the last serve wrote."""

from __future__ import annotations

import json
from pathlib import Path

from diplo.alerts.state import AlertBook, Reading
from diplo.ledger import Ledger

from .apiworld import HOOK_TOKEN
from .cliworld import CliWorld, ServedWorld


def test_alerts_from_the_server(served: ServedWorld):
    result = served.run("alerts")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        *("STATE", "ALERT", "SINCE", "RESOLVED", "VALUE", "THRESHOLD", "MESSAGE"),
    ]
    assert lines[1].split()[:2] == ["FIRING", "deploy:web"]
    assert lines[2].split()[:2] == ["RESOLVED", "deploy:worker"]
    assert lines[-1] == "channel hook (slack, http://127.0.0.1:9/***): 0 sent, 3 queued"
    assert HOOK_TOKEN not in result.output

    as_json = json.loads(served.run("alerts", "--json").stdout)
    assert as_json["served_by"] == served.url
    assert [a["key"] for a in as_json["firing"]] == ["deploy:web"]


def test_alerts_without_a_server_come_from_the_ledger(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DIPLO_TOKEN", raising=False)
    world = CliWorld(tmp_path)
    assert world.run("alerts").stdout.splitlines()[0] == "no alerts"
    book = AlertBook(Ledger(world.ledger_path))
    book.observe("memory", "db", Reading("db", "95.0%", "90%", "db: memory 95.0%"), now=1e9)
    book.observe("down", "web", Reading("web", "crashed", None, "web is crashed"), now=1e9)
    book.clear("down", "web", now=1e9 + 60)
    result = world.run("alerts")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split()[:2] == ["FIRING", "memory:db"] and "95.0%" in lines[1]
    assert lines[2].split()[:2] == ["RESOLVED", "down:web"]
    assert lines[-1].startswith("(from the ledger: no diplo serve runs")
    answer = json.loads(world.run("alerts", "--json").stdout)
    assert [a["key"] for a in answer["resolved"]] == ["down:web"]
    assert answer["firing"][0]["value"] == "95.0%"
