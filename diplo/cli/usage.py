"""How `diplo top`, `diplo metrics` and `diplo alerts` show resource use and alerts:
rich tables, one-line host figures, human units (KiB, MiB/s)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from diplo.cli.render import _console, _table, plain
from diplo.ops.metrics import Top

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(value: float | None, suffix: str = "") -> str:
    if value is None:
        return "-"
    n = float(value)
    for unit in UNITS:
        if abs(n) < 1024 or unit == UNITS[-1]:
            return f"{n:.0f} {unit}{suffix}" if unit == "B" else f"{n:.1f} {unit}{suffix}"
        n /= 1024
    raise AssertionError("unreachable")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def millis(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def ratio(value: float | None) -> str:
    """An error ratio as a percentage."""
    return "-" if value is None else f"{100 * value:.1f}%"


def host_line(host: dict[str, Any] | None) -> str | None:
    if not host:
        return None
    mem = host["memory"]
    disk = host["docker_disk"]
    parts = [
        f"host: CPU {pct(host['cpu_percent'])} of {host['cores']} cores",
        f"memory {size(mem['used_bytes'])} / {size(mem['total_bytes'])}",
        f"load {host['load']['1m']:.2f}",
    ]
    if disk.get("free_bytes") is not None:
        parts.append(f"docker disk {size(disk['free_bytes'])} free")
    return ", ".join(parts)


def top_table(top: Top) -> Any:
    """The table (a rich renderable) of `diplo top`."""
    from rich.console import Group
    from rich.text import Text

    table = _table(
        "APP", "REPLICAS", "CPU", "MEMORY", "MEM %", "NET RX", "NET TX", "REQ/S", "5XX", "RESTARTS"
    )
    for u in top.apps:
        table.add_row(
            plain(u.app),
            str(u.replicas),
            pct(u.cpu_percent),
            size(u.memory_bytes),
            pct(u.memory_percent),
            size(u.rx_bytes_per_second, "/s"),
            size(u.tx_bytes_per_second, "/s"),
            rate(u.requests_per_second),
            ratio(u.error_ratio),
            str(u.restarts),
        )
    lines: list[Any] = []
    if top.served_by:
        lines.append(Text(f"from diplo serve at {top.served_by}"))
    if (host := host_line(top.host)) is not None:
        lines.append(Text(host))
    if top.apps:
        lines.append(table)
    else:
        lines.append(Text("no samples yet: metrics are collected by `diplo serve`"))
    return Group(*lines)


def print_top(top: Top) -> None:
    _console().print(top_table(top))


ROWS = 30  # the human table of `diplo metrics` has at most this many rows


def series_table(series: dict[str, Any]) -> None:
    m = series["metrics"]
    stamps = series["timestamps"]
    if not stamps:
        click.echo(f"{series['app']}: no samples in the last {series['since']}s")
        return
    proxied = any(v is not None for v in m.get("requests_per_second", []))
    heads = ["TIME", "CPU", "CPU MAX", "MEMORY", "MEM MAX", "NET RX", "NET TX", "PROBE"]
    table = _table(*heads, *(("REQ/S", "P50", "P99", "5XX") if proxied else ()))
    for i, ts in enumerate(stamps):
        when = dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")
        latency = m["latency_ms"][i]
        requests = (
            (
                rate(m["requests_per_second"][i]),
                millis(m["p50_ms"][i]),
                millis(m["p99_ms"][i]),
                ratio(m["error_ratio"][i]),
            )
            if proxied
            else ()
        )
        table.add_row(
            when,
            pct(m["cpu_percent"][i]),
            pct(m["cpu_percent_max"][i]),
            size(m["memory_bytes"][i]),
            size(m["memory_bytes_max"][i]),
            size(m["rx_bytes_per_second"][i], "/s"),
            size(m["tx_bytes_per_second"][i], "/s"),
            millis(latency),
            *requests,
        )
    click.echo(f"{series['app']}: every {series['step']}s over the last {series['since']}s")
    _console().print(table)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


def print_alerts(answer: dict[str, Any]) -> None:
    """`diplo alerts`: what fires, what fired, and the channels' health."""
    if not answer.get("enabled", True):
        click.echo("alerts are off (alerts.enabled in $DIPLO_HOME/config.yaml)")
        return
    rows = [*answer["firing"], *answer["resolved"]]
    if not rows:
        click.echo("no alerts")
    else:
        table = _table("STATE", "ALERT", "SINCE", "RESOLVED", "VALUE", "THRESHOLD", "MESSAGE")
        for a in rows:
            table.add_row(
                a["state"].upper(),
                plain(a["key"]),
                _when(a["since"]),
                _when(a["resolved_at"]),
                plain(a["value"] or "-"),
                plain(a["threshold"] or "-"),
                plain(a["message"]),
            )
        _console().print(table)
    for ch in answer.get("channels", []):
        line = f"channel {ch['name']} ({ch['type']}, {ch['target']}): {ch['sent']} sent"
        if ch["failed"]:
            line += f", {ch['failed']} failed attempts, last error: {ch['last_error']}"
        if ch["queued"]:
            line += f", {ch['queued']} queued"
        click.echo(line)
    if not answer.get("served_by"):
        click.echo("(from the ledger: no diplo serve runs, so nothing is evaluated or sent)")
