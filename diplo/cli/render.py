"""How the CLI shows results: live progress on a terminal, plain lines otherwise, JSON
lines on request; plans, diffs, apply outcomes, status and history tables."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
import structlog

from diplo.model import AppPlan, Deployment, Plan
from diplo.ops.apply import ApplyReport, DeployHandle, Watch

if TYPE_CHECKING:
    from diplo.ops.commands import Statuses
    from diplo.ops.status import AppView

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
        from rich.text import Text

        table = Table(box=None, show_header=True, header_style="bold")
        table.add_column("app")
        table.add_column("step")
        table.add_column("detail", overflow="fold")
        now = time.monotonic()
        for app, (step, detail, since) in sorted(self.rows.items()):
            style = {"ok": "green", "FAILED": "red"}.get(step, "yellow")
            took = "" if step in ("ok", "FAILED") else f" {now - since:.0f}s"
            table.add_row(app, Text(clean(step + took), style=style), plain(detail))
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
    if p.spec is not None and (p.spec.replicas > 1 or p.ready > 1):
        head += f" [replicas {p.replicas}]"
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
                "replicas": p.replicas or None,
                "fields": [{"path": c.path, "old": c.old, "new": c.new} for c in p.changes],
            }
            for p in plan.apps
        ],
    }


# --- apply ----------------------------------------------------------------------------------


def say_pins(report: ApplyReport) -> None:
    planned = {p.app for p in report.plan.apps}
    for name, dep_id in sorted(report.pinned.rollback_of.items()):
        if name in planned:
            click.echo(
                f"{name}: pinned to deployment {dep_id} by a rollback; "
                f"`diplo sync {name} --resume` follows the manifest again",
                err=True,
            )


def watch(json_mode: bool) -> Watch:
    """How the CLI watches a deploy: pins said first, progress live on a terminal (plain
    lines otherwise, JSON with --log-format json), Ctrl-C cancels the deploys in flight
    (new containers go, previous revisions stay)."""

    @contextlib.contextmanager
    def watching(report: ApplyReport, handle: DeployHandle) -> Iterator[Any]:
        say_pins(report)
        plan = report.plan
        live = (
            LiveReporter(plan)
            if not json_mode and sys.stdout.isatty() and any(p.actions for p in plan.apps)
            else None
        )
        previous = signal.signal(signal.SIGINT, lambda *_: handle.cancel("Ctrl-C"))
        try:
            if live is not None:
                with live:
                    yield live
            else:
                yield JsonReporter() if json_mode else PlainReporter()
        finally:
            signal.signal(signal.SIGINT, previous)

    return watching


def apply_outcome(report: ApplyReport, json_mode: bool) -> int:
    """Print what an apply did; returns the exit code (130 cancelled, 1 failed)."""
    result = report.result
    assert result is not None
    if json_mode:
        outcomes = {
            name: {"change": o.kind, "ok": o.ok, "message": o.message, "step": o.step}
            for name, o in sorted(result.outcomes.items())
        }
        click.echo(json.dumps({"ok": result.ok, "apps": outcomes}))
    else:
        if report.orphans:
            kept = ", ".join(report.orphans)
            click.echo(f"not in the manifests (kept; apply --prune removes): {kept}")
        n = len(result.outcomes)
        changed = [o for o in result.outcomes.values() if o.kind != "unchanged"]
        if result.ok and changed:
            click.echo(f"converged: {n} app{'s' if n != 1 else ''}, {len(changed)} changed")
        elif result.ok:
            click.echo(f"in sync: {n} app{'s' if n != 1 else ''}, nothing to do")
        for o in result.failed:
            click.echo(f"error: {o.message}", err=True)
    for name in report.unpinned:
        click.echo(f"{name}: rollback failed; {name} is not pinned", err=True)
    if report.proxy_error:
        click.echo(f"error: {report.proxy_error}", err=True)
    if report.cancelled:
        return 130
    return 0 if report.ok else 1


# --- status and history -----------------------------------------------------------------------


def commit_text(sha: str | None, dirty: bool) -> str:
    return (sha or "-")[:10] + ("+dirty" if sha and dirty else "")


def _sync_text(row: AppView) -> str:
    """Argo CD's sync column; only the controller knows the source's newest revision."""
    if not row.sync:
        return "-"
    pin = row.pinned
    return str(row.sync["status"]) + (f" (pinned to #{pin['deployment']})" if pin else "")


def _revision_text(row: AppView) -> str:
    rev = row.revision or row.last_deployment or {}
    commit = rev.get("commit")
    if not commit:
        return "-"
    text = commit_text(commit, bool(rev.get("dirty")))
    newest = row.source_revision
    if newest and newest != commit:
        text += f" (source at {newest[:10]})"
    return text


# C0 and C1 control characters but tab and newline: a commit subject or a container's
# log line must not move the cursor, retitle the terminal or plant a hyperlink (OSC 8).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    return _CONTROL.sub("", text)


def plain(text: str) -> Any:
    """A table cell shown as it is: rich would read `[/api]` in a commit subject or a log
    line as markup (and fail, or style it)."""
    from rich.text import Text

    return Text(clean(text))


def _console() -> Any:
    from rich.console import Console

    return Console(width=200 if not sys.stdout.isatty() else None)


def _table(*columns: str) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def status_table(statuses: Statuses) -> None:
    rows = statuses.apps
    table = _table(
        "APP", "PROJECT", "STATE", "HEALTH", "READY", "IMAGE", "PORTS", "SPEC", "SYNC",
        "REVISION", "LAST DEPLOY",
    )  # fmt: skip
    for r in rows:
        d = r.last_deployment
        last = f"#{d['revision']} {d['result']} {d['finished_at'] or d['started_at']}" if d else "-"
        cells = (
            r.app,
            r.project,
            r.state,
            r.health,
            r.replicas or f"{r.running}/{r.desired}",
            r.image,
            ", ".join(r.ports) or "-",
            r.spec_hash or "-",
            _sync_text(r),
            _revision_text(r),
            last,
        )
        table.add_row(*map(plain, cells))
    if statuses.served_by is not None:
        click.echo(f"from diplo serve at {statuses.served_by}")
    if rows:
        _console().print(table)
    else:
        click.echo("no apps on this host")
    for r in rows:
        d = r.last_deployment
        if r.health != "healthy":
            extra = f", {r.restarts} restarts" if r.restarts else ""
            click.echo(clean(f"{r.app}: {r.health}: {r.health_detail}{extra}"))
        if d and d["result"] in ("failed", "cancelled", "interrupted"):
            line = f"{r.app}: last deployment {d['result']} at {d['step']}: {d['error']}"
            click.echo(clean(line))
        if r.last_error:  # the controller's messages mostly name the app already
            named = r.last_error.startswith(f"{r.app}:")
            click.echo(clean(r.last_error if named else f"{r.app}: {r.last_error}"))
    if statuses.manifest_error:
        error = clean(statuses.manifest_error)
        click.echo(f"manifest error (the last good manifest stays in force):\n{error}")
    if statuses.domains:
        domains = _table("DOMAIN", "APP", "TLS", "ISSUER", "EXPIRES")
        for d in statuses.domains:
            issuer = d.get("issuer") or (f"none ({d['error']})" if d.get("error") else "-")
            expires = (d.get("expires") or "-")[:16].replace("T", " ")
            domains.add_row(*map(plain, (d["domain"], d["app"], d["tls"], issuer, expires)))
        _console().print(domains)


def history_table(deps: list[Deployment]) -> None:
    table = _table("ID", "REV", "STARTED", "RESULT", "COMMIT", "MESSAGE", "NOTE")
    for d in deps:
        note = f"rollback to #{d.rollback_of}" if d.rollback_of else ""
        if d.error:
            note = (note + "; " if note else "") + f"{d.step}: {d.error}"
        cells = (
            str(d.id),
            str(d.revision),
            d.started_at[:19].replace("T", " "),
            d.result,
            commit_text(d.commit_sha, bool(d.dirty)),
            d.commit_subject or "",
            note,
        )
        table.add_row(*map(plain, cells))
    _console().print(table)
