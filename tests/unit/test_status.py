"""`diplo status` (and the controller's view) show this Diplo's apps only: another Diplo
home's apps on the same engine are neither listed, judged nor offered for pruning."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from diplo.errors import InputError
from diplo.ledger import Ledger
from diplo.ops.apply import apply
from diplo.ops.context import Context
from diplo.ops.lifecycle import down
from diplo.ops.status import status
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID, app, state


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two Diplo homes (two ledgers) on one engine."""
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "locks"))
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    a = Context(_runtime=engine, _ledger=Ledger(tmp_path / "a.db"))
    b = Context(_runtime=engine, _ledger=Ledger(tmp_path / "b.db"))
    yield a, b
    a.close()
    b.close()


def test_status_lists_only_this_homes_apps_and_its_orphans(homes):
    a, b = homes
    assert apply(a, state(app("web", "shop"), app("api", "shop"))).ok
    assert apply(b, state(app("blog", "other"))).ok
    assert [v.app for v in status(a)] == ["api", "web"]
    assert [v.app for v in status(b)] == ["blog"]
    # The ledger forgets `api` (lost, say); its container is of our project: an orphan.
    a.ledger.forget_app("api")
    views = {v.app: v for v in status(a)}
    assert views["api"].state == "orphaned" and "blog" not in views
    with pytest.raises(InputError, match="project 'other' of another Diplo"):
        status(a, "blog")


def test_down_all_leaves_another_homes_apps_running(homes):
    a, b = homes
    assert apply(a, state(app("web", "shop"))).ok
    assert apply(b, state(app("blog", "other"))).ok
    down(a, [], everything=True)
    assert [v.app for v in status(b)] == ["blog"] and status(b)[0].state == "running"
    assert status(a) == []


def test_a_projects_network_goes_with_its_last_pruned_app(homes):
    a, _ = homes
    engine = a.runtime
    assert apply(a, state(app("web", "shop"), app("api", "shop"))).ok
    assert "diplo-shop" in engine.networks
    assert apply(a, state(app("web", "shop")), prune=True).ok  # api pruned; web still runs
    assert "diplo-shop" in engine.networks
    empty = replace(state(), projects=("shop",), allow_empty=True)
    assert apply(a, empty, prune=True).ok
    assert "diplo-shop" not in engine.networks and engine.containers == {}


def test_down_waits_for_a_deploy_in_flight(homes, monkeypatch):
    """`diplo down` takes the apps' locks: it never removes an app under a deploy of
    `diplo serve` or `diplo apply` (security review L7)."""
    from diplo import errors
    from diplo.ops import lifecycle

    a, _ = homes
    assert apply(a, state(app("web", "shop"))).ok
    monkeypatch.setattr(lifecycle, "LOCK_WAIT", 0.2)
    with a.locks.hold(["web"]), pytest.raises(errors.LockTimeout):
        down(a, ["web"])
    assert [v.app for v in status(a)] == ["web"]
    assert down(a, ["web"]) and status(a) == []


def _probe_times(monkeypatch: pytest.MonkeyPatch, rendezvous: threading.Barrier | None = None):
    """Record when each app's health check starts (and, given a barrier, make them meet
    there: only probes in flight together get past it)."""
    import diplo.ops.status as ops_status
    from diplo.health import Health

    started: list[float] = []

    def check(ctx, app, container, health, ports, **_):
        started.append(time.monotonic())
        if rendezvous is not None:
            rendezvous.wait()
        return Health.HEALTHY, "ok", None

    monkeypatch.setattr(ops_status, "check_health", check)
    return started


def test_a_status_probes_every_app_at_once(homes, monkeypatch: pytest.MonkeyPatch):
    a, _ = homes
    names = [f"a{i}" for i in range(5)]
    assert apply(a, state(*(app(n, "shop") for n in names))).ok
    _probe_times(monkeypatch, threading.Barrier(5, timeout=10))
    assert {v.health for v in status(a)} == {"healthy"}  # all five were in flight together


def test_the_health_loop_spreads_its_probes_over_the_pace(homes, monkeypatch):
    a, _ = homes
    names = [f"a{i}" for i in range(5)]
    assert apply(a, state(*(app(n, "shop") for n in names))).ok
    started = _probe_times(monkeypatch)
    asked = time.monotonic()
    views = status(a, pace=0.5)
    assert {v.health for v in views} == {"healthy"} and len(started) == 5
    # one every pace / 5 = 0.1 s: the (i+1)th to start did so 0.1 * i s after the first
    # could at the earliest (sleeps only ever run long)
    for i, at in enumerate(sorted(started)):
        assert at - asked >= 0.1 * i - 0.001
