"""The controller's work queue: dedupe, one worker per key, delayed retries."""

from __future__ import annotations

import threading

from diplo.controller.workqueue import WorkQueue

from .factories import Clock


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


def test_a_resyncs_keys_come_last_and_one_at_a_time():
    q = WorkQueue(background_limit=1)
    q.add("a", background=True)
    q.add("b", background=True)
    q.add("edit")
    assert q.get(0) == "edit"  # a change to deploy comes before a resync's looks
    assert q.get(0) == "a" and q.in_background("a")
    assert q.get(0) is None  # "b" waits for the one background slot...
    q.add("drift", urgent=True)
    assert q.get(0) == "drift"  # ...which holds up no other worker
    q.done("a")
    assert not q.in_background("a")
    assert q.get(0) == "b"


def test_a_background_key_asked_for_again_moves_to_its_lane():
    q = WorkQueue(background_limit=1)
    for key in ("a", "b", "c"):
        q.add(key, background=True)
    q.add("c")  # an edit of c while the resync's look at it waits
    q.add("b", urgent=True)  # drift of b
    q.add("a", background=True)  # a second resync: nothing changes
    assert [q.get(0), q.get(0), q.get(0)] == ["b", "c", "a"]
    assert not q.in_background("b") and not q.in_background("c") and q.in_background("a")


def test_a_retry_of_a_key_a_resync_queued_is_not_held_back():
    clock = Clock()
    q = WorkQueue(clock, background_limit=1)
    q.add("busy", background=True)
    assert q.get(0) == "busy"  # the background slot is taken
    q.add("web", background=True)
    q.add_after("web", 5.0)
    assert q.get(0) is None
    clock.now = 5.0
    assert q.get(0) == "web" and not q.in_background("web")


def test_work_a_background_key_finds_comes_back_in_the_normal_lane():
    q = WorkQueue(background_limit=1)
    q.add("a", background=True)
    q.add("b", background=True)
    assert q.get(0) == "a"
    q.add("a")  # it has work to do: again, as a normal key, when this look is done
    q.done("a")
    assert q.get(0) == "a" and not q.in_background("a")  # ahead of b, not in b's slot
    assert q.get(0) == "b"
