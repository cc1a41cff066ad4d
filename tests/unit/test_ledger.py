"""The ledger against a real SQLite file."""

from __future__ import annotations

import sqlite3

import pytest

from diplo.errors import LedgerError
from diplo.ledger import MIGRATIONS, Ledger
from diplo.model import PortAllocation


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "state" / "ledger.db")
    yield led
    led.close()


def test_new_ledger_is_wal_and_at_the_latest_schema(ledger, tmp_path):
    assert ledger.schema_version == len(MIGRATIONS)
    db = sqlite3.connect(tmp_path / "state" / "ledger.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_deployment_lifecycle_records_spec_and_revision(ledger):
    d1 = ledger.start_deployment("web", "shop", "h1")
    ledger.finish_deployment(
        d1, "succeeded", image_id="sha256:1", applied=("web", "shop", "h1", {"a": 1})
    )
    d2 = ledger.start_deployment("web", "shop", "h2")
    ledger.finish_deployment(d2, "failed", step="start", error="exited with code 1")
    deps = ledger.deployments("web")
    assert [(d.revision, d.result) for d in deps] == [(2, "failed"), (1, "succeeded")]
    assert deps[0].step == "start" and deps[0].error == "exited with code 1"
    snap = ledger.snapshot()
    assert (
        snap.apps["web"].spec_hash == "h1"
    )  # a failed deployment does not change the applied spec
    assert ledger.last_deployments()["web"].id == d2
    kinds = [e.kind for e in ledger.events("web")]
    assert kinds == ["deploy.failed", "deploy.started", "deploy.succeeded", "deploy.started"]


def test_ports_and_builds_round_trip(ledger):
    ledger.set_ports("web", [PortAllocation("web", "8080/tcp", "", 21000)])
    ledger.set_ports("web", [PortAllocation("web", "8080/tcp", "", 21001)])
    ledger.record_build("shop/web:1", "bh", "sha256:x")
    snap = ledger.snapshot()
    assert snap.ports == (PortAllocation("web", "8080/tcp", "", 21001),)
    assert snap.builds["shop/web:1"].build_hash == "bh"


def test_forget_app_keeps_ports_on_request(ledger):
    ledger.record_applied("web", "shop", "h", {}, None)
    ledger.set_ports("web", [PortAllocation("web", "8080/tcp", "", 21000)])
    ledger.forget_app("web", keep_ports=True)
    assert "web" not in ledger.snapshot().apps and ledger.snapshot().ports
    ledger.forget_app("web")
    assert ledger.snapshot().ports == ()


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path):
    path = tmp_path / "ledger.db"
    first = Ledger(path)
    first.record_applied("web", "shop", "h", {"image": "x"}, None)
    first.close()
    again = Ledger(path)
    assert again.snapshot().apps["web"].spec == {"image": "x"}
    again.close()


def test_ledger_from_a_newer_diplo_is_refused(tmp_path):
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 999")
    db.close()
    with pytest.raises(LedgerError, match="newer than this Diplo knows"):
        Ledger(path)


def test_unwritable_home_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger(blocker / "ledger.db")


def test_events_are_trimmed_to_the_newest(tmp_path, monkeypatch):
    import diplo.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "EVENTS_KEPT", 5)
    led = ledger_module.Ledger(tmp_path / "l.db")
    for _ in range(4):
        dep = led.start_deployment("web", "shop", "h")
        led.finish_deployment(dep, "succeeded")
    events = led.events(limit=100)
    assert len(events) == 5  # 8 written, the newest 5 kept
    assert events[0].kind == "deploy.succeeded"
    led.close()


def test_a_locked_ledger_is_a_ledger_error_that_names_the_cause(ledger, tmp_path):
    other = sqlite3.connect(tmp_path / "state" / "ledger.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writes, past the busy timeout
    ledger._db.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(LedgerError, match=r"cannot start a transaction.*database is locked"):
            ledger.event("app.restarted", "restarted", "web")
    finally:
        other.execute("ROLLBACK")
        other.close()
    ledger.event("app.restarted", "restarted", "web")  # and the ledger still works
    assert ledger.events("web")[0].kind == "app.restarted"


def test_events_are_trimmed_on_every_insert_not_only_when_deployments_finish(tmp_path, monkeypatch):
    import diplo.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "EVENTS_KEPT", 5)
    led = ledger_module.Ledger(tmp_path / "l.db")
    for n in range(12):
        led.event("app.restarted", f"restart {n}", "web")
    events = led.events(limit=100)
    assert [e.message for e in events] == [f"restart {n}" for n in range(11, 6, -1)]
    led.close()


def test_old_deployments_are_trimmed_but_never_what_a_rollback_needs(tmp_path, monkeypatch):
    import diplo.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "DEPLOYMENTS_KEPT", 3)
    led = ledger_module.Ledger(tmp_path / "l.db")
    ids = []
    for n in range(10):
        dep = led.start_deployment("web", "shop", f"h{n}")
        ids.append(dep)
        if n == 0:
            led.keep_image(dep, "diplo-kept/web:1")
        if n == 1:
            led.pin("web", dep, "rolled back")
        led.finish_deployment(dep, "succeeded" if n in (0, 1, 2) else "failed")
    other = led.start_deployment("api", "shop", "x")
    led.finish_deployment(other, "succeeded")
    kept = [d.id for d in led.deployments("web", limit=100)]
    # the newest 3, the kept image, the pin, and the release that runs (the last success)
    assert sorted(kept) == [ids[0], ids[1], ids[2], ids[7], ids[8], ids[9]]
    assert [d.id for d in led.deployments("api")] == [other]
    assert led.start_deployment("web", "shop", "h") and led.deployments("web")[0].revision == 11
    led.close()


def test_forgetting_an_app_drops_its_probes(ledger):
    ledger.record_probe("web", True, "healthy", "HTTP 200", 1.0)
    ledger.record_probe("api", True, "healthy", "HTTP 200", 1.0)
    ledger.forget_app("web")
    assert ledger.probes("web") == [] and len(ledger.probes("api")) == 1


def test_the_snapshot_is_read_again_after_a_write_of_this_process_or_another(tmp_path):
    path = tmp_path / "ledger.db"
    ours, theirs = Ledger(path), Ledger(path)  # `diplo serve`, and a `diplo apply` beside it
    first = ours.snapshot()
    assert ours.snapshot() is first  # nothing written: the same, not parsed again
    ours.set_ports("web", [PortAllocation("web", "80/tcp", "", 8080)])
    mine = ours.snapshot()
    assert [p.host_port for p in mine.ports] == [8080]
    theirs.set_ports("api", [PortAllocation("api", "80/tcp", "", 8081)])
    assert [p.host_port for p in ours.snapshot().ports] == [8081, 8080]
    assert [p.host_port for p in ours.snapshot().ports_of("api")] == [8081]
    ours.close()
    theirs.close()


def test_probes_and_events_leave_the_snapshot_as_it_was(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.set_ports("web", [PortAllocation("web", "80/tcp", "", 8080)])
    first = ledger.snapshot()
    ledger.record_probe("web", True, "healthy", "HTTP 200", 1.0)  # a health tick's write
    ledger.event("app.ok", "fine", "web")
    assert ledger.snapshot() is first  # 500 apps' specs are not parsed again every tick
    ledger.set_ports("web", [PortAllocation("web", "80/tcp", "", 8081)])
    assert ledger.snapshot().ports_of("web")[0].host_port == 8081
    ledger.close()


def test_a_write_of_some_apps_reads_those_apps_again_and_no_other(tmp_path):
    """A heal writes four times (deployment started, finished with the applied spec, the
    kept image, the sealed env): the next snapshot reads that app's rows again, not every
    app's, and equals a whole read."""
    ledger = Ledger(tmp_path / "ledger.db")
    for app in ("api", "web", "db"):
        ledger.record_applied(app, "shop", f"h-{app}", {"image": f"{app}:1"}, None)
        ledger.set_ports(app, [PortAllocation(app, "80/tcp", "", 8000 + len(app))])
    ledger.record_build("shop-web:b1", "bh", "sha256:1")
    before = ledger.snapshot()

    dep = ledger.start_deployment("web", "shop", "h-web-2")
    ledger.keep_image(dep, "diplo-kept/web:d1")
    ledger.seal_env(dep, "web", b"sealed")
    ledger.pin("api", dep, "a rollback")
    ledger.set_route("web", "shop", {"domains": ["web.example"]})
    assert ledger.snapshot() is before  # none of these is in the snapshot

    ledger.finish_deployment(
        dep, "succeeded", applied=("web", "shop", "h-web-2", {"image": "web:2"})
    )
    ledger.set_ports("web", [PortAllocation("web", "80/tcp", "", 9000)])
    ledger.forget_app("db")
    ledger.record_applied("new", "shop", "h-new", {"image": "new:1"}, None)
    after = ledger.snapshot()
    assert after == ledger._read_snapshot()  # what a whole read gives
    assert after.apps["api"] is before.apps["api"]  # not parsed again
    assert after.apps["web"].spec == {"image": "web:2"} and "db" not in after.apps
    assert [(p.app, p.host_port) for p in after.ports] == [("api", 8003), ("web", 9000)]
    assert after.builds is before.builds
    ledger.record_build("shop-web:b2", "bh2", "sha256:2")
    assert set(ledger.snapshot().builds) == {"shop-web:b1", "shop-web:b2"}
    ledger.close()


def _whole(ledger: Ledger, where: str) -> dict[str, int]:
    """Each app's newest deployment (matching `where`) read straight from the file."""
    cond = f"WHERE {where} " if where else ""
    rows = ledger._query(f"SELECT app, MAX(id) AS id FROM deployments {cond}GROUP BY app")
    return {r["app"]: r["id"] for r in rows}


def test_newest_deployments_follow_every_write_of_this_process_or_another(tmp_path):
    """A health tick asks for every app's newest deployment (and newest good one); they
    are kept between ticks, and every write that changes them is seen: a deploy started,
    finished, its image kept or dropped, a cancel, and another process's deploy."""
    path = tmp_path / "ledger.db"
    ours, theirs = Ledger(path), Ledger(path)

    def check() -> None:
        last, good = ours.last_deployments(), ours.deployed()
        assert {a: d.id for a, d in last.items()} == _whole(ours, "")
        assert {a: d.id for a, d in good.items()} == _whole(ours, "result = 'succeeded'")
        assert last == theirs.last_deployments() and good == theirs.deployed()
        # a few apps' are read on their own, and agree
        assert ours.last_deployments({"web", "gone"}) == {
            a: d for a, d in last.items() if a == "web"
        }
        assert ours.deployed({"api"}) == {a: d for a, d in good.items() if a == "api"}

    for app in ("api", "web"):
        dep = ours.start_deployment(app, "shop", f"h-{app}")
        ours.finish_deployment(dep, "succeeded")
    check()
    first = ours.last_deployments()
    assert ours.last_deployments() == first  # kept: nothing written
    ours.record_probe("web", True, "healthy", "HTTP 200", 1.0)
    ours.event("app.ok", "fine", "web")
    check()

    dep = ours.start_deployment("web", "shop", "h-web-2")
    check()
    assert ours.last_deployments()["web"].result == "running"
    ours.request_cancel("web")
    assert ours.last_deployments()["web"].cancel_requested
    ours.finish_deployment(dep, "failed", step="health", error="unhealthy")
    check()
    assert ours.deployed()["web"].id != dep  # the good one still runs
    ours.keep_image(dep, "diplo-kept/web:d2")
    assert ours.last_deployments()["web"].kept_image == "diplo-kept/web:d2"
    ours.drop_kept_tag("web", "diplo-kept/web:d2")
    assert ours.last_deployments()["web"].kept_image is None

    other = theirs.start_deployment("api", "shop", "h-api-2")  # `diplo apply` beside serve
    theirs.finish_deployment(other, "succeeded")
    check()
    assert ours.deployed()["api"].id == other
    ours.close()
    theirs.close()
