"""The alerts of a serve as a whole: the tick over health, sources and certificates, the
controller's events read off a queue by the service's own thread, and a channel that
hangs never holding up the rules."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from diplo.alerts.service import AlertService
from diplo.alerts.state import Notification
from diplo.controller.bus import Bus
from diplo.hostconfig import AlertsConfig


class Inputs:
    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, int]] | None = None
        self.certs_asked = 0

    def health(self) -> dict[str, tuple[str, int]] | None:
        return self.rows

    def app_rules(self, app: str) -> str | None:
        return '{"down": {"for": 0}}' if app == "web" else None

    def sources(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"kind": "git", "url": "https://g/r.git", "last_poll": now, "last_poll_ok": now,
                 "refused": {"sha": "abcdef0123456789", "error": "refused: bad"}}]  # fmt: skip

    def certificates(self) -> list[dict[str, Any]]:
        self.certs_asked += 1
        return [{"domain": "a.example.com", "app": "web", "expires": "2000-01-01T00:00:00+00:00"}]


class Hanging:
    """A channel that never answers until released."""

    name, kind, target = "slow", "webhook", "http://slow/***"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.got: list[dict[str, Any]] = []

    def send(self, payload: dict[str, Any]) -> None:
        self.release.wait(10)
        self.got.append(payload)


def test_the_tick_reads_health_only_once_the_view_has_looked():
    inputs = Inputs()
    bus = Bus()
    service = AlertService(AlertsConfig(), None, [], inputs, publish=bus.publish)
    service.tick()
    keys = {a.key for a in service.book.firing()}
    assert keys == {"refused_commit:https://g/r.git", "certificate:a.example.com"}
    inputs.rows = {"web": ("crashed", 0), "api": ("crashed", 0)}
    service.tick()
    keys = {a.key for a in service.book.firing()}
    assert "down:web" in keys and "down:api" not in keys  # api: 30 s by default
    assert inputs.certs_asked == 1  # once an hour
    assert [e.kind for e in bus.recent].count("alert.firing") == 3


def test_events_come_off_the_queue_and_a_hanging_channel_blocks_nothing():
    slow = Hanging()
    events: queue.Queue[Any] = queue.Queue()
    bus = Bus()
    service = AlertService(AlertsConfig(evaluate_every=0.5), None, [slow], Inputs())
    service.start(events)
    try:
        events.put(bus.publish("deploy.failed", "web", message="gate"))
        deadline = time.monotonic() + 5
        while not service.book.firing("deploy") and time.monotonic() < deadline:
            time.sleep(0.02)
        # the channel hangs on the first notification; the rules go on
        began = time.monotonic()
        events.put(bus.publish("deploy.succeeded", "web", message="ok"))
        while service.book.firing("deploy") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not service.book.firing("deploy") and time.monotonic() - began < 2
        slow.release.set()
        while len(slow.got) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        service.stop()
    states = [(p["alert"], p["state"]) for p in slow.got]
    assert ("deploy:web", "firing") in states and ("deploy:web", "resolved") in states
    assert states.index(("deploy:web", "firing")) < states.index(("deploy:web", "resolved"))


def test_a_notification_payload_says_what_and_where():
    service = AlertService(AlertsConfig(), None, [], Inputs())
    service.on_event("deploy.failed", "web", {"message": "gate"})
    (alert,) = service.book.firing()
    assert alert.notified == "firing"
    snap = service.snapshot()
    assert snap["firing"][0]["message"] == "web: deploy failed: gate"
    assert isinstance(Notification, type)


def test_deliveries_a_stop_cut_short_are_sent_by_the_next_serve(tmp_path):
    from diplo.ledger import Ledger

    first = Hanging()
    service = AlertService(AlertsConfig(), Ledger(tmp_path / "l.db"), [first], Inputs())
    service.on_event("deploy.failed", "web", {"message": "gate"})  # queued, never started
    assert service.book.firing()[0].deliveries["slow"]["status"] == "queued"

    second = Hanging()
    second.release.set()
    again = AlertService(AlertsConfig(), Ledger(tmp_path / "l.db"), [second], Inputs())
    again.start()
    try:
        deadline = time.monotonic() + 5
        while len(second.got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        again.stop()
    sent = [(p["alert"], p["state"]) for p in second.got]
    assert sent.count(("deploy:web", "firing")) == 1  # (beside what the tick found)
    assert again.book.firing()[0].deliveries["slow"]["status"] == "sent"
