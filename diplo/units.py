"""Parsing of human units used in manifests: durations (`5s`, `2m`, `1h30m`, `250ms`)
and sizes (`256m`, `1g`, `512MiB`)."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: object) -> float:
    """Seconds from `5s`, `2m`, `1h30m`, `250ms`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 2m or 1h30m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration like 5s, 2m or 1h30m")
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration; use e.g. 5s, 2m, 1h30m or 250ms")
    return total


def parse_size(value: object) -> int:
    """Bytes from `256m`, `1g`, `512MiB`, `1.5GB` (binary multiples, as Docker does)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 256m or 1g")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like 256m or 1g")
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size; use e.g. 256m, 1g or 512MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs}s" if secs else f"{minutes}m"
