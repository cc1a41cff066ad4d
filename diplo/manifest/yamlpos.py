"""YAML loading that remembers where every key and value came from, so that a
validation error deep in the data can be reported as file:line:col."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Pos:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class Located:
    """A YAML document as plain Python data plus the position of each path in it."""

    data: Any
    values: dict[Path, Pos] = field(default_factory=dict)
    keys: dict[Path, Pos] = field(default_factory=dict)
    problems: list[tuple[Pos, str]] = field(default_factory=list)

    def where(self, path: Path, *, prefer_key: bool = False) -> Pos:
        """The position of the longest prefix of `path` that exists in the document."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefer_key and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Pos(1, 1)


# libyaml's parser when present (8x faster on big manifests; it keeps the marks too).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _pos(node: yaml.Node) -> Pos:
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self) -> None:
        self.loader = yaml.SafeLoader("")
        self.out = Located(None)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.out.values[path] = _pos(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # `<<: *defaults` (or a list of them): keys written here win.
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    value = self.build(source, path)
                    if isinstance(value, dict):
                        for k, v in value.items():
                            merged.setdefault(k, v)
                    else:
                        self.out.problems.append((_pos(source), "a merge key (<<) needs a mapping"))
                continue
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                self.out.problems.append((_pos(key_node), "mapping keys must be plain text"))
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in result:
                self.out.problems.append(
                    (_pos(key_node), f"duplicate key {key!r}: each key may appear once")
                )
                continue
            self.out.keys[(*path, key)] = _pos(key_node)
            result[key] = self.build(value_node, (*path, key))
        for k, v in merged.items():
            result.setdefault(k, v)
        return result


class YamlTooBig(ValueError):
    """The document would be too deep or too large once its aliases are expanded."""

    def __init__(self, pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


@dataclass
class _Open:
    anchor: str | None
    start: int  # values counted when it opened
    depth: int
    deepest: int


def check_size(text: str, max_depth: int, max_nodes: int) -> None:
    """Refuse, before building anything, a document whose expansion is too deep or too big.

    An alias (*name) shares its anchor's node, so a few hundred bytes can stand for
    millions of values (the "billion laughs"). This counts the values each anchor stands
    for from the parser's events, in one pass and without expanding anything."""
    size: dict[str, int] = {}  # values an anchor stands for
    height: dict[str, int] = {}  # how deep it nests
    stack: list[_Open] = []
    nodes = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.DocumentStartEvent):
            size.clear()
            height.clear()
        depth = len(stack)
        if isinstance(event, yaml.AliasEvent):
            anchor = event.anchor
            if any(o.anchor == anchor for o in stack):
                raise YamlTooBig(
                    _pos(event), f"the alias *{anchor} refers to a value that holds it (a loop)"
                )
            if anchor not in size:
                continue  # undefined: the composer says so, with the place
            nodes += size[anchor]
            reach = depth + height[anchor]
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            reach = depth
            if event.anchor is not None:
                size[event.anchor], height[event.anchor] = 1, 0
        elif isinstance(event, yaml.CollectionStartEvent):
            nodes += 1
            reach = depth + 1
            stack.append(_Open(event.anchor, nodes - 1, depth + 1, depth + 1))
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            if done.anchor is not None:
                size[done.anchor] = nodes - done.start
                height[done.anchor] = done.deepest - done.depth + 1
            if stack:
                stack[-1].deepest = max(stack[-1].deepest, done.deepest)
            continue
        else:
            continue
        if stack:
            stack[-1].deepest = max(stack[-1].deepest, reach)
        if reach > max_depth:
            raise YamlTooBig(
                _pos(event),
                f"the document nests deeper than {max_depth} levels"
                + (
                    f" once *{event.anchor} is expanded"
                    if isinstance(event, yaml.AliasEvent)
                    else ""
                ),
            )
        if nodes > max_nodes:
            raise YamlTooBig(
                _pos(event),
                f"the document holds more than {max_nodes} values"
                + (
                    f" once its aliases are expanded (*{event.anchor} here)"
                    if isinstance(event, yaml.AliasEvent)
                    else ""
                ),
            )


def load_located(text: str, max_depth: int = 64, max_nodes: int = 200_000) -> Located:
    """Parse one YAML document. Raises yaml.YAMLError (with a mark) on a syntax error and
    YamlTooBig (with a position) when it is too deep or too big once expanded."""
    check_size(text, max_depth, max_nodes)
    builder = _Builder()
    try:
        node = yaml.compose(text, Loader=_LOADER)
        if node is not None:
            builder.out.data = builder.build(node, ())
        return builder.out
    finally:
        # The loader's parser states are bound methods of itself, and its constructed
        # objects hold the document's nodes: left to the cyclic collector, a reload of
        # 500 apps made 60,000 objects of cyclic garbage, and `diplo serve` a full
        # collection (every request of the API waiting) every few seconds.
        builder.loader.dispose()
        builder.loader.constructed_objects.clear()
