"""GET /apps shows each app's replicas as ready/desired."""

from __future__ import annotations

from pathlib import Path

import pytest

from .apiworld import app_specs, build_world


def test_apps_show_ready_over_desired_replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    world = build_world(tmp_path)
    try:
        specs = app_specs()
        specs["worker"]["replicas"] = 3
        world.write(specs)
        world.controller.handle("worker")
        client = world.client()
        rows = {row["app"]: row for row in client.get("/apps").json()["apps"]}
        assert rows["worker"]["replicas"] == "3/3" and rows["web"]["replicas"] == "1/1"
        one = next(c for c in world.engine.containers.values() if c.spec.name == "shop-worker-2")
        one.state = "exited"
        world.controller.view.refresh()
        rows = {row["app"]: row for row in client.get("/apps").json()["apps"]}
        assert rows["worker"]["replicas"] == "2/3" and rows["worker"]["state"] == "partial"
    finally:
        world.ledger.close()
