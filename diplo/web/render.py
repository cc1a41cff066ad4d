"""The dashboard's templates (jinja2, autoescaped) and the small filters they format with.
Formatting only: what an app is and how it is comes from the controller's view."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

HEALTH_ORDER = ("unhealthy", "failing", "crashloop", "missing", "starting", "unknown", "healthy")


def age(when: str | float | None, now: float | None = None) -> str:
    """`12s`, `5m`, `3h`, `2d` since `when` (epoch seconds or an ISO time); "" when None."""
    if when is None or when == "":
        return ""
    try:
        at = (
            float(when)
            if isinstance(when, int | float)
            else datetime.fromisoformat(when).timestamp()
        )
    except ValueError:
        return ""
    seconds = max(0, int((now if now is not None else time.time()) - at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def short(sha: str | None) -> str:
    return (sha or "")[:8]


def size(value: float | int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"  # pragma: no cover  (left by the loop above)


def shown(value: Any) -> str:
    """A spec value in a diff: JSON, so that a list or a null reads as one."""
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def tone(word: str | None) -> str:
    """The CSS class of a health, sync status or deployment result."""
    word = (word or "").lower()
    if word in ("healthy", "synced", "succeeded", "running"):
        return "good"
    if word in ("starting", "outofsync", "pending", "unknown", "cancelled"):
        return "warn"
    if not word:
        return "none"
    return "bad"


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("diplo.web", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(age=age, short=short, size=size, shown=shown, tone=tone)
    env.globals["HEALTH_ORDER"] = HEALTH_ORDER
    return env
