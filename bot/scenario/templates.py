"""Stage text templates: parsing into literal text and placeholders.

Templates are deliberately not ``str.format``: a placeholder is a name from a
short fixed list, never an attribute access, index or format spec. Parsing is
pure; :mod:`bot.scenario.render` substitutes and :mod:`bot.scenario.semantics`
checks that each placeholder means something in every city.

Syntax: ``{city}``, ``{<place>}``, ``{<place>.geo}``, ``{<place>.map}``,
``{time:<offset>}``; ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from bot.scenario.durations import parse_offset

Kind = Literal["city", "place", "geo", "map", "time"]


@dataclass(frozen=True)
class Placeholder:
    """One ``{...}`` in a template."""

    kind: Kind
    name: str
    """The text between the braces, e.g. ``square.map``."""
    place: str | None = None
    offset: timedelta | None = None


Part = str | Placeholder


@dataclass(frozen=True)
class ParsedTemplate:
    parts: tuple[Part, ...]
    errors: tuple[str, ...]
    """Syntax errors; messages never quote the template's text."""

    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(p for p in self.parts if isinstance(p, Placeholder))


_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")
_PLACE_RE = re.compile(r"([a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)(?:\.(geo|map))?")
# A name we may repeat in an error. Anything else between braces could be
# prose that was meant to stay secret, so it is not echoed.
_ECHOABLE_RE = re.compile(r"[A-Za-z0-9_.:+-]{1,40}")


def describe(name: str) -> str:
    """``{name}`` for an error message, or ``{…}`` if the name might be secret prose."""
    return "{" + (name if _ECHOABLE_RE.fullmatch(name) else "…") + "}"


def parse_template(template: str) -> ParsedTemplate:
    parts: list[Part] = []
    errors: list[str] = []
    literal: list[str] = []
    position = 0

    def flush() -> None:
        text = "".join(literal)
        if text:
            parts.append(text)
        literal.clear()

    for match in _TOKEN_RE.finditer(template):
        literal.append(template[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif token == "{":
            errors.append("unmatched '{' (write '{{' for a literal brace)")
        elif token == "}":
            errors.append("unmatched '}' (write '}}' for a literal brace)")
        else:
            placeholder, error = _placeholder(match.group(1))
            if error:
                errors.append(error)
            elif placeholder is not None:
                flush()
                parts.append(placeholder)
    literal.append(template[position:])
    flush()
    return ParsedTemplate(tuple(parts), tuple(errors))


def _placeholder(name: str) -> tuple[Placeholder | None, str | None]:
    if name == "city":
        return Placeholder("city", name), None
    if name.startswith("time:"):
        try:
            offset = parse_offset(name[len("time:") :])
        except ValueError as exc:
            return None, f"bad offset in {describe(name)}: {exc}"
        return Placeholder("time", name, offset=offset), None
    match = _PLACE_RE.fullmatch(name)
    if match is None:
        return None, (
            f"unknown placeholder {describe(name)} (expected {{city}}, {{time:OFFSET}}, "
            "{PLACE}, {PLACE.geo} or {PLACE.map})"
        )
    kind: Kind = "place" if match.group(2) is None else match.group(2)  # type: ignore[assignment]
    return Placeholder(kind, name, place=match.group(1)), None
