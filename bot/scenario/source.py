"""YAML text → plain data, remembering where every key and value came from.

The file is composed into YAML nodes (safe tags only; nothing is ever
constructed from a tag), then walked once to build dicts, lists and scalars and
a map from each value's path (``("stages", 2, "at")``) to its line and column.
Validation errors found later on the data are reported at those positions.

Hostile input is bounded here: nesting depth while composing (PyYAML's composer
recurses, so a 10,000-level file would otherwise end in ``RecursionError``),
the number of values written (counted while composing, so a flood stops early),
the number of nodes after expanding aliases (billion laughs), and recursive
aliases. Duplicate keys are errors, not last-one-wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column

MAX_DEPTH = 64
"""Deepest nesting accepted; a real scenario nests about six levels."""

MAX_NODES = 100_000
"""Most values a file may expand to, aliases included."""

MAX_WRITTEN = 20_000
"""Most values (and aliases) a file may write; a large real scenario writes a few
thousand. Counted while composing, so a flood of values stops early: pure-Python
YAML costs about 0.1 ms and 0.6 KB per value."""

_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class SourceError(Exception):
    """The file cannot be read as data at all; one positioned message."""

    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.col = col
        self.message = message


@dataclass
class Document:
    """The data of one YAML document and where each part of it is written."""

    data: Any
    values: dict[Path, Position] = field(default_factory=dict)
    """Path → position of the value node."""
    keys: dict[Path, Position] = field(default_factory=dict)
    """Path → position of the key whose value lives at that path."""
    problems: list[tuple[int, int, str]] = field(default_factory=list)
    """Errors that did not stop the walk (duplicate keys, unsupported tags)."""

    def position(self, path: Path, *, key: bool = False) -> Position:
        """Where ``path`` is written; the nearest enclosing node if it is not."""
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))


def _pos(mark: yaml.Mark | None) -> Position:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader whose composer refuses to nest deeper than ``MAX_DEPTH``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._written = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        self._written += 1
        try:
            if self._depth > MAX_DEPTH:
                line, col = _pos(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
                raise SourceError(line, col, f"nesting is deeper than {MAX_DEPTH} levels")
            if self._written > MAX_WRITTEN:
                line, col = _pos(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
                raise SourceError(
                    line, col, f"the file has more than {MAX_WRITTEN} values; too large"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line_col(text: str, index: int) -> Position:
    before = text[:index]
    line = before.count("\n") + 1
    return line, index - (before.rfind("\n") + 1) + 1


def compose(text: str) -> Document:
    """Parse ``text`` (one YAML document) into a :class:`Document`.

    Raises :class:`SourceError` when the text is not YAML this loader accepts.
    """
    loader: _BoundedLoader | None = None
    try:
        try:
            # The reader checks every character as it is constructed.
            loader = _BoundedLoader(text)
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            line, col = _pos(exc.problem_mark or exc.context_mark)
            # Only context and problem: the snippet PyYAML adds would quote the
            # file, and the file holds secrets.
            parts = [p for p in (exc.context, exc.problem) if p]
            raise SourceError(line, col, "invalid YAML: " + ", ".join(parts)) from None
        except yaml.reader.ReaderError as exc:
            line, col = _line_col(text, exc.position)
            raise SourceError(
                line, col, f"character U+{exc.character:04X} is not allowed in YAML"
            ) from None
        except yaml.YAMLError as exc:
            raise SourceError(1, 1, f"invalid YAML ({type(exc).__name__})") from None
        if root is None:
            raise SourceError(1, 1, "the file is empty (no YAML document)")
        document = Document(data=None)
        walker = _Walker(loader, document)
        document.data = walker.build(root, (), 1)
        return document
    finally:
        if loader is not None:
            loader.dispose()


class _Walker:
    """Builds plain data from nodes, recording positions, within the limits."""

    def __init__(self, loader: _BoundedLoader, document: Document) -> None:
        self._loader = loader
        self._doc = document
        self._count = 0
        # Nodes being expanded right now: meeting one again is a recursive alias.
        self._active: set[int] = set()

    def _problem(self, node: Node, message: str) -> None:
        line, col = _pos(node.start_mark)
        self._doc.problems.append((line, col, message))

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self._count += 1
        line, col = _pos(node.start_mark)
        if self._count > MAX_NODES:
            # Blame the top-level entry being expanded, not a deep shared node.
            line, col = self._doc.values.get(path[:1], (line, col))
            raise SourceError(
                line, col, f"the file expands to more than {MAX_NODES} values (alias bomb?)"
            )
        if depth > MAX_DEPTH:
            raise SourceError(line, col, f"nesting is deeper than {MAX_DEPTH} levels")
        self._doc.values.setdefault(path, (line, col))
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self._active:
            raise SourceError(line, col, "an alias refers to a node that contains it")
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ:
                    self._problem(node, f"unsupported YAML tag {node.tag}")
                return [
                    self.build(item, (*path, index), depth + 1)
                    for index, item in enumerate(node.value)
                ]
            if isinstance(node, MappingNode):
                if node.tag != _MAP:
                    self._problem(node, f"unsupported YAML tag {node.tag}")
                return self._mapping(node, path, depth)
        finally:
            self._active.discard(id(node))
        raise SourceError(line, col, "unsupported YAML node")

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._problem(key_node, "a mapping key must be a plain string")
                continue
            if key_node.tag == _MERGE:
                self._problem(key_node, "merge keys (<<) are not supported; write the keys out")
                continue
            # Keys are kept as written: `no:` or `on:` stay the strings a person
            # typed instead of YAML 1.1's booleans.
            key = str(key_node.value)
            if key in result:
                first = self._doc.keys.get((*path, key))
                where = f" (first at line {first[0]})" if first else ""
                self._problem(key_node, f"duplicate key '{key}'{where}")
                continue
            self._doc.keys.setdefault((*path, key), _pos(key_node.start_mark))
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result

    def _scalar(self, node: ScalarNode) -> Any:
        tag = node.tag
        # Timestamps stay text so the model parses them with its own rules (and
        # its own messages) whichever way they were quoted.
        if tag in (_STR, _TIMESTAMP):
            return node.value
        if tag == _NULL:
            return None
        try:
            if tag == _BOOL:
                return self._loader.construct_yaml_bool(node)
            if tag == _INT:
                return self._loader.construct_yaml_int(node)
            if tag == _FLOAT:
                return self._loader.construct_yaml_float(node)
        except ValueError:
            # Python refuses to convert integers of thousands of digits.
            self._problem(node, "number is too large")
            return None
        self._problem(node, f"unsupported YAML tag {tag}")
        return None
