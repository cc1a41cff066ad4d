"""The controller's reconcile and restart logic over the in-memory engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from diplo.controller.controller import Controller
from diplo.ledger import Ledger
from diplo.ops.context import Context
from diplo.ops.status import AppView
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID, Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "diplo.yaml").write_text(
        yaml.safe_dump(
            {
                "project": "shop",
                "apps": {"web": {"image": "busybox:latest", "health": {"start_period": "0s"}}},
            }
        )
    )
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    ledger = Ledger(tmp_path / "home" / "ledger.db")
    c = Controller(folder, Context(_runtime=engine, _ledger=ledger), clock=clock)
    c.reload()
    yield c
    ledger.close()


def test_reconcile_creates_then_does_nothing(controller: Controller):
    engine = controller.ctx.runtime
    controller.handle("web")
    assert [k for k, _ in engine.calls if k in ("create", "start")] == ["create", "start"]
    engine.calls.clear()
    controller.handle("web")
    assert engine.calls == []
    assert controller.view.rows["web"].health == "healthy"


def _turn_unhealthy(controller: Controller) -> None:
    rows = controller.view.rows
    rows["web"] = replace(rows["web"], health="unhealthy", health_detail="HTTP 500")


def heal(controller: Controller) -> None:
    controller.heal()
    assert controller.wait_restarts(5)


def test_unhealthy_app_is_restarted_with_backoff(controller: Controller, clock: Clock):
    engine = controller.ctx.runtime
    controller.handle("web")
    _turn_unhealthy(controller)
    engine.calls.clear()
    heal(controller)
    assert [k for k, _ in engine.calls] == ["stop", "start"]
    engine.calls.clear()
    _turn_unhealthy(controller)
    clock.now += 0.9
    heal(controller)  # within the 1 s backoff: left alone
    assert engine.calls == []
    clock.now += 0.2
    heal(controller)
    assert [k for k, _ in engine.calls] == ["stop", "start"]
    engine.calls.clear()
    _turn_unhealthy(controller)
    clock.now += 1.9  # the next wait is 2 s
    heal(controller)
    assert engine.calls == []
    clock.now += 0.2
    heal(controller)
    assert [k for k, _ in engine.calls] == ["stop", "start"]
    assert controller.healer.restarts("web") == 3
    kinds = [e.kind for e in controller.ctx.ledger.events("web")]
    assert kinds.count("app.restarted") == 3
    assert metric(controller, "diplo_health_restarts_total") == 3


def metric(controller: Controller, name: str, **labels: str) -> float | None:
    return controller.meter.registry.get_sample_value(name, labels)


def test_reconciles_deploys_and_drift_heals_are_counted(controller: Controller):
    engine = controller.ctx.runtime
    controller.handle("web")
    controller.handle("web")  # nothing to do
    assert metric(controller, "diplo_deploys_total", kind="create", result="ok") == 1
    assert metric(controller, "diplo_deploy_duration_seconds_count", result="ok") == 1
    assert metric(controller, "diplo_reconciles_total", result="ok") == 2
    for cid in list(engine.containers):  # removed by hand: drift
        engine.remove(cid)
    controller.handle("web")
    assert metric(controller, "diplo_drift_heals_total") == 1
    assert metric(controller, "diplo_deploys_total", kind="create", result="ok") == 2
    controller.queue.add("other")
    assert metric(controller, "diplo_workqueue_depth") == 1


def test_a_new_app_is_created_not_healed_though_the_view_lists_it(controller: Controller):
    """serve's view can list an app while its first deploy runs: that first create is an
    `app.create`; only a create of an app deployed before is a drift heal."""
    engine = controller.ctx.runtime
    # the health loop's full refresh lists an app as soon as its first container exists
    controller.view.rows["web"] = AppView("web", project="shop", state="partial")
    controller.handle("web")
    kinds = [e.kind for e in controller.bus.recent if e.app == "web"]
    assert "app.create" in kinds and "drift.healed" not in kinds
    assert metric(controller, "diplo_drift_heals_total") == 0
    for cid in list(engine.containers):
        engine.remove(cid)
    controller.handle("web")
    assert [e.kind for e in controller.bus.recent if e.app == "web"][-1] == "drift.healed"
    assert metric(controller, "diplo_drift_heals_total") == 1


def test_a_slow_restart_does_not_hold_the_health_loop(controller: Controller, clock: Clock):
    """A PID 1 that ignores SIGTERM takes its whole grace period to stop: the heal goes
    on beside it, and the same app is not restarted twice meanwhile."""
    engine = controller.ctx.runtime
    controller.handle("web")
    release = threading.Event()
    stopping = threading.Event()
    real_stop = engine.stop

    def slow_stop(container_id: str, timeout: int) -> None:
        stopping.set()
        release.wait(10)
        real_stop(container_id, timeout)

    engine.stop = slow_stop  # type: ignore[method-assign]
    _turn_unhealthy(controller)
    began = time.monotonic()
    controller.heal()
    assert stopping.wait(5)
    assert time.monotonic() - began < 5  # back at once, the stop still running
    clock.now += 10
    _turn_unhealthy(controller)
    controller.heal()  # the restart in flight: not a second one
    release.set()
    assert controller.wait_restarts(5)
    assert [k for k, _ in engine.calls].count("start") == 2  # the deploy's and the restart's
    assert controller.healer.restarts("web") == 1


def test_invalid_manifest_keeps_the_last_good_state(controller: Controller):
    controller.handle("web")
    (controller.manifests / "diplo.yaml").write_text("apps: [broken")
    assert controller.reload() == set()
    manifest = controller.state.manifest
    assert not manifest.ok and "invalid YAML" in (manifest.error or "")
    assert controller.state.desired.app("web") is not None


def test_removed_app_is_pruned(controller: Controller):
    engine = controller.ctx.runtime
    controller.handle("web")
    (controller.manifests / "diplo.yaml").write_text(
        yaml.safe_dump(
            {
                "project": "shop",
                "apps": {"api": {"image": "busybox:latest", "health": {"start_period": "0s"}}},
            }
        )
    )
    assert controller.reload() == {"web", "api"}
    controller.handle("web")
    assert [c.spec.labels["diplo.app"] for c in engine.containers.values()] == []
    assert "web" not in controller.view.rows


def test_an_edit_changes_only_its_app_though_it_moves_the_lines_below(controller: Controller):
    """An app's file:line is where it is written, not what it is: an edit that adds lines
    above other apps of the file must not make each of them a changed app (a full look at
    every app below the edit, 500 of them in one file)."""
    path = controller.manifests / "diplo.yaml"

    def write(web_env: dict[str, str]) -> None:
        web: dict[str, object] = {"image": "busybox:latest", "env": web_env}
        apps = {"web": web, "api": {"image": "busybox:latest"}}
        path.write_text(yaml.safe_dump({"project": "shop", "apps": apps}, sort_keys=False))

    write({})
    controller.reload()
    line_before = controller.state.desired.app("api").source
    write({"A": "1", "B": "2", "C": "3"})
    assert controller.reload() == {"web"}
    line_after = controller.state.desired.app("api").source
    assert line_after != line_before  # messages still point at where it is now
    assert int(line_after.rpartition(":")[2]) > int(line_before.rpartition(":")[2])


def test_an_empty_source_prunes_nothing_unless_it_allows_it(controller: Controller):
    engine = controller.ctx.runtime
    controller.handle("web")
    path = controller.manifests / "diplo.yaml"
    for empty in ("", "apps: {}\n", "project: shop\n"):  # a truncated file, a bad edit
        path.write_text(empty)
        assert controller.reload() == set()
        manifest = controller.state.manifest
        assert not manifest.ok and "refusing to prune the 1 app(s)" in (manifest.error or "")
        controller.handle("web")
        assert len(engine.containers) == 1
    path.unlink()  # no manifest file at all
    controller.reload()
    assert not controller.state.manifest.ok and len(engine.containers) == 1
    path.write_text(yaml.safe_dump({"project": "shop", "allow_empty": True, "apps": {}}))
    assert controller.reload() == {"web"}
    controller.handle("web")
    assert engine.containers == {}


def test_prune_false_keeps_a_removed_app(controller: Controller):
    engine = controller.ctx.runtime
    path = controller.manifests / "diplo.yaml"
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "prune": False}))
    controller.reload()
    controller.handle("web")
    path.write_text(
        yaml.safe_dump({"project": "shop", "prune": False, "allow_empty": True, "apps": {}})
    )
    assert controller.reload() == {"web"}
    controller.handle("web")
    assert len(engine.containers) == 1


def _write(controller: Controller, **web: object) -> None:
    assert controller.manifests is not None
    spec = {"image": "busybox:latest", "health": {"start_period": "0s"}, **web}
    (controller.manifests / "diplo.yaml").write_text(
        yaml.safe_dump({"project": "shop", "apps": {"web": spec}})
    )


def _view(controller: Controller) -> AppView:
    view = controller.view.app("web")
    assert view is not None
    return view


def _sync(controller: Controller) -> dict[str, object]:
    sync = _view(controller).sync
    assert sync is not None
    return sync


def test_sync_status_follows_the_source(controller: Controller):
    assert _sync(controller)["status"] == "OutOfSync"  # not deployed
    controller.handle("web")
    assert _sync(controller) == {"status": "Synced", "differs": []}
    _write(controller, command=["sleep", "100"])
    controller.reload()
    assert _sync(controller) == {"status": "OutOfSync", "differs": ["command"]}
    (controller.manifests / "diplo.yaml").write_text("apps: [broken")
    controller.reload()
    assert _sync(controller)["status"] == "Unknown"


def test_sync_status_kept_between_health_ticks_follows_deploys_and_edits(
    controller: Controller,
):
    """Health ticks keep each app's spec diff (500 apps' diffs were 130 ms of every
    tick): a deploy, an edit and an edit undone still show at once."""
    controller.handle("web")
    controller.view.refresh()  # a health tick
    assert _sync(controller) == {"status": "Synced", "differs": []}
    _write(controller, command=["sleep", "100"])
    controller.reload()
    controller.view.refresh()
    assert _sync(controller) == {"status": "OutOfSync", "differs": ["command"]}
    controller.handle("web")  # deployed: the record changed, the source did not
    controller.view.refresh()
    assert _sync(controller) == {"status": "Synced", "differs": []}
    _write(controller)  # and back: the source changed, the record did not
    controller.reload()
    controller.view.refresh()
    assert _sync(controller) == {"status": "OutOfSync", "differs": ["command"]}


def test_rollback_pins_until_resume(controller: Controller):
    engine = controller.ctx.runtime
    controller.handle("web")
    _write(controller, command=["sleep", "100"])
    controller.reload()
    controller.handle("web")
    (c,) = engine.containers.values()
    assert c.spec.command == ("sleep", "100")

    assert controller.rollback("web") == 1
    controller.handle("web")
    (c,) = engine.containers.values()
    assert c.spec.command is None
    view = controller.view.app("web")
    assert view is not None and view.pinned == {"deployment": 1}
    assert _sync(controller)["status"] == "OutOfSync"
    controller.reload()  # the source still says v2: the pin holds
    engine.calls.clear()
    controller.handle("web")
    assert engine.calls == []
    deps = controller.ctx.ledger.deployments("web")
    assert deps[0].rollback_of == 1 and deps[0].result == "succeeded"

    assert controller.sync("web", resume=True) is True
    controller.handle("web")
    (c,) = engine.containers.values()
    assert c.spec.command == ("sleep", "100")
    assert _view(controller).pinned is None


def test_rollback_with_nothing_to_restore_changes_nothing(controller: Controller):
    from diplo.errors import InputError

    controller.handle("web")
    with pytest.raises(InputError, match="no earlier successful deployment"):
        controller.rollback("web")
    assert controller.ctx.ledger.pins() == {}


def test_a_project_deployed_by_another_source_is_refused(controller: Controller):
    """A manifest naming another source's project would prune that source's apps."""
    from diplo.model import Revision
    from diplo.ops.apply import apply

    from .factories import app, state

    theirs = apply(
        controller.ctx, state(app("blog", "shop")), revision=Revision("folder:/srv/other")
    )
    assert theirs.ok
    engine = controller.ctx.runtime
    assert controller.reload() == set()
    manifest = controller.state.manifest
    assert not manifest.ok
    assert "project 'shop' belongs to another source (folder:/srv/other)" in (manifest.error or "")
    assert (
        manifest.issues[0]["file"].endswith("diplo.yaml") and manifest.issues[0]["line"] == 2
    )  # `web:`
    blog = set(engine.containers)
    controller.handle("blog")  # the last good state (loaded before blog came) says: prune it
    controller.handle("web")
    assert blog < set(engine.containers)  # blog is not this source's: kept, untouched
    assert sorted(c.spec.labels["diplo.app"] for c in engine.containers.values()) == [
        "blog",
        "web",
    ]
    _write(controller)  # the same app in a project of its own is fine
    path = controller.manifests / "diplo.yaml"
    path.write_text(path.read_text().replace("project: shop", "project: mine"))
    assert controller.reload() == {"web"} and controller.state.manifest.ok


def test_a_slow_older_reload_never_wins_over_a_newer_one(tmp_path: Path, monkeypatch):
    """Two workers reloading at once (a resync and a webhook) must not leave the older
    commit in force (security review M7)."""
    import threading

    from diplo.controller.sources import Loaded
    from diplo.model import Revision

    from .factories import app, state

    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    slow_started, release = threading.Event(), threading.Event()
    heads = iter(["c1", "c2"])

    class Repo:
        kind, name = "git", "repo"

        def describe(self) -> dict[str, object]:
            return {}

        def load(self) -> Loaded:
            head = next(heads)
            if head == "c1":  # the older fetch is the slow one
                slow_started.set()
                release.wait(5)
            return Loaded(state(app("web", command=(head,))), Revision("repo", head))

    ledger = Ledger(tmp_path / "home" / "ledger.db")
    c = Controller(Repo(), Context(_runtime=MemoryRuntime(), _ledger=ledger))
    older = threading.Thread(target=c.reload)
    older.start()
    assert slow_started.wait(5)
    newer = threading.Thread(target=c.reload)
    newer.start()
    newer.join(0.3)  # the newer load waits for the older one rather than racing it
    release.set()
    older.join(5)
    newer.join(5)
    assert c.state.loaded.revision.commit == "c2"
    assert c.state.source_desired.app("web").command == ("c2",)
    ledger.close()


def run_health_loop(controller: Controller, every: float, until: Callable[[], bool]) -> bool:
    """The health loop in a thread, ticking every `every` s, until `until()` (10 s at the
    most); whether it stopped when asked."""
    controller.health_every = every
    loop = threading.Thread(target=controller._health_loop, daemon=True)
    loop.start()
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)
    controller._stop.set()
    loop.join(2)
    return not loop.is_alive()


def test_the_health_loop_survives_an_unexpected_error(controller: Controller, monkeypatch):
    calls: list[int] = []

    def refresh(apps: list[str] | None = None, pace: float = 0.0) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug")

    monkeypatch.setattr(controller.view, "refresh", refresh)
    assert run_health_loop(controller, 0.01, lambda: len(calls) >= 4)
    assert len(calls) >= 4


def test_health_ticks_start_a_period_apart_with_their_probes_spread(
    controller: Controller, monkeypatch
):
    import itertools
    import statistics

    starts: list[float] = []
    paces: list[float] = []

    def refresh(apps: list[str] | None = None, pace: float = 0.0) -> None:
        if apps is None and pace:
            starts.append(time.monotonic())
            paces.append(pace)
            time.sleep(0.15)  # the probes of a tick take most of the period

    monkeypatch.setattr(controller.view, "refresh", refresh)
    assert run_health_loop(controller, 0.2, lambda: len(starts) >= 6)
    assert set(paces) == {0.2 * 0.6}
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # each app is probed once a period, not once per period plus a tick's length (0.35 s)
    assert statistics.median(gaps) < 0.3


def test_a_resync_that_finds_work_hands_it_to_the_normal_lane(controller: Controller):
    """A resync's looks run one at a time; a start it finds needed is not made in that one
    slot but queued as a normal key, so that many such starts run side by side."""
    from diplo.controller.workqueue import ALL

    engine = controller.ctx.runtime
    controller.handle("web")
    (cid,) = engine.containers
    engine.stop(cid, 1)  # it stopped and no event said so: a resync finds it
    engine.calls.clear()
    controller.handle(ALL)
    key = controller.queue.get(0)
    assert key == "web" and controller.queue.in_background("web")
    controller.handle(key)
    assert [k for k, _ in engine.calls if k == "start"] == []  # not in the resync's slot
    controller.queue.done(key)
    key = controller.queue.get(0)
    assert key == "web" and not controller.queue.in_background("web")
    controller.handle(key)
    controller.queue.done(key)
    assert [k for k, _ in engine.calls if k == "start"] == ["start"]
    assert controller.view.rows["web"].state == "running"
