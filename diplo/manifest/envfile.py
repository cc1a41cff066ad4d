"""Reading `KEY=value` files (`.env`, `env_file:`), as docker compose does."""

from __future__ import annotations

import re

# A quoted value, then nothing or a comment: "a b" # note
_QUOTED = re.compile(r"""^(?P<q>["'])(?P<body>(?:\\.|(?!(?P=q)).)*)(?P=q)(?P<rest>.*)$""", re.S)
_LINE = re.compile(r"^\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(?P<value>.*)$")


def parse_env_text(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """Variables, and (line number, problem) for each line that is not one."""
    values: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            problems.append((number, "expected KEY=value"))
            continue
        value = m.group("value").strip()
        quoted = _QUOTED.match(value)
        if quoted:
            if quoted.group("rest") and not quoted.group("rest").lstrip().startswith("#"):
                problems.append((number, "unexpected text after the closing quote"))
                continue
            value = quoted.group("body")
            if quoted.group("q") == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        else:
            value = re.sub(r"\s+#.*$", "", value)  # an unquoted value ends at " #"
        values[m.group("key")] = value
    return values, problems
