"""What makes the controller look again: a save in the manifest folder (debounced), a
poll of the repository, the periodic resync, and the engine's events. A trigger only
puts a key in the work queue; the reconcile re-reads everything (level-based)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from diplo.controller.bus import Bus
from diplo.controller.view import View
from diplo.controller.workqueue import ALL, RELOAD, WorkQueue
from diplo.errors import DiploError
from diplo.ops.context import Context

log = structlog.get_logger("diplo.controller")

DEBOUNCE = 0.1  # an editor's save or a checkout arrives within this


class Triggers:
    def __init__(
        self,
        ctx: Context,
        queue: WorkQueue,
        bus: Bus,
        view: View,
        stop: threading.Event,
        *,
        resync: float,
        poll_every: float,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] = lambda app: None,
    ) -> None:
        self.on_event = on_event  # an engine event: what was listed before is out of date
        self.ctx, self.queue, self.bus, self.view, self._stop = ctx, queue, bus, view, stop
        self.resync, self.poll_every = resync, poll_every
        self._clock = clock
        self._reload_at: float | None = None
        self._due = threading.Condition()
        self._observer: Any = None

    # --- the manifest folder --------------------------------------------------------------

    def watch_folder(self, folder: Path) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        triggers = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                triggers.file_changed()

        folder.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(Handler(), str(folder), recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def file_changed(self) -> None:
        """Debounced: an editor's atomic save or a checkout of many files is one reload."""
        with self._due:
            self._reload_at = self._clock() + DEBOUNCE
            self._due.notify()

    def debounce_loop(self) -> None:
        while not self._stop.is_set():
            with self._due:
                if self._reload_at is None:
                    self._due.wait(0.5)  # woken by file_changed; the timeout sees a stop
                    continue
                wait = self._reload_at - self._clock()
                if wait > 0:
                    self._due.wait(wait)  # a later save pushes the deadline back
                    continue
                self._reload_at = None
            self.queue.add(RELOAD)

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()

    # --- timers ---------------------------------------------------------------------------

    def poll_loop(self) -> None:
        """Polling keeps working where webhooks cannot reach the host."""
        while not self._stop.wait(self.poll_every):
            self.queue.add(RELOAD)

    def resync_loop(self) -> None:
        while not self._stop.wait(self.resync):
            self.queue.add(ALL)

    # --- the engine -----------------------------------------------------------------------

    def engine_loop(self) -> None:
        """Each event of a container Diplo owns queues its app; a lost engine is retried
        with backoff, and a resync follows its return (it may have changed meanwhile)."""
        delay = 1.0
        view = self.view
        while not self._stop.is_set():
            try:
                view.engine_version = self.ctx.runtime.version()
                if not view.engine_ok:
                    view.engine_ok = True  # before the event: its readers see it so
                    log.info("engine.reconnected")
                    self.bus.publish("engine.reconnected")
                    self.queue.add(ALL)
                view.engine_ok, delay = True, 1.0
                for app, action in self.ctx.runtime.events(self._stop.is_set):
                    if action.startswith(("exec_", "health_status")):
                        if action != "health_status: unhealthy":
                            continue  # a probe's exec: nothing listed changed
                    else:
                        self.on_event(app)  # a container came, went or changed state
                    self.queue.add(app, urgent=True)  # drift: ahead of any resync batch
            except Exception as exc:  # a bug must not end the watch either: retried too
                if self._stop.is_set():
                    return
                message = exc.message if isinstance(exc, DiploError) else repr(exc)
                if not isinstance(exc, DiploError):
                    log.exception("engine.watch_crashed", error=message)
                if view.engine_ok:
                    view.engine_ok = False
                    log.warning("engine.unavailable", error=message)
                    self.bus.publish("engine.unavailable", error=message)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
