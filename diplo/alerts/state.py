"""Each alert's state: a rule on a subject (`memory:web`) is pending while its condition
has held for less than the rule's `for`, then firing, then resolved when the condition
clears. One notification per change of state (deduplicated while it fires), at most
`max_per_hour` per alert key (a flapping alert sends no more; a change held back is sent
when the limit allows, unless it was undone meanwhile). Firing alerts and the last
notifications are kept in the ledger, so a restarted `diplo serve` sends nothing twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

State = Literal["pending", "firing", "resolved"]
HOUR = 3600.0


class AlertStore(Protocol):
    """The ledger's side (diplo/ledger.py)."""

    def save_alert(self, row: dict[str, Any], keep_resolved: int = 500) -> int: ...

    def alerts(self, resolved: int = 50) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Reading:
    """A condition that holds now: what was measured, against what."""

    app: str | None = None
    value: str | None = None
    threshold: str | None = None
    message: str = ""
    for_s: float = 0.0


@dataclass
class Alert:
    key: str  # rule:subject
    rule: str
    subject: str
    app: str | None
    state: State
    since: float  # when the condition began
    message: str = ""
    value: str | None = None
    threshold: str | None = None
    resolved_at: float | None = None
    notified: str = ""  # the last state a notification was sent for
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)  # channel -> status
    id: int | None = None

    def public(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rule": self.rule,
            "subject": self.subject,
            "app": self.app,
            "state": self.state,
            "since": round(self.since, 3),
            "resolved_at": None if self.resolved_at is None else round(self.resolved_at, 3),
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "deliveries": {k: dict(v) for k, v in self.deliveries.items()},
        }


@dataclass(frozen=True)
class Notification:
    """One change of state to tell the channels about."""

    alert_id: int
    key: str
    state: Literal["firing", "resolved"]
    payload: dict[str, Any]


class AlertBook:
    def __init__(
        self, store: AlertStore | None, *, max_per_hour: int = 6, keep_resolved: int = 500
    ) -> None:
        self.store, self.max_per_hour, self.keep_resolved = store, max_per_hour, keep_resolved
        self.current: dict[str, Alert] = {}  # key -> its pending or firing alert
        self.recent: list[Alert] = []  # resolved, newest last (bounded)
        self.sent_at: dict[str, list[float]] = {}  # key -> notification times (last hour)
        self._lock = threading.RLock()
        if store is not None:
            self._load(store)

    def _load(self, store: AlertStore) -> None:
        for row in reversed(store.alerts(resolved=50)):
            alert = Alert(
                key=row["key"],
                rule=row["rule"],
                subject=row["subject"],
                app=row["app"],
                state=row["state"],
                since=row["since"],
                message=row["message"],
                value=row["value"],
                threshold=row["threshold"],
                resolved_at=row["resolved_at"],
                notified=row["notified"],
                deliveries=json.loads(row["deliveries_json"] or "{}"),
                id=row["id"],
            )
            self.sent_at[alert.key] = list(json.loads(row["notified_at_json"] or "[]"))
            if alert.state == "resolved":
                self.recent.append(alert)
            else:
                self.current[alert.key] = alert

    # --- conditions ----------------------------------------------------------------------

    def settle(
        self,
        rule: str,
        active: dict[str, Reading],
        now: float,
        *,
        keep: Iterable[str] = (),
    ) -> None:
        """The whole truth of `rule` now: `active` (subject -> reading) holds, every other
        subject of the rule is clear, but for those in `keep` (nothing known of them)."""
        kept = set(keep)
        with self._lock:
            for subject, reading in active.items():
                self.observe(rule, subject, reading, now)
            for alert in [a for a in self.current.values() if a.rule == rule]:
                if alert.subject not in active and alert.subject not in kept:
                    self.clear(rule, alert.subject, now)

    def observe(self, rule: str, subject: str, reading: Reading, now: float) -> None:
        """`rule`'s condition holds for `subject`: pending, then firing after `for_s`."""
        key = f"{rule}:{subject}"
        with self._lock:
            alert = self.current.get(key)
            if alert is None:
                alert = Alert(key, rule, subject, reading.app, "pending", now)
                self.current[key] = alert
            alert.value, alert.threshold = reading.value, reading.threshold
            alert.message = reading.message or alert.message
            if alert.state == "pending" and now - alert.since >= reading.for_s:
                alert.state = "firing"
                self._save(alert)

    def clear(self, rule: str, subject: str, now: float) -> None:
        key = f"{rule}:{subject}"
        with self._lock:
            alert = self.current.pop(key, None)
            if alert is None or alert.state == "pending":
                return
            alert.state, alert.resolved_at = "resolved", now
            self.recent = [*self.recent[-(self.keep_resolved - 1) :], alert]
            self._save(alert)

    def firing(self, rule: str | None = None) -> list[Alert]:
        with self._lock:
            return [
                a
                for a in self.current.values()
                if a.state == "firing" and (rule is None or a.rule == rule)
            ]

    def active_subjects(self, rule: str) -> set[str]:
        """The subjects of `rule` that are pending or firing."""
        with self._lock:
            return {a.subject for a in self.current.values() if a.rule == rule}

    # --- notifications -------------------------------------------------------------------

    def due(self, now: float, host: str = "") -> list[Notification]:
        """The changes of state to send now, each marked as sent."""
        out = []
        with self._lock:
            for alert in [*self.current.values(), *self.recent[-200:]]:
                if alert.state == "pending" or alert.notified == alert.state:
                    continue
                if alert.state == "resolved" and alert.notified != "firing":
                    # it never fired as far as anyone heard: nothing to resolve
                    alert.notified = "resolved"
                    self._save(alert)
                    continue
                if self.current.get(alert.key, alert) is not alert:
                    continue  # an older episode: its newer one speaks for the key
                times = [t for t in self.sent_at.get(alert.key, []) if now - t < HOUR]
                self.sent_at[alert.key] = times
                if len(times) >= self.max_per_hour:
                    continue  # held back: sent when the limit allows, if still true
                times.append(now)
                alert.notified = alert.state
                self._save(alert)
                assert alert.id is not None and alert.state != "pending"
                out.append(Notification(alert.id, alert.key, alert.state, payload(alert, host)))
        return out

    def delivered(self, alert_id: int, channel: str, status: dict[str, Any]) -> None:
        """A channel's delivery status of an alert, as GET /alerts shows it."""
        with self._lock:
            for alert in [*self.current.values(), *self.recent]:
                if alert.id == alert_id:
                    alert.deliveries[channel] = status
                    self._save(alert)
                    return

    def unfinished(self, host: str = "") -> list[tuple[str, Notification]]:
        """(channel, notification) of every delivery a stopped serve left queued or
        retrying: sent again by the next one."""
        out = []
        with self._lock:
            for alert in [*self.current.values(), *self.recent[-200:]]:
                for channel, status in alert.deliveries.items():
                    state = status.get("state")
                    if status.get("status") in ("queued", "retrying") and state == alert.state:
                        assert alert.id is not None and alert.state != "pending"
                        note = Notification(alert.id, alert.key, alert.state, payload(alert, host))
                        out.append((channel, note))
        return out

    def snapshot(self, resolved: int = 50) -> tuple[list[Alert], list[Alert]]:
        """(firing, recently resolved newest first), as copies."""
        with self._lock:
            firing = [_copy(a) for a in self.current.values() if a.state == "firing"]
            done = [_copy(a) for a in reversed(self.recent[-resolved:])]
        return sorted(firing, key=lambda a: -a.since), done

    def _save(self, alert: Alert) -> None:
        if self.store is None:
            if alert.id is None:
                alert.id = id(alert)
            return
        row = {
            "id": alert.id,
            "key": alert.key,
            "rule": alert.rule,
            "subject": alert.subject,
            "app": alert.app,
            "state": alert.state,
            "since": alert.since,
            "resolved_at": alert.resolved_at,
            "value": alert.value,
            "threshold": alert.threshold,
            "message": alert.message,
            "notified": alert.notified,
            "notified_at_json": json.dumps(self.sent_at.get(alert.key, [])),
            "deliveries_json": json.dumps(alert.deliveries),
        }
        alert.id = self.store.save_alert(row, self.keep_resolved)


def _copy(alert: Alert) -> Alert:
    return Alert(
        **{**alert.__dict__, "deliveries": {k: dict(v) for k, v in alert.deliveries.items()}}
    )


def payload(alert: Alert, host: str = "") -> dict[str, Any]:
    """What every channel is told of a change of state (the JSON webhook's body)."""
    verb = "FIRING" if alert.state == "firing" else "RESOLVED"
    text = f"[{verb}] {alert.key}"
    if alert.message:
        text += f": {alert.message}"
    if host:
        text += f" (on {host})"
    return {
        "alert": alert.key,
        "rule": alert.rule,
        "subject": alert.subject,
        "app": alert.app,
        "state": alert.state,
        "since": round(alert.since, 3),
        "resolved_at": None if alert.resolved_at is None else round(alert.resolved_at, 3),
        "value": alert.value,
        "threshold": alert.threshold,
        "message": alert.message,
        "host": host,
        "text": text,
    }
