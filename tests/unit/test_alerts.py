"""Alerts without Docker: each rule on the inputs it reads, the alerts' states
(pending, firing, resolved), deduplication, the rate limit of a flapping alert, and what
a restarted `diplo serve` finds in a real ledger."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from diplo.alerts.rules import Evaluator
from diplo.alerts.state import AlertBook, Reading
from diplo.alertspec import AppAlerts, HostRules
from diplo.ledger import Ledger
from diplo.metrics.collector import HostSample, RequestSample

from .factories import MiB
from .factories import container_sample as sample


def host(**kw) -> HostSample:
    base = HostSample(
        at=0.0,
        cpu_percent=5.0,
        cores=2,
        memory_total_bytes=1000 * MiB,
        memory_available_bytes=500 * MiB,
        load=(0.1, 0.1, 0.1),
        docker_root="/var/lib/docker",
        disk_total_bytes=100,
        disk_free_bytes=50,
    )
    return replace(base, **kw)


def world(
    rules: dict | None = None, apps: dict[str, dict] | None = None, store=None, **book_kw
) -> tuple[AlertBook, Evaluator]:
    book = AlertBook(store, **book_kw)
    own = {a: AppAlerts.model_validate(r).model_dump_json(by_alias=True, exclude_unset=True)
           for a, r in (apps or {}).items()}  # fmt: skip
    return book, Evaluator(book, HostRules.model_validate(rules or {}), own.get)


def states(book: AlertBook, now: float = 0.0) -> list[tuple[str, str]]:
    return [(n.key, n.state) for n in book.due(now)]


# --- the state machine ---------------------------------------------------------------


def test_an_alert_fires_after_its_duration_once_then_resolves_once():
    book = AlertBook(None)
    hot = Reading("web", "95%", "90%", "hot", for_s=60)
    book.observe("cpu", "web", hot, now=0)
    assert states(book) == []  # pending
    book.observe("cpu", "web", hot, now=59)
    assert states(book) == []
    book.observe("cpu", "web", hot, now=60)
    assert states(book, 60) == [("cpu:web", "firing")]
    for t in range(61, 120):
        book.observe("cpu", "web", hot, now=t)
        assert states(book, t) == []  # deduplicated while it fires
    book.clear("cpu", "web", now=120)
    assert states(book, 120) == [("cpu:web", "resolved")]
    assert states(book, 121) == []
    firing, resolved = book.snapshot()
    assert firing == [] and resolved[0].resolved_at == 120 and resolved[0].value == "95%"


def test_a_condition_that_clears_before_its_duration_sends_nothing():
    book = AlertBook(None)
    book.observe("memory", "web", Reading("web", for_s=30), now=0)
    book.clear("memory", "web", now=10)
    assert states(book, 10) == [] and book.snapshot() == ([], [])


def test_a_flapping_alert_is_rate_limited_and_its_last_state_is_sent_later():
    book = AlertBook(None, max_per_hour=4)
    sent = []
    for i in range(20):  # fires and clears every 10 s for 200 s
        t = i * 10.0
        book.observe("down", "web", Reading("web"), now=t)
        sent += states(book, t)
        book.clear("down", "web", now=t + 5)
        sent += states(book, t + 5)
    assert sent == [("down:web", "firing"), ("down:web", "resolved")] * 2
    book.observe("down", "web", Reading("web"), now=300)  # it fires again, and stays
    assert states(book, 300) == []  # still over the limit
    assert states(book, 3601) == [("down:web", "firing")]  # the limit allows it again


def test_settle_resolves_the_subjects_that_are_no_longer_active_but_keeps_the_unknown():
    book = AlertBook(None)
    book.settle("cpu", {"a": Reading("a"), "b": Reading("b"), "c": Reading("c")}, now=0)
    assert len(states(book)) == 3
    book.settle("cpu", {"a": Reading("a")}, now=1, keep={"c"})
    assert states(book, 1) == [("cpu:b", "resolved")]


def test_a_restarted_serve_sends_nothing_twice(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    book = AlertBook(ledger)
    book.observe("memory", "web", Reading("web", "95%", "90%", "web: memory 95%"), now=0)
    assert states(book) == [("memory:web", "firing")]
    book.delivered(book.firing()[0].id or 0, "hook", {"state": "firing", "status": "sent"})

    again = AlertBook(Ledger(tmp_path / "ledger.db"))  # what the next serve reads
    (alert,) = again.firing()
    assert alert.key == "memory:web" and alert.deliveries["hook"]["status"] == "sent"
    again.observe("memory", "web", Reading("web", "96%", "90%"), now=100)
    assert states(again, 100) == []  # firing and told already
    again.clear("memory", "web", now=200)
    assert states(again, 200) == [("memory:web", "resolved")]
    assert ledger.alerts()[0]["state"] == "resolved"


def test_the_history_of_resolved_alerts_is_bounded(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    book = AlertBook(ledger, keep_resolved=10)
    for i in range(30):
        book.observe("down", f"app{i}", Reading(), now=i)
        book.clear("down", f"app{i}", now=i + 0.5)
    assert len(ledger.alerts(resolved=1000)) == 10
    assert len(book.snapshot(resolved=1000)[1]) == 10


# --- the rules -------------------------------------------------------------------------


def test_memory_above_its_share_of_the_limit_for_its_duration():
    book, rules = world({"memory": {"above": "50%", "for": "10s"}})
    rules.samples([sample(memory_bytes=60 * MiB)], host(), now=0)
    rules.samples([sample(memory_bytes=60 * MiB)], host(), now=10)
    (note,) = book.due(10)
    assert note.key == "memory:web" and note.payload["value"] == "60.0%"
    assert note.payload["threshold"] == "50%" and "of its limit" in note.payload["message"]
    rules.samples([sample(memory_bytes=10 * MiB)], host(), now=20)
    assert states(book, 20) == [("memory:web", "resolved")]


def test_memory_without_a_limit_is_a_share_of_the_hosts_and_an_app_may_use_a_size():
    book, rules = world(
        {"memory": {"above": "50%", "for": 0}}, apps={"db": {"memory": {"above": "200m"}}}
    )
    rules.samples(
        [
            sample(memory_bytes=600 * MiB, memory_limit_bytes=None),  # 60% of 1000 MiB
            sample("db", memory_bytes=300 * MiB, memory_limit_bytes=None),
        ],
        host(),
        now=0,
    )
    assert sorted(states(book)) == [("memory:db", "firing"), ("memory:web", "firing")]


def test_cpu_of_the_limit_or_of_one_core_and_the_worst_replica_counts():
    book, rules = world({"cpu": {"above": "80%", "for": 0}})
    rules.samples(
        [
            sample("limited", cpus=0.5, cpu_percent=45.0),  # 90% of its half core
            sample("free", cpu_percent=70.0),
            sample("free", 2, cpu_percent=85.0),
            sample("new", cpu_percent=None),  # a first sample: no rate yet
        ],
        host(),
        now=0,
    )
    assert sorted(states(book)) == [("cpu:free", "firing"), ("cpu:limited", "firing")]


def test_an_app_can_turn_a_rule_off():
    book, rules = world({"cpu": {"above": "10%", "for": 0}}, apps={"web": {"cpu": False}})
    rules.samples([sample(cpu_percent=99.0)], host(), now=0)
    assert states(book) == []


def test_error_rate_and_p99_from_the_proxys_figures_and_nothing_without_them():
    book, rules = world(
        {"error_rate": {"above": "5%", "for": 0}, "latency": {"above": "500ms", "for": 0}}
    )
    bad = RequestSample(10.0, 20.0, 300.0, 800.0, 0.2, requests=100)
    rules.samples([sample(requests=bad), sample("plain")], host(), now=0)
    found = {n.key: n.payload for n in book.due(0)}
    assert set(found) == {"error_rate:web", "latency:web"}
    assert found["error_rate:web"]["value"] == "20.0%" and found["latency:web"]["value"] == "800ms"
    idle = RequestSample(0.0, 0.0, 0.0, 0.0, 0.0, requests=0)  # an interval without requests
    rules.samples([sample(requests=idle)], host(), now=1)
    assert states(book, 1) == []  # nothing resolved
    assert {k: a.state for k, a in book.current.items()} == {
        "error_rate:web": "firing",
        "latency:web": "firing",
    }
    good = RequestSample(10.0, 20.0, 30.0, 80.0, 0.0, requests=100)
    rules.samples([sample(requests=good)], host(), now=2)
    assert sorted(states(book, 2)) == [("error_rate:web", "resolved"), ("latency:web", "resolved")]


def test_dockers_disk_filling():
    book, rules = world({"disk": {"above": "90%", "for": 0}})
    rules.samples([], host(disk_free_bytes=5), now=0)
    (note,) = book.due(0)
    assert note.key == "disk:/var/lib/docker" and note.payload["value"] == "95.0%"
    rules.samples([], host(disk_free_bytes=50), now=1)
    assert states(book, 1) == [("disk:/var/lib/docker", "resolved")]


def test_an_app_down_for_its_duration_and_starting_does_not_resolve_it():
    book, rules = world({"down": {"for": "20s"}})
    rules.health({"web": ("crashed", 0), "ok": ("healthy", 0)}, now=0)
    rules.health({"web": ("starting", 0), "ok": ("healthy", 0)}, now=10)
    rules.health({"web": ("missing", 0), "ok": ("healthy", 0)}, now=20)
    assert states(book, 20) == [("down:web", "firing")]
    rules.health({"web": ("starting", 0)}, now=30)
    assert states(book, 30) == []
    rules.health({"web": ("healthy", 0)}, now=40)
    assert states(book, 40) == [("down:web", "resolved")]


def test_a_crash_loop_counts_restarts_within_its_window_across_new_containers():
    book, rules = world({"crashloop": {"restarts": 3, "within": "60s"}})
    rules.health({"web": ("healthy", 5)}, now=0)  # restarts from before: not a loop
    rules.health({"web": ("healthy", 6)}, now=10)
    rules.health({"web": ("healthy", 0)}, now=20)  # a new container
    rules.event("app.restarted", "web", {}, now=25)  # a heal by Diplo counts too
    assert states(book, 25) == []
    rules.health({"web": ("healthy", 1)}, now=30)
    (note,) = book.due(30)
    assert note.key == "crashloop:web" and note.payload["value"] == "3"
    rules.health({"web": ("healthy", 1)}, now=100)  # quiet for longer than the window
    assert states(book, 100) == [("crashloop:web", "resolved")]


def test_a_failed_deploy_fires_until_a_deploy_succeeds():
    book, rules = world()
    rules.event("deploy.failed", "web", {"message": "health gate: timed out"}, now=0)
    (note,) = book.due(0)
    assert note.key == "deploy:web" and "health gate: timed out" in note.payload["message"]
    rules.event("app.error", "web", {"error": "health gate: timed out"}, now=1)
    assert states(book, 1) == []
    rules.event("deploy.succeeded", "web", {"message": "ok"}, now=2)
    assert states(book, 2) == [("deploy:web", "resolved")]
    rules.event("rollback.failed", "api", {"error": "no image"}, now=3)
    assert states(book, 3) == [("deploy:api", "firing")]
    rules.health({"api": ("absent", 0)}, now=4)  # desired, never deployed: it stays
    assert states(book, 4) == []
    rules.health({}, now=5)  # the app left the manifests
    assert states(book, 5) == [("deploy:api", "resolved")]


def test_port_and_domain_conflicts():
    book, rules = world()
    error = "cannot start: Bind for 0.0.0.0:8080 failed: port is already allocated"
    rules.event("app.error", "web", {"error": error}, now=0)
    clash = "api: host port 8080/tcp is also claimed by app 'web'; give one of them another port"
    rules.event("app.error", "api", {"error": clash}, now=0)
    rules.event("app.error", "db", {"error": "image not found"}, now=0)
    issue = {
        "file": "/m/diplo.yaml",
        "line": 7,
        "message": "domain 'shop.example.com' is also claimed by app 'api' (/m/diplo.yaml:3)",
    }
    rules.event("manifest.invalid", None, {"error": "x", "issues": [issue]}, now=0)
    found = {n.key: n.payload["message"] for n in book.due(0)}
    assert set(found) == {"conflict:web", "conflict:api", "conflict:shop.example.com"}
    assert found["conflict:shop.example.com"].startswith("/m/diplo.yaml:7: domain")
    rules.event("manifest.valid", None, {}, now=1)
    rules.event("app.ok", "web", {}, now=1)
    rules.event("app.create", "api", {}, now=1)
    assert sorted(states(book, 1)) == [
        ("conflict:api", "resolved"),
        ("conflict:shop.example.com", "resolved"),
        ("conflict:web", "resolved"),
    ]


def git_source(**kw) -> dict:
    return {"kind": "git", "url": "https://git.example.com/r.git", "refused": None,
            "last_poll": 0.0, "last_poll_ok": 0.0, "poll_error": None, **kw}  # fmt: skip


def test_a_refused_commit_fires_until_the_source_moves_on():
    book, rules = world()
    refused = {"sha": "0123456789abcdef", "error": "commit 0123456789 (x) refused: bad"}
    rules.sources([git_source(refused=refused)], poll_every=60, now=1)
    (note,) = book.due(1)
    assert note.key == "refused_commit:https://git.example.com/r.git"
    assert note.payload["value"] == "0123456789" and "refused: bad" in note.payload["message"]
    rules.sources([git_source(last_poll_ok=2.0)], poll_every=60, now=2)
    assert states(book, 2) == [("refused_commit:https://git.example.com/r.git", "resolved")]


def test_a_source_that_has_not_polled_for_n_intervals_and_a_folder_is_never_stale():
    book, rules = world({"source_stale": {"intervals": 3}})
    folder = {"kind": "folder", "path": "/m"}
    rules.sources([git_source(last_poll_ok=None), folder], poll_every=60, now=1000)
    rules.sources([git_source(last_poll_ok=None, poll_error="unreachable"), folder], 60, 1180)
    assert states(book, 1180) == []  # 180 s: not more than 3 intervals
    rules.sources([git_source(last_poll_ok=None, poll_error="unreachable"), folder], 60, 1181)
    (note,) = book.due(1181)
    assert note.key.startswith("source_stale:") and "unreachable" in note.payload["message"]
    rules.sources([git_source(last_poll_ok=1190.0)], 60, 1200)
    assert states(book, 1200)[0][1] == "resolved"


def test_a_certificate_expiring_within_n_days():
    book, rules = world({"certificate": {"within": "10d"}})
    rows = [
        {"domain": "a.example.com", "app": "web", "expires": "2030-01-05T00:00:00+00:00"},
        {"domain": "b.example.com", "app": "web", "expires": "2030-03-01T00:00:00+00:00"},
        {"domain": "c.example.com", "app": "web", "tls": "off"},
    ]
    now = 1893456000.0  # 2030-01-01
    rules.certificates(rows, now)
    (note,) = book.due(now)
    assert note.key == "certificate:a.example.com" and note.payload["value"] == "4.0 days"


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        ({"memory": {"above": "much"}}, "is not a percentage like 80% or a size"),
        ({"cpu": {"for": "-1m"}}, "duration"),
        ({"crashloop": {"restarts": 0}}, "greater than or equal to 1"),
        ({"nonsense": {}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_host_rules_are_refused(rules, says):
    with pytest.raises(ValueError, match=says):
        HostRules.model_validate(rules)
