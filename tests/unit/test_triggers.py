"""What makes the controller look again: debounced file changes, the git poll, the
resync, and the engine's events and outages. Real threads with tiny periods, a real
file watcher on tmp_path, and an in-memory engine; every thread is stopped and joined."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from diplo.controller.bus import Bus, BusEvent
from diplo.controller.state import DesiredStore
from diplo.controller.triggers import DEBOUNCE, Triggers
from diplo.controller.view import View
from diplo.controller.workqueue import ALL, RELOAD, WorkQueue
from diplo.errors import EngineUnavailable
from diplo.ledger import Ledger
from diplo.ops.context import Context
from diplo.runtime.base import StopCheck
from diplo.runtime.memory import MemoryRuntime

from .factories import Clock


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """Log events are captured, not printed: these tests log from threads, and must not
    depend on the stream an earlier test left structlog writing to."""
    with structlog.testing.capture_logs() as entries:
        yield entries


class RecordingQueue(WorkQueue):
    """A work queue that also remembers every key added, in order (the queue itself
    coalesces a key added twice, which would hide a second add)."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[str] = []
        self.urgent: list[str] = []
        self._added = threading.Condition()

    def add(self, key: str, *, urgent: bool = False) -> None:
        with self._added:
            self.added.append(key)
            if urgent:
                self.urgent.append(key)
            self._added.notify_all()
        super().add(key, urgent=urgent)

    def wait_for(self, key: str, timeout: float = 3.0) -> bool:
        with self._added:
            return self._added.wait_for(lambda: key in self.added, timeout)


class EventfulEngine(MemoryRuntime):
    """The in-memory engine with an event stream (scripted), and an outage switch."""

    def __init__(self, script: list[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.script = list(script or [])
        self.down = False
        self.break_on_stop = False

    def version(self) -> str:
        if self.down:
            raise EngineUnavailable("connection refused")
        return "memory 1.0"

    def events(self, stop: StopCheck) -> Iterator[tuple[str, str]]:
        script, self.script = self.script, []
        yield from script
        while not stop():
            time.sleep(0.01)
        if self.break_on_stop:  # the stream closed under the watcher
            raise EngineUnavailable("the event stream broke")


class Rig:
    def __init__(self, tmp_path: Path, engine: MemoryRuntime, clock: Callable[[], float]) -> None:
        self.ledger = Ledger(tmp_path / "home" / "ledger.db")
        self.ctx = Context(_runtime=engine, _ledger=self.ledger)
        self.queue = RecordingQueue()
        self.bus = Bus()
        self.events: queue.Queue[BusEvent] = self.bus.subscribe()
        store = DesiredStore([], self.ctx, self.bus, lambda apps: None)
        self.view = View(self.ctx, self.bus, store, [])
        self.stop = threading.Event()
        self.triggers = Triggers(
            self.ctx,
            self.queue,
            self.bus,
            self.view,
            self.stop,
            resync=0.02,
            poll_every=0.02,
            clock=clock,
        )
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def run(self, target: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # the test reads it
                self.errors.append(exc)

        t = threading.Thread(target=guarded, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def next_event(self, timeout: float = 3.0) -> BusEvent:
        return self.events.get(timeout=timeout)

    def shutdown(self) -> None:
        self.stop.set()
        # Wakes the debounce loop, which would otherwise see the stop within 0.5 s.
        self.triggers.file_changed()
        self.triggers.close()
        for t in self.threads:
            t.join(3)
        assert not [t for t in self.threads if t.is_alive()], "a trigger loop did not stop"
        self.ledger.close()


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"threads left running: {left}"


@pytest.fixture
def make_rig(tmp_path: Path, no_leaked_threads: None) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(
        engine: MemoryRuntime | None = None, clock: Callable[[], float] = time.monotonic
    ) -> Rig:
        rig = Rig(tmp_path, engine or EventfulEngine(), clock)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.shutdown()


# --- debounce ------------------------------------------------------------------------


def test_a_burst_of_file_changes_is_one_reload(make_rig: Callable[..., Rig]):
    clock = Clock(100.0)
    rig = make_rig(clock=clock)
    rig.run(rig.triggers.debounce_loop)
    for _ in range(5):  # an editor's atomic save, a checkout: within the window
        rig.triggers.file_changed()
        clock.now += DEBOUNCE / 5
    clock.now += DEBOUNCE
    assert rig.queue.wait_for(RELOAD)
    time.sleep(0.2)  # nothing else comes of that burst
    assert rig.queue.added == [RELOAD]
    rig.triggers.file_changed()  # a later save is another reload
    clock.now += DEBOUNCE * 2
    assert eventually(lambda: len(rig.queue.added) == 2)
    time.sleep(0.1)
    assert rig.queue.added == [RELOAD, RELOAD]


def test_a_later_save_pushes_the_reload_back(make_rig: Callable[..., Rig]):
    clock = Clock(100.0)
    rig = make_rig(clock=clock)
    rig.run(rig.triggers.debounce_loop)
    rig.triggers.file_changed()  # due at 100.1
    clock.now += DEBOUNCE / 2
    rig.triggers.file_changed()  # due at 100.15
    clock.now += DEBOUNCE * 0.7  # past the first deadline, before the second
    time.sleep(0.3)  # the loop looks at the clock several times meanwhile
    assert rig.queue.added == []
    clock.now += DEBOUNCE
    assert rig.queue.wait_for(RELOAD)
    assert rig.queue.added == [RELOAD]


def test_the_debounce_loop_stops_when_asked(make_rig: Callable[..., Rig]):
    rig = make_rig()
    t = rig.run(rig.triggers.debounce_loop)
    rig.stop.set()
    t.join(2)
    assert not t.is_alive() and rig.queue.added == []


# --- timers --------------------------------------------------------------------------


def test_the_poll_queues_reloads_until_stopped(make_rig: Callable[..., Rig]):
    rig = make_rig()
    t = rig.run(rig.triggers.poll_loop)
    assert eventually(lambda: len(rig.queue.added) >= 2)
    assert set(rig.queue.added) == {RELOAD} and len(rig.queue.added) >= 2
    rig.stop.set()
    t.join(2)
    assert not t.is_alive()
    count = len(rig.queue.added)
    time.sleep(0.1)
    assert len(rig.queue.added) == count


def test_the_resync_queues_everything_until_stopped(make_rig: Callable[..., Rig]):
    rig = make_rig()
    t = rig.run(rig.triggers.resync_loop)
    assert rig.queue.wait_for(ALL)
    assert set(rig.queue.added) == {ALL}
    rig.stop.set()
    t.join(2)
    assert not t.is_alive()


# --- the engine ----------------------------------------------------------------------


def test_engine_events_queue_their_apps(make_rig: Callable[..., Rig]):
    engine = EventfulEngine(
        [
            ("web", "start"),
            ("web", "exec_start: sh -c pg_isready"),  # a probe: not a change
            ("api", "health_status: healthy"),
            ("db", "health_status: unhealthy"),
            ("worker", "die"),
        ]
    )
    rig = make_rig(engine)
    rig.run(rig.triggers.engine_loop)
    assert rig.queue.wait_for("worker")
    time.sleep(0.05)
    assert rig.queue.added == ["web", "db", "worker"]
    assert rig.queue.urgent == ["web", "db", "worker"]  # drift jumps the resync's batch
    assert rig.view.engine_ok and rig.view.engine_version == "memory 1.0"
    assert rig.errors == []


def test_engine_outage_and_return(make_rig: Callable[..., Rig], logs: list[dict[str, Any]]):
    engine = EventfulEngine()
    engine.down = True
    rig = make_rig(engine)
    rig.run(rig.triggers.engine_loop)
    event = rig.next_event()
    assert event.kind == "engine.unavailable"
    assert "connection refused" in event.data["error"]
    assert eventually(lambda: rig.view.engine_ok is False)
    assert rig.queue.added == []
    engine.down = False  # retried after a 1 s backoff
    event = rig.next_event()
    assert event.kind == "engine.reconnected"
    assert rig.queue.wait_for(ALL)
    assert eventually(lambda: rig.view.engine_ok is True)
    assert rig.view.engine_version == "memory 1.0"
    assert rig.errors == []
    warned = [e for e in logs if e["event"] == "engine.unavailable"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"


def test_a_stream_closed_by_a_stop_is_no_outage(make_rig: Callable[..., Rig]):
    engine = EventfulEngine()
    engine.break_on_stop = True
    rig = make_rig(engine)
    t = rig.run(rig.triggers.engine_loop)
    time.sleep(0.05)
    rig.stop.set()
    t.join(2)
    assert not t.is_alive() and rig.errors == []
    assert rig.view.engine_ok
    assert [e.kind for e in rig.bus.recent] == []


def test_engine_loop_over_the_plain_memory_engine_runs_until_stopped(
    make_rig: Callable[..., Rig],
):
    rig = make_rig(MemoryRuntime())
    t = rig.run(rig.triggers.engine_loop)
    time.sleep(0.2)
    assert t.is_alive(), rig.errors
    rig.stop.set()
    t.join(2)
    assert rig.errors == []


# --- the manifest folder -------------------------------------------------------------


def test_a_file_saved_in_the_watched_folder_queues_a_reload(
    make_rig: Callable[..., Rig], tmp_path: Path
):
    rig = make_rig()
    folder = tmp_path / "manifests"  # created by the watcher
    rig.triggers.watch_folder(folder)
    assert folder.is_dir()
    rig.run(rig.triggers.debounce_loop)
    (folder / "app").mkdir()
    (folder / "app" / "diplo.yaml").write_text("project: shop\napps: {}\n")
    assert rig.queue.wait_for(RELOAD, timeout=3)


def test_reading_a_file_in_the_watched_folder_is_no_change(
    make_rig: Callable[..., Rig], tmp_path: Path
):
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "diplo.yaml").write_text("project: shop\napps: {}\n")
    rig = make_rig()
    rig.triggers.watch_folder(folder)
    rig.run(rig.triggers.debounce_loop)
    time.sleep(0.1)  # the watcher is up
    assert (folder / "diplo.yaml").read_text()
    time.sleep(0.3)
    assert rig.queue.added == []
