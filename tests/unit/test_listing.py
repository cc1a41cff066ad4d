"""The engine listing the controller's reconciles share (ops/listing.py): one listing for a
resync's batch, never stale for the app whose lock a reconcile holds."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from diplo.controller.controller import Controller
from diplo.controller.workqueue import ALL
from diplo.ledger import Ledger
from diplo.model import Observed
from diplo.ops.context import Context
from diplo.ops.listing import SharedListing
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID, Clock

APPS = ["a", "b", "c", "d", "e"]


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    folder = tmp_path / "m"
    folder.mkdir()
    apps = {n: {"image": "busybox:latest", "health": {"start_period": "0s"}} for n in APPS}
    (folder / "diplo.yaml").write_text(yaml.safe_dump({"project": "shop", "apps": apps}))
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    ledger = Ledger(tmp_path / "home" / "ledger.db")
    c = Controller(folder, Context(_runtime=engine, _ledger=ledger))
    c.reload()
    for name in APPS:
        c.handle(name)
    yield c
    ledger.close()


def drain(controller: Controller) -> list[str]:
    """Work the queue in this thread, as a worker would; the keys handled."""
    handled = []
    while (key := controller.queue.get(timeout=0)) is not None:
        controller.handle(key)
        controller.queue.done(key)
        handled.append(key)
    return handled


def full_listings(engine: MemoryRuntime) -> int:
    return sum(1 for apps in engine.listings if apps is None)


def test_a_resync_lists_the_engine_once_for_all_its_reconciles(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    engine.listings.clear()
    controller.queue.add(ALL)
    assert drain(controller) == [ALL, *APPS]
    # One whole listing, taken by the first reconcile (after its lock); each other one
    # lists its own app again after its lock. Nothing changed, and the view showed the
    # apps' containers as they are: no status refresh (the health loop probes).
    assert full_listings(engine) == 1
    assert sorted(a for apps in engine.listings if apps for a in apps) == APPS[1:]


def resync(controller: Controller) -> list[frozenset[str] | None]:
    """A resync, worked to its end; the engine listings it took."""
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    engine.listings.clear()
    controller.queue.add(ALL)
    handled = drain(controller)  # an app with work to do is handed to the normal lane
    assert handled[0] == ALL and sorted(set(handled[1:])) == APPS
    return list(engine.listings)


def skips(controller: Controller) -> float:
    return controller.meter.resync_skips._value.get()


def test_a_resync_that_finds_nothing_changed_lists_no_app_again(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    resync(controller)  # the first looks are full: each finds nothing to do
    engine.calls.clear()
    before = skips(controller)
    assert resync(controller) == [None]  # one whole listing, and no app's own
    assert skips(controller) - before == len(APPS)
    assert engine.calls == []


def test_a_resync_still_heals_what_no_event_reported(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    resync(controller)
    (gone,) = [c.id for c in engine.containers.values() if c.spec.labels["diplo.app"] == "c"]
    engine.remove(gone)  # and the event stream said nothing
    engine.calls.clear()
    resync(controller)
    assert [k for k, _ in engine.calls if k in ("create", "start")] == ["create", "start"]
    assert controller.view.rows["c"].state == "running"


def test_a_resync_looks_in_full_at_an_app_an_event_marked(controller: Controller):
    resync(controller)
    controller.triggers.on_event("d")  # e.g. `diplo apply` of another process touched d
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    controller.listing.observe(frozenset())  # the resync's listing, taken before the event
    controller.triggers.on_event("d")
    engine.listings.clear()
    for app in ("d", "e"):
        controller.queue.add(app, background=True)
    before = skips(controller)
    drain(controller)
    assert engine.listings == [frozenset({"d"})]  # d looked at in full, e skipped
    assert skips(controller) - before == 1


def test_a_resync_looks_in_full_when_the_image_tag_moved(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    resync(controller)
    engine.images["busybox:latest"] = "sha256:" + "9" * 64  # pulled by hand: no event
    before = skips(controller)
    listings = resync(controller)
    assert sorted(a for apps in listings if apps for a in apps) == APPS  # each one planned
    assert skips(controller) == before


def test_another_image_tagged_on_the_host_changes_no_look(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    resync(controller)
    engine.images["diplo-kept/a:d9"] = "sha256:" + "8" * 64  # a deploy's kept tag, say
    before = skips(controller)
    assert resync(controller) == [None]
    assert skips(controller) - before == len(APPS)


def test_a_resync_looks_in_full_when_the_ledger_record_changed(controller: Controller):
    resync(controller)
    ledger = controller.ctx.ledger
    record = ledger.snapshot().apps["b"]
    # another process recorded a spec for b without touching its container
    ledger.record_applied("b", "shop", record.spec_hash, {**record.spec, "domains": []}, None)
    before = skips(controller)
    listings = resync(controller)
    assert frozenset({"b"}) in listings
    assert skips(controller) - before == len(APPS) - 1
    assert ledger.snapshot().apps["b"].spec == record.spec  # the source's spec again


def test_a_reconcile_that_finds_other_containers_than_shown_refreshes_the_view(
    controller: Controller,
):
    view = controller.view
    real = view.rows["b"]
    view.rows["b"] = replace(real, containers=[{**real.containers[0], "id": "0123456789ab"}])
    controller.handle("b")  # nothing to do for the engine, but the view was wrong
    assert view.rows["b"].containers == real.containers


def test_a_reconcile_sees_its_own_app_as_it_is_after_its_lock(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    controller.handle("b")  # a shared listing is taken, with a's container in it
    (gone,) = [c.id for c in engine.containers.values() if c.spec.labels["diplo.app"] == "a"]
    engine.remove(gone)  # removed meanwhile, and no event has told the controller yet
    engine.calls.clear()
    controller.handle("a")
    assert [k for k, _ in engine.calls if k in ("create", "start")] == ["create", "start"]
    assert controller.view.rows["a"].state == "running"


def test_an_engine_event_marks_its_app_to_be_listed_again(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    controller.handle("a")
    engine.listings.clear()
    controller.handle("b")
    assert engine.listings == [frozenset({"b"})]  # shared, and b's own listed again
    controller.triggers.on_event("d")  # what the event loop calls for a container event
    controller.handle("c")
    assert engine.listings[-1] == frozenset({"c", "d"})
    controller.handle("e")
    assert engine.listings[-1] == frozenset({"e"})  # d's listed since: settled


def test_a_drift_heal_marks_its_app_and_keeps_the_rest(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    controller.handle("a")
    (gone,) = [c.id for c in engine.containers.values() if c.spec.labels["diplo.app"] == "b"]
    engine.remove(gone)
    engine.listings.clear()
    controller.handle("b")  # created again: only containers changed
    controller.handle("c")
    assert full_listings(engine) == 0
    assert frozenset({"b", "c"}) in engine.listings
    shown = {c.app for c in controller.listing.observe(frozenset({"d"})).containers}
    assert shown == set(APPS)


def test_an_event_during_a_listing_is_not_lost():
    engine = MemoryRuntime()
    shared = listed(engine)
    shared.observe(frozenset({"a"}))  # the whole listing
    shared.event("x")
    real = engine.observe

    def racing(*args: object, **kw: object) -> Observed:
        out = real(*args, **kw)  # type: ignore[arg-type]
        shared.event("x")  # x changes again while its containers are on their way
        return out

    engine.observe = racing  # type: ignore[method-assign]
    shared.observe(frozenset({"a"}))
    engine.observe = real  # type: ignore[method-assign]
    shared.observe(frozenset({"a"}))
    assert engine.listings[-1] == frozenset({"a", "x"})  # listed again: it may have missed it


def test_a_failed_reconcile_drops_the_shared_listing(controller: Controller, monkeypatch):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    controller.handle("a")
    from diplo.errors import LedgerError

    def broken(*_: object, **__: object) -> object:
        raise LedgerError("the disk is full")

    monkeypatch.setattr(controller.ctx.ledger, "snapshot", broken)
    controller.handle("b")
    assert controller.view.errors["b"] == "the disk is full"
    monkeypatch.undo()
    engine.listings.clear()
    controller.handle("b")
    assert full_listings(engine) == 1


def listed(ctx_engine: MemoryRuntime, **kw: object) -> SharedListing:
    return SharedListing(Context(_runtime=ctx_engine), **kw)  # type: ignore[arg-type]


def test_the_listing_is_taken_again_once_too_old():
    engine = MemoryRuntime()
    clock = Clock(1000.0)
    shared = listed(engine, max_age=10.0, clock=clock)
    shared.observe(frozenset({"a"}))
    shared.observe(frozenset({"a"}))
    assert engine.listings == [None, frozenset({"a"})]
    clock.now += 10.5
    shared.observe(frozenset({"a"}))
    assert engine.listings[-1] is None


def test_a_listing_begun_before_an_invalidation_is_not_kept():
    engine = MemoryRuntime()
    shared = listed(engine)
    real = engine.observe

    def racing(*args: object, **kw: object) -> Observed:
        out = real(*args, **kw)  # type: ignore[arg-type]
        shared.invalidate()  # an event arrives while the listing is on its way
        return out

    engine.observe = racing  # type: ignore[method-assign]
    shared.observe(frozenset({"a"}))
    engine.observe = real  # type: ignore[method-assign]
    shared.observe(frozenset({"a"}))
    assert engine.listings == [None, None]


def test_callers_at_once_share_one_listing():
    engine = MemoryRuntime()
    shared = listed(engine)
    real = engine.observe

    def slow(*args: object, **kw: object) -> Observed:
        time.sleep(0.05)
        return real(*args, **kw)  # type: ignore[arg-type]

    engine.observe = slow  # type: ignore[method-assign]
    threads = [
        threading.Thread(target=shared.observe, args=(frozenset({f"app{i}"}),)) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert full_listings(engine) == 1
    assert len(engine.listings) == 6  # the others: their own app's containers, listed again


def test_a_failed_listing_is_not_kept_and_frees_the_waiters():
    engine = MemoryRuntime()
    shared = listed(engine)
    real = engine.observe

    def down(*_: object, **__: object) -> Observed:
        from diplo.errors import EngineUnavailable

        raise EngineUnavailable("the engine is gone")

    engine.observe = down  # type: ignore[method-assign]
    with pytest.raises(Exception, match="the engine is gone"):
        shared.observe(frozenset({"a"}))
    engine.observe = real  # type: ignore[method-assign]
    shared.observe(frozenset({"a"}))
    assert engine.listings == [None]


def blocking(engine: MemoryRuntime) -> tuple[threading.Event, threading.Event]:
    """Make the engine's whole listings wait for `go`; `started` is set when one begins."""
    started, go = threading.Event(), threading.Event()
    real = engine.observe

    def slow(*args: object, **kw: object) -> Observed:
        if kw.get("apps") is None:
            started.set()
            assert go.wait(5)
        return real(*args, **kw)  # type: ignore[arg-type]

    engine.observe = slow  # type: ignore[method-assign]
    return started, go


def test_a_heal_does_not_wait_for_the_new_listing_a_resync_takes():
    """At 500 apps a whole listing takes 150-300 ms: a heal right after a resync gets the
    listing being replaced, with its own app (and any app an event marked) listed again."""
    engine = MemoryRuntime()
    shared = listed(engine)
    shared.observe(frozenset({"a"}))  # the whole listing
    shared.event("x")
    shared.renew()  # a resync
    started, go = blocking(engine)
    resync = threading.Thread(target=shared.observe, args=(frozenset(),))
    resync.start()
    assert started.wait(5)
    shared.observe(frozenset({"a"}), wait=False)  # returns while the resync's lists
    assert resync.is_alive()
    assert engine.listings[-1] == frozenset({"a", "x"})
    go.set()
    resync.join(5)
    assert full_listings(engine) == 2  # the first, and the resync's
    shared.observe(frozenset({"a"}), wait=False)
    assert full_listings(engine) == 2  # the new one, now that it is there


def test_after_a_resync_the_next_caller_takes_a_new_listing():
    engine = MemoryRuntime()
    shared = listed(engine)
    shared.observe(frozenset({"a"}))
    shared.renew()
    shared.observe(frozenset({"a"}), wait=False)  # nobody is taking it: this one does
    assert engine.listings == [None, None]
    shared.observe(frozenset({"a"}))
    assert engine.listings == [None, None, frozenset({"a"})]


def test_an_event_while_a_whole_listing_is_taken_stays_marked():
    engine = MemoryRuntime()
    shared = listed(engine)
    started, go = blocking(engine)
    first = threading.Thread(target=shared.observe, args=(frozenset(),))
    first.start()
    assert started.wait(5)
    shared.event("x")  # the listing on its way may have missed it
    go.set()
    first.join(5)
    shared.observe(frozenset({"a"}))
    assert engine.listings[-1] == frozenset({"a", "x"})


# --- GET /apps's body, kept by the view -------------------------------------------------------


def from_scratch(controller: Controller) -> bytes:
    view = controller.view
    names = sorted(set(view.rows) | {a.name for a in controller.state.desired.apps})
    m = controller.state.manifest
    body = {
        "apps": [view.summary(n) for n in names],
        "manifest": {"ok": m.ok, "error": m.error, "issues": m.issues, "files": m.files},
        "sources": [s.describe() for s in controller.sources],
    }
    return json.dumps(body).encode()


def test_the_apps_body_is_what_a_whole_serialisation_gives(controller: Controller, monkeypatch):
    view = controller.view
    assert view.listing() == from_scratch(controller)
    published: list[bytes] = []  # what serve's front is handed: every body, in order
    view.publish = published.append
    serialised: list[str] = []
    real = view.summary
    monkeypatch.setattr(view, "summary", lambda n: serialised.append(n) or real(n))
    controller.handle("c")
    assert serialised == []  # nothing changed
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    (gone,) = [c.id for c in engine.containers.values() if c.spec.labels["diplo.app"] == "c"]
    engine.remove(gone)
    controller.handle("c")
    assert set(serialised) == {"c"}  # a drift healed: that app's line alone
    assert view.listing() == from_scratch(controller)

    engine.fail_start["busybox:latest"] = "crashed"
    folder = controller.manifests
    assert folder is not None
    apps = {n: {"image": "busybox:latest", "command": ["v2"]} for n in APPS if n != "e"}
    (folder / "diplo.yaml").write_text(yaml.safe_dump({"project": "shop", "apps": apps}))
    controller.queue.add(ALL)
    drain(controller)
    assert view.errors and "e" not in view.rows  # failed deploys, and e pruned
    assert view.listing() == from_scratch(controller)
    view.refresh()
    assert view.listing() == from_scratch(controller)
    (folder / "diplo.yaml").write_text("apps: [")
    controller.reload()
    assert b'"ok": false' in view.listing()
    assert view.listing() == from_scratch(controller)
    assert len(published) >= 4 and published[-1] is view.listing()


def test_a_deploy_that_pulled_an_image_drops_the_whole_listing(controller: Controller):
    engine = controller.ctx.runtime
    assert isinstance(engine, MemoryRuntime)
    controller.handle("a")
    engine.registry["nginx:1"] = "sha256:" + "e" * 64  # a new image, pulled by the deploy
    folder = controller.manifests
    assert folder is not None
    apps = {n: {"image": "nginx:1" if n == "b" else "busybox:latest"} for n in APPS}
    (folder / "diplo.yaml").write_text(yaml.safe_dump({"project": "shop", "apps": apps}))
    controller.reload()
    controller.handle("b")
    assert ("pull", "nginx:1") in engine.calls
    engine.listings.clear()
    controller.handle("c")
    assert full_listings(engine) == 1  # the images changed: listed again, whole
