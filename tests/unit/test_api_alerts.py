"""GET /alerts as a client sees it: firing and resolved alerts with their channels'
delivery status, a channel's URL masked, and who may read it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from diplo.api.app import create_app

from .apiworld import AUTH, HOOK_TOKEN, VIEWER, World, home_world, tokens


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from home_world(tmp_path, monkeypatch, tokens())


def test_a_viewer_sees_what_fires_what_fired_and_each_channel(world: World):
    resp = world.client(headers=VIEWER).get("/alerts")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["enabled"] is True
    (firing,) = body["firing"]
    assert firing["key"] == "deploy:web" and firing["state"] == "firing"
    assert firing["message"] == "web: deploy failed: health gate: timed out"
    hook = firing["deliveries"]["hook"]
    assert (hook["state"], hook["status"], hook["error"]) == ("firing", "queued", None)
    (resolved,) = body["resolved"]
    assert resolved["key"] == "deploy:worker" and resolved["resolved_at"] >= resolved["since"]
    (channel,) = body["channels"]
    assert channel["target"] == "http://127.0.0.1:9/***" and channel["queued"] == 3
    assert HOOK_TOKEN not in resp.text


def test_alerts_are_events_on_the_bus_too(world: World):
    kinds = [(e.kind, e.app) for e in world.controller.bus.recent if e.kind.startswith("alert.")]
    assert kinds == [
        ("alert.firing", "worker"),
        ("alert.resolved", "worker"),
        ("alert.firing", "web"),
    ]


def test_without_a_token_alerts_are_refused(world: World):
    assert world.client().get("/alerts").status_code == 401


def test_alerts_off_answers_an_empty_list(world: World):
    api = create_app(world.controller, tokens())
    resp = TestClient(api, headers=AUTH).get("/alerts")
    assert resp.json() == {"enabled": False, "firing": [], "resolved": [], "channels": []}
