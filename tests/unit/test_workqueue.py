"""The controller's work queue: dedupe, one worker per key, delayed retries."""

from __future__ import annotations

import threading

from diplo.controller.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_queued_many_times_is_handed_out_once():
    q = WorkQueue()
    for _ in range(5):
        q.add("web")
    q.add("db")
    assert [q.get(0), q.get(0), q.get(0)] == ["web", "db", None]


def test_a_key_in_progress_is_not_handed_to_a_second_worker_but_comes_back_after():
    q = WorkQueue()
    q.add("web")
    assert q.get(0) == "web"
    q.add("web")  # an event while the worker is busy
    assert q.get(0) is None  # not to a second worker
    q.done("web")
    assert q.get(0) == "web"  # once more, after the first is done
    q.done("web")
    assert q.get(0) is None


def test_delayed_add_waits_for_its_time():
    clock = Clock()
    q = WorkQueue(clock)
    q.add_after("web", 5)
    assert q.get(0) is None
    clock.now = 5.0
    assert q.get(0) == "web"


def test_shutdown_wakes_waiting_workers():
    q = WorkQueue()
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    q.shutdown()
    t.join(2)
    assert not t.is_alive() and got == [None]
    q.add("late")
    assert q.get(0) is None


def test_an_urgent_key_jumps_ahead_of_a_resync_batch():
    q = WorkQueue()
    for i in range(100):  # a resync queued every app
        q.add(f"app{i}")
    q.add("app99", urgent=True)  # its container was removed: already queued, moved ahead
    q.add("new", urgent=True)
    assert [q.get(0), q.get(0), q.get(0)] == ["app99", "new", "app0"]
    assert len(q) == 98


def test_an_urgent_key_in_progress_comes_back_first_once_done():
    q = WorkQueue()
    q.add("web")
    assert q.get(0) == "web"
    q.add("a")
    q.add("web", urgent=True)  # drift while its reconcile runs
    q.done("web")
    assert [q.get(0), q.get(0)] == ["web", "a"]


def test_a_delayed_retry_stays_in_the_normal_lane_and_urgency_is_not_sticky():
    clock = Clock()
    q = WorkQueue(clock)
    q.add("web", urgent=True)
    assert q.get(0) == "web"
    q.done("web")
    q.add_after("web", 1)
    q.add("a")
    clock.now = 1.0
    assert [q.get(0), q.get(0)] == ["a", "web"]
