"""Compose-style variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?message}`, `${VAR?message}` and `$$` for a literal `$`.
Defaults may themselves hold substitutions: `${A:-${B:-x}}`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?", re.S)

Lookup = Callable[[str], str | None]


class InterpolationError(ValueError):
    pass


MAX_DEPTH = 16


def interpolate(text: str, env: Mapping[str, str] | Lookup, max_depth: int = MAX_DEPTH) -> str:
    return _interpolate(text, env if callable(env) else env.get, max_depth)


def _interpolate(text: str, lookup: Lookup, depth: int) -> str:
    if depth < 0:
        # Each nested default is a level; a bound keeps a crafted value from exhausting
        # the stack (and the error from quoting the value).
        raise InterpolationError("substitutions are nested too deeply (${A:-${B:-...}})")
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2)
            out.append(_substitute(text[i + 2 : end], lookup, depth))
            i = end + 1
        elif m := _NAME.match(text, i + 1):
            out.append(_substitute(m.group(0), lookup, depth))
            i = m.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{" and text[j - 1] == "$":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    # The value is not quoted: it may hold a secret next to the typo.
    raise InterpolationError(
        f"unclosed substitution: the ${{ at character {start - 1} of the value has no }}"
    )


def _substitute(expr: str, lookup: Lookup, depth: int) -> str:
    m = _BRACED.fullmatch(expr)
    if not m:
        raise InterpolationError(
            f"invalid substitution ${{{expr}}}; write ${{VAR}}, ${{VAR:-default}} "
            "or $$ for a literal $"
        )
    name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
    value = lookup(name)
    unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
    if op in (":-", "-"):
        return _interpolate(arg, lookup, depth - 1) if unset_or_empty else (value or "")
    if op in (":?", "?"):
        if unset_or_empty:
            raise InterpolationError(f"${{{name}}}: {arg or f'{name} is required'}")
        return value or ""
    if value is None:
        raise InterpolationError(
            f"${{{name}}} is not set; export it, add it to the .env file beside the "
            f"manifest, or give a default: ${{{name}:-value}}"
        )
    return value
