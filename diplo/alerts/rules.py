"""What each rule watches, and when it holds. Inputs come from the collector (samples of
every container and of the host), the controller's view (each app's health and restart
count), its events (deploys, errors, refused manifests) and its sources (polls, refused
commits), and the proxy's certificates. A rule whose input is absent never fires."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from diplo.alerts.state import AlertBook, Reading
from diplo.alertspec import HostRules, Threshold, app_alerts
from diplo.metrics.collector import ContainerSample, HostSample

DOWN = {"unhealthy", "crashed", "missing"}
UNDECIDED = {"starting", "unknown", "absent"}  # neither down nor up: a firing `down` stays
PORT_CONFLICT = re.compile(
    r"port is already allocated|address already in use|host port \S+ is also claimed by", re.I
)
CLAIM_CONFLICT = re.compile(r"(domain|host port) '?([^' ]+)'? (?:is also claimed|is used)", re.I)
FIX_EVENTS = {"deploy.succeeded", "app.create", "app.update", "app.start", "app.ok"}


def _pct(value: float) -> str:
    return f"{value:.1f}%"


def _bytes(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


class Evaluator:
    def __init__(
        self,
        book: AlertBook,
        rules: HostRules,
        app_rules: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self.book, self.rules = book, rules
        self.app_rules = app_rules  # app -> its manifest's `alerts:` (JSON), if any
        self.restarts: dict[str, deque[tuple[float, int]]] = {}  # app -> (time, count)
        self.heals: dict[str, int] = {}  # app -> restarts made by Diplo (drift heals)
        self.offset: dict[str, int] = {}  # app -> restarts of its containers replaced
        self.claims: set[str] = set()  # conflict subjects that an invalid manifest raised
        self.first_seen: dict[str, float] = {}  # source -> when this process first saw it

    def of(self, app: str) -> HostRules:
        try:
            own = app_alerts(self.app_rules(app) or "")
        except ValueError:  # validated when loaded: only a record from an older Diplo
            own = None
        return self.rules.for_app(own)

    # --- the collector's samples ---------------------------------------------------------

    def samples(
        self, samples: Iterable[ContainerSample], host: HostSample | None, now: float
    ) -> None:
        by_app: dict[str, list[ContainerSample]] = {}
        for s in samples:
            by_app.setdefault(s.app, []).append(s)
        memory: dict[str, Reading] = {}
        cpu: dict[str, Reading] = {}
        errors: dict[str, Reading] = {}
        latency: dict[str, Reading] = {}
        unknown_cpu: set[str] = set()
        idle: set[str] = set()
        for app, group in by_app.items():
            rules = self.of(app)
            if rules.memory.enabled and (r := _memory(group, rules, host)):
                memory[app] = r
            if rules.cpu.enabled:
                r_cpu = _cpu(group, rules)
                if r_cpu is None:
                    unknown_cpu.add(app)  # a first sample has no rate yet
                elif r_cpu.value is not None:
                    cpu[app] = r_cpu
            req = next((s.requests for s in group if s.requests is not None), None)
            if req is not None and req.requests == 0:
                # no request in the interval says nothing of errors or latency: an alert
                # that fires stays firing until answers show it cleared
                idle.add(app)
                req = None
            if req is not None and rules.error_rate.enabled:
                t = rules.error_rate.threshold()
                if 100.0 * req.error_ratio > t.value:
                    errors[app] = Reading(
                        app,
                        _pct(100.0 * req.error_ratio),
                        t.text(),
                        f"{app}: {100.0 * req.error_ratio:.1f}% of answers are 5xx (above "
                        f"{t.text()})",
                        rules.error_rate.for_,
                    )
            if req is not None and rules.latency.enabled:
                t = rules.latency.threshold()
                if req.p99_ms / 1000.0 > t.value:
                    latency[app] = Reading(
                        app,
                        f"{req.p99_ms:.0f}ms",
                        t.text(),
                        f"{app}: p99 response time {req.p99_ms:.0f}ms (above {t.text()})",
                        rules.latency.for_,
                    )
        self.book.settle("memory", memory, now)
        self.book.settle("cpu", cpu, now, keep=unknown_cpu)
        self.book.settle("error_rate", errors, now, keep=idle)
        self.book.settle("latency", latency, now, keep=idle)
        self.disk(host, now)

    def disk(self, host: HostSample | None, now: float) -> None:
        rule = self.rules.disk
        if host is None or not host.disk_total_bytes or host.disk_free_bytes is None:
            self.book.settle("disk", {}, now, keep=self.book.active_subjects("disk"))
            return
        used = 100.0 * (1 - host.disk_free_bytes / host.disk_total_bytes)
        t = rule.threshold()
        active = {}
        if rule.enabled and used > t.value:
            where = host.docker_root or "docker"
            active[where] = Reading(
                None,
                _pct(used),
                t.text(),
                f"the disk of {where} is {used:.1f}% full (above {t.text()})",
                rule.for_,
            )
        self.book.settle("disk", active, now)

    # --- the controller's view -----------------------------------------------------------

    def health(self, apps: Mapping[str, tuple[str, int]], now: float) -> None:
        """`apps`: each app's health label and container restart count, every app known
        (desired and not seen on the host yet: `absent`); the alerts of an app that is
        neither any more are resolved."""
        down: dict[str, Reading] = {}
        looping: dict[str, Reading] = {}
        undecided = set()
        for app, (health, restarts) in apps.items():
            rules = self.of(app)
            if rules.down.enabled and health in DOWN:
                down[app] = Reading(app, health, None, f"{app} is {health}", rules.down.for_)
            elif health in UNDECIDED:
                undecided.add(app)
            if rules.crashloop.enabled:
                n = self._restarts(app, restarts + self.heals.get(app, 0), now, rules)
                if n >= rules.crashloop.restarts:
                    within = rules.crashloop.within
                    looping[app] = Reading(
                        app,
                        str(n),
                        str(rules.crashloop.restarts),
                        f"{app} restarted {n} times within {within:g}s",
                    )
        for gone in set(self.restarts) - set(apps):
            del self.restarts[gone]
            self.offset.pop(gone, None)
        self.book.settle("down", down, now, keep=undecided)
        self.book.settle("crashloop", looping, now)
        for rule in ("deploy", "conflict"):
            for alert in self.book.firing(rule):
                if alert.app is not None and alert.app not in apps:
                    self.book.clear(rule, alert.subject, now)

    def _restarts(self, app: str, count: int, now: float, rules: HostRules) -> int:
        """Restarts within the rule's window; a new container's count starts from 0, so
        the running total is kept from going back."""
        seen = self.restarts.setdefault(app, deque())
        total = count + self.offset.get(app, 0)
        if seen and total < seen[-1][1]:
            self.offset[app] = seen[-1][1] - count
            total = seen[-1][1]
        seen.append((now, total))
        while len(seen) > 1 and seen[0][0] < now - rules.crashloop.within:
            seen.popleft()
        return total - seen[0][1]

    # --- the controller's events ---------------------------------------------------------

    def event(self, kind: str, app: str | None, data: Mapping[str, Any], now: float) -> None:
        if app is not None and kind in ("app.restarted", "drift.healed"):
            self.heals[app] = self.heals.get(app, 0) + 1
        if app is not None and kind in ("deploy.failed", "rollback.failed"):
            if self.of(app).deploy.enabled:
                what = "deploy" if kind == "deploy.failed" else "rollback"
                detail = str(data.get("message") or data.get("error") or "")
                self.book.observe(
                    "deploy",
                    app,
                    Reading(app, None, None, f"{app}: {what} failed: {detail}".rstrip(": ")),
                    now,
                )
        elif app is not None and kind in FIX_EVENTS:
            self.book.clear("deploy", app, now)
        if app is not None and kind == "app.error" and self.rules.conflict.enabled:
            error = str(data.get("error") or "")
            if PORT_CONFLICT.search(error):
                self.book.observe("conflict", app, Reading(app, None, None, error), now)
        elif app is not None and kind in FIX_EVENTS:
            self.book.clear("conflict", app, now)
        if kind == "manifest.invalid" and self.rules.conflict.enabled:
            for issue in data.get("issues") or []:
                message = str(issue.get("message", ""))
                if m := CLAIM_CONFLICT.search(message):
                    where = f"{issue.get('file', '')}:{issue.get('line', '')}"
                    subject = m.group(2)
                    self.claims.add(subject)
                    self.book.observe(
                        "conflict", subject, Reading(None, None, None, f"{where}: {message}"), now
                    )
        elif kind == "manifest.valid":
            for subject in self.claims:
                self.book.clear("conflict", subject, now)
            self.claims.clear()

    # --- sources and certificates --------------------------------------------------------

    def sources(
        self, described: Iterable[Mapping[str, Any]], poll_every: float, now: float
    ) -> None:
        refused: dict[str, Reading] = {}
        stale: dict[str, Reading] = {}
        rule = self.rules.source_stale
        for src in described:
            if "last_poll" not in src:  # a folder: nothing is polled
                continue
            name = str(src.get("url") or "git")
            self.first_seen.setdefault(name, now)
            bad = src.get("refused")
            if bad and self.rules.refused_commit.enabled:
                sha = str(bad.get("sha", ""))[:10]
                refused[name] = Reading(None, sha, None, str(bad.get("error") or "")[:2000])
            last_ok = src.get("last_poll_ok") or self.first_seen[name]
            limit = rule.intervals * poll_every
            if rule.enabled and isinstance(last_ok, int | float) and now - last_ok > limit:
                stale[name] = Reading(
                    None,
                    f"{now - last_ok:.0f}s",
                    f"{limit:g}s",
                    f"{name}: no successful poll for {now - last_ok:.0f}s "
                    f"({src.get('poll_error') or 'no error recorded'})",
                )
        self.book.settle("refused_commit", refused, now)
        self.book.settle("source_stale", stale, now)

    def certificates(self, rows: Iterable[Mapping[str, Any]], now: float) -> None:
        from datetime import datetime

        rule = self.rules.certificate
        active: dict[str, Reading] = {}
        for row in rows:
            expires = row.get("expires")
            if not expires or not rule.enabled:
                continue
            left = datetime.fromisoformat(str(expires)).timestamp() - now
            if left < rule.within:
                domain = str(row["domain"])
                active[domain] = Reading(
                    row.get("app"),
                    f"{left / 86400:.1f} days",
                    f"{rule.within / 86400:g} days",
                    f"the certificate of {domain} expires in {left / 86400:.1f} days"
                    if left > 0
                    else f"the certificate of {domain} expired {-left / 86400:.1f} days ago",
                )
        self.book.settle("certificate", active, now)


def _memory(
    group: list[ContainerSample], rules: HostRules, host: HostSample | None
) -> Reading | None:
    rule = rules.memory
    t = rule.threshold()
    app = group[0].app
    worst: tuple[float, str] | None = None
    for s in group:
        if t.kind == "bytes":
            value, shown = float(s.memory_bytes), _bytes(s.memory_bytes)
        else:
            limit = s.memory_limit_bytes or (host.memory_total_bytes if host else None)
            if not limit:
                continue
            value = 100.0 * s.memory_bytes / limit
            shown = _pct(value)
        if worst is None or value > worst[0]:
            worst = (value, shown)
    if worst is None or worst[0] <= t.value:
        return None
    of = " of its limit" if t.kind == "percent" and group[0].memory_limit_bytes else ""
    return Reading(
        app, worst[1], t.text(), f"{app}: memory {worst[1]}{of} (above {t.text()})", rule.for_
    )


def _cpu(group: list[ContainerSample], rules: HostRules) -> Reading | None:
    """None when no replica has a rate yet; a Reading without value when below."""
    rule = rules.cpu
    t: Threshold = rule.threshold()
    values = [
        s.cpu_limit_percent if s.cpu_limit_percent is not None else s.cpu_percent
        for s in group
        if s.cpu_percent is not None
    ]
    if not values:
        return None
    worst = max(v for v in values if v is not None)
    if worst <= t.value:
        return Reading()
    app = group[0].app
    of = "of its limit" if group[0].cpus else "of one core"
    return Reading(
        app, _pct(worst), t.text(), f"{app}: CPU {_pct(worst)} {of} (above {t.text()})", rule.for_
    )
