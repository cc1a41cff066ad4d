"""The alerts of one `diplo serve`: the rules fed by the collector (its listener), by the
controller's events (a queue the bus fills) and by a tick of their own (health, sources,
certificates), the alerts' book, and the dispatcher that notifies the channels. Nothing
here runs on a reconcile's thread, and nothing here waits for a channel."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from diplo.alerts.channels import Sender
from diplo.alerts.delivery import Dispatcher
from diplo.alerts.rules import Evaluator
from diplo.alerts.state import AlertBook, AlertStore
from diplo.hostconfig import AlertsConfig
from diplo.metrics.collector import ContainerSample, HostSample

log = structlog.get_logger("diplo.alerts")

CERTIFICATES_EVERY = 3600.0  # s: a TLS handshake per domain


class BusEventLike(Protocol):
    kind: str
    app: str | None
    data: dict[str, Any]


class Inputs(Protocol):
    """What the controller shows the rules (wired by diplo/serve.py)."""

    def health(self) -> Mapping[str, tuple[str, int]] | None:
        """Each app's health label and restart count; None before the first look."""
        ...

    def app_rules(self, app: str) -> str | None:
        """The app's own `alerts:` (JSON), if any."""
        ...

    def sources(self) -> Sequence[Mapping[str, Any]]: ...

    def certificates(self) -> Sequence[Mapping[str, Any]]: ...


class AlertService:
    def __init__(
        self,
        config: AlertsConfig,
        store: AlertStore | None,
        senders: list[Sender],
        inputs: Inputs,
        *,
        poll_every: float = 60.0,
        publish: Callable[..., Any] = lambda *a, **k: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.inputs, self.poll_every = config, inputs, poll_every
        self.publish, self.clock = publish, clock
        self.host = socket.gethostname()
        self.book = AlertBook(store, max_per_hour=config.max_per_hour, keep_resolved=config.history)
        self.rules = Evaluator(self.book, config.rules, inputs.app_rules)
        self.dispatcher = Dispatcher(
            senders, self.book.delivered, self._failed, retries=config.retries
        )
        self.events: queue.Queue[BusEventLike] | None = None
        self._lock = threading.Lock()  # one evaluation at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._certs_at = 0.0

    # --- inputs --------------------------------------------------------------------------

    def on_samples(self, samples: list[ContainerSample], host: HostSample | None) -> None:
        """The collector's listener: called on its thread after each cycle."""
        with self._lock:
            self.rules.samples(samples, host, self.clock())
        self.flush()

    def on_event(self, kind: str, app: str | None, data: Mapping[str, Any]) -> None:
        with self._lock:
            self.rules.event(kind, app, data, self.clock())
        self.flush()

    def tick(self) -> None:
        """The rules over the controller's view and sources (and hourly, certificates)."""
        now = self.clock()
        health = self.inputs.health()
        sources = self.inputs.sources()
        certs = None
        if now - self._certs_at >= CERTIFICATES_EVERY and self.config.rules.certificate.enabled:
            self._certs_at = now
            certs = self.inputs.certificates()
        with self._lock:
            if health is not None:
                self.rules.health(health, now)
            self.rules.sources(sources, self.poll_every, now)
            if certs is not None:
                self.rules.certificates(certs, now)
        self.flush()

    def flush(self) -> None:
        """Hand every change of state due now to the channels (never waits for them)."""
        for note in self.book.due(self.clock(), self.host):
            log.info("alerts." + note.state, alert=note.key, message=note.payload["message"])
            self.publish(f"alert.{note.state}", note.payload.get("app"), **_public(note.payload))
            self.dispatcher.send(note)

    def _failed(self, channel: str, error: str) -> None:
        self.publish("alert.delivery_failed", None, channel=channel, error=error)

    # --- the thread ----------------------------------------------------------------------

    def start(self, events: queue.Queue[Any] | None = None) -> None:
        self.events = events
        for channel, note in self.book.unfinished(self.host):  # a stop cut them short
            self.dispatcher.send(note, only=channel)
        self.dispatcher.start()
        self._thread = threading.Thread(target=self._loop, name="diplo-alerts", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Tell every thread to stop, without waiting (`stop` waits)."""
        self._stop.set()
        self.dispatcher.halt()

    def stop(self, timeout: float = 3.0) -> None:
        self.halt()
        if self._thread is not None:
            self._thread.join(timeout)
        self.dispatcher.stop(timeout)

    def _loop(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.config.evaluate_every
                    self.tick()
                self._drain(max(0.0, min(1.0, next_tick - time.monotonic())))
            except Exception as exc:  # a bug must not end the alerts for good
                log.exception("alerts.loop_crashed", error=str(exc))
                self._stop.wait(1.0)

    def _drain(self, wait: float) -> None:
        if self.events is None:
            self._stop.wait(wait)
            return
        try:
            event = self.events.get(timeout=wait)
        except queue.Empty:
            return
        if not event.kind.startswith("alert."):  # our own, published back on the bus
            self.on_event(event.kind, event.app, event.data)

    # --- what GET /alerts shows ----------------------------------------------------------

    def snapshot(self, resolved: int = 50) -> dict[str, Any]:
        firing, done = self.book.snapshot(resolved)
        return {
            "firing": [a.public() for a in firing],
            "resolved": [a.public() for a in done],
            "channels": self.dispatcher.status(),
        }


def _public(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in ("app", "text")}
