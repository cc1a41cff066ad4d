"""How results are shown: live progress on a terminal, plain lines otherwise, JSON
lines on request; plans, diffs and status tables."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import structlog

from diplo.model import AppPlan, Plan

_MARK = {"create": "+", "update": "~", "start": ">", "remove": "-", "unchanged": "="}


class PlainReporter:
    """One line per step; safe to call from worker threads."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def step(self, app: str, step: str, detail: str = "") -> None:
        with self._lock:
            print(f"{app}: {step}{' ' + detail if detail else ''}", file=self.stream, flush=True)

    def done(self, app: str, ok: bool, message: str) -> None:
        with self._lock:
            word = "ok" if ok else "FAILED"
            print(f"{app}: {word}: {message}", file=self.stream, flush=True)


class JsonReporter:
    """Progress as structlog events (rendered as JSON lines by --log-format json)."""

    def __init__(self) -> None:
        self.log = structlog.get_logger("diplo.apply")

    def step(self, app: str, step: str, detail: str = "") -> None:
        self.log.info("app.step", app=app, step=step, detail=detail)

    def done(self, app: str, ok: bool, message: str) -> None:
        (self.log.info if ok else self.log.error)("app.result", app=app, ok=ok, message=message)


class LiveReporter:
    """A live table, one row per app, for terminals (rich)."""

    def __init__(self, plan: Plan) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=False)
        self.rows: dict[str, tuple[str, str, float]] = {
            p.app: ("waiting", "", time.monotonic()) for p in plan.apps if p.actions
        }
        self._lock = threading.Lock()
        self.live = Live(self._table(), console=self.console, refresh_per_second=8)

    def __enter__(self) -> LiveReporter:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._table())
        self.live.__exit__(None, None, None)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=True, header_style="bold")
        table.add_column("app")
        table.add_column("step")
        table.add_column("detail", overflow="fold")
        now = time.monotonic()
        for app, (step, detail, since) in sorted(self.rows.items()):
            style = {"ok": "green", "FAILED": "red"}.get(step, "yellow")
            took = "" if step in ("ok", "FAILED") else f" {now - since:.0f}s"
            table.add_row(app, f"[{style}]{step}{took}[/]", detail)
        return table

    def step(self, app: str, step: str, detail: str = "") -> None:
        with self._lock:
            self.rows[app] = (step, detail, time.monotonic())
            self.live.update(self._table())

    def done(self, app: str, ok: bool, message: str) -> None:
        with self._lock:
            first_line = message.splitlines()[0] if message else ""
            self.rows[app] = ("ok" if ok else "FAILED", first_line, time.monotonic())
            self.live.update(self._table())


def _value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def describe_app_plan(p: AppPlan) -> list[str]:
    head = f"{_MARK[p.kind]} {p.app:<20} {p.kind}"
    if p.kind != "unchanged" and p.reason and not p.changes:
        head += f": {p.reason}"
    lines = [head]
    for c in p.changes:
        lines.append(f"      {c.path}: {_value(c.old)} -> {_value(c.new)}")
    return lines


def render_plan(plan: Plan, *, verbose: bool = True) -> str:
    lines: list[str] = []
    for net in plan.networks:
        lines.append(f"+ network {net.name}")
    for p in plan.apps:
        if p.kind == "unchanged" and not verbose:
            continue
        lines.extend(describe_app_plan(p))
    return "\n".join(lines)


def plan_as_json(plan: Plan) -> dict[str, Any]:
    return {
        "in_sync": plan.in_sync,
        "networks": [n.name for n in plan.networks],
        "apps": [
            {
                "app": p.app,
                "project": p.project,
                "change": p.kind,
                "reason": p.reason,
                "fields": [{"path": c.path, "old": c.old, "new": c.new} for c in p.changes],
            }
            for p in plan.apps
        ],
    }
