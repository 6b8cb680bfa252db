"""Parse control-room commands. Pure: text in, a command or a usage error out.

Commands are ``!name arg arg ... [free text]``. Arguments are split on white
space; the last argument of some commands takes the rest of the line. Ids are
checked against the slug pattern here, so nothing odd (zero-width, RTL
override, homoglyphs outside ASCII) reaches a handler or a database query.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
MAX_COMMAND_CHARS = 2000


@dataclass(frozen=True)
class ArgSpec:
    name: str
    # slug | duration | number | text (rest of line) | word | city (an id in any
    # case, matched against the scenario by the handler) | which (drill or live)
    kind: str = "slug"
    optional: bool = False


@dataclass(frozen=True)
class CommandSpec:
    name: str
    args: tuple[ArgSpec, ...]
    summary: str
    example: str
    participant: bool = False  # usable outside control rooms
    audit_ids: bool = True  # False: the audit row keeps only the command name
    confirmable: bool = False  # a trailing ``confirm`` word confirms it (bot.control.confirm)

    def usage(self) -> str:
        parts = [f"!{self.name}"]
        for a in self.args:
            label = f"<{a.name}>" if not a.optional else f"[{a.name}]"
            parts.append(label)
        return " ".join(parts)


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, str] = field(default_factory=dict)
    raw: str = ""
    confirmed: bool = False  # typed with a trailing ``confirm``


@dataclass(frozen=True)
class UsageError:
    name: str | None
    message: str


DURATION = re.compile(r"^[+-]?(?:\d+[dhms])+$")


def _valid(kind: str, value: str) -> bool:
    if kind == "slug":
        return bool(SLUG.match(value))
    if kind == "duration":
        return bool(DURATION.match(value))
    if kind == "number":
        return value.isascii() and value.isdigit() and 0 < int(value) <= 1_000_000
    if kind == "city":
        # Any case; only the id's characters (a city id is a slug).
        return value.isascii() and bool(SLUG.match(value.lower()))
    if kind == "which":
        return value.lower() in ("drill", "live")
    if kind == "word":
        return value.isprintable() and len(value) <= 200
    return True


def _suspicious(text: str) -> bool:
    # Format characters (zero-width, bidi overrides) make a command read
    # differently from what it does; refuse rather than guess.
    return any(unicodedata.category(ch) == "Cf" for ch in text)


def parse(text: str, specs: dict[str, CommandSpec]) -> Command | UsageError | None:
    """None when the text is not a command at all (does not start with ``!``)."""
    stripped = text.strip()
    if not stripped.startswith("!"):
        return None
    if len(stripped) > MAX_COMMAND_CHARS:
        return UsageError(None, f"command too long (over {MAX_COMMAND_CHARS} characters)")
    head, _, rest = stripped[1:].partition(" ")
    name = head.strip().lower()
    if name not in specs:
        if not name.isascii() or not name.isalnum():
            return UsageError(None, "unknown command; !help lists them")
        return UsageError(None, f"unknown command !{name}; !help lists them")
    spec = specs[name]
    if _suspicious(stripped):
        return UsageError(name, "the command contains invisible formatting characters")
    words = rest.split()
    confirmed = spec.confirmable and bool(words) and words[-1].lower() == "confirm"
    if confirmed:
        words = words[:-1]
    args: dict[str, str] = {}
    i = 0
    for n, arg in enumerate(spec.args):
        if arg.kind == "text":
            value = " ".join(words[i:])
            if value:
                args[arg.name] = value
            elif not arg.optional:
                return UsageError(name, f"missing {arg.name}. Usage: {spec.usage()}")
            i = len(words)
            break
        if i >= len(words):
            if arg.optional:
                continue
            return UsageError(name, f"missing {arg.name}. Usage: {spec.usage()}")
        value = words[i]
        if not _valid(arg.kind, value):
            # An optional argument that does not fit may be the next one's value
            # (e.g. `!abort demo Go home now` has no city).
            later = spec.args[n + 1 :]
            if arg.optional and later:
                continue
            return UsageError(name, f"{arg.name} is not a valid {arg.kind}. Usage: {spec.usage()}")
        args[arg.name] = value
        i += 1
    if i < len(words):
        return UsageError(name, f"too many arguments. Usage: {spec.usage()}")
    return Command(name, args, stripped, confirmed)
