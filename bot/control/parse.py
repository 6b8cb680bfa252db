"""Parse commands. Pure: text in, a command or a usage error out.

Commands are ``!name arg arg ... [free text]``. Arguments are split on white
space and each is checked and converted by its type (bot.control.args); the
last argument of some commands takes the rest of the line. Ids are checked
against the slug pattern here, so nothing odd (zero-width, RTL override,
homoglyphs outside ASCII) reaches a handler or a database query.

An optional argument whose word does not fit may be the next argument's word
(``!hold demo london``: ``london`` is no ``drill|live``, so it is the city).
A command that can be confirmed takes a trailing ``confirm``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.control.args import SLUG, Arg, BadValue
from bot.control.registry import CommandDef, Who

__all__ = ["MAX_COMMAND_CHARS", "SLUG", "Command", "CommandSpec", "UsageError", "parse"]

MAX_COMMAND_CHARS = 2000


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, str] = field(default_factory=dict)  # the words as typed, checked
    raw: str = ""
    confirmed: bool = False  # typed with a trailing ``confirm``
    # The converted values (timedelta, int, lower-cased city, ...), by argument.
    values: dict[str, object] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class UsageError:
    name: str | None
    message: str
    # What went wrong, for a reply in another language (bot.i18n.messages):
    # unknown | too_long | invisible | missing | invalid | extra; and the argument
    # it concerns (for ``unknown``: the typed name when it is plain ASCII).
    problem: str = field(default="", compare=False)
    argument: str | None = field(default=None, compare=False)


def CommandSpec(  # the old class's name, kept for its callers
    name: str,
    args: tuple[Arg, ...] = (),
    summary: str = "",
    example: str = "",
    participant: bool = False,
) -> CommandDef:
    """The declaration as it was written before the registry (positional: name,
    args, summary, example, participant), for tests that build their own small
    tables (tests/test_i18n.py). New code declares with ``registry.command``."""
    who = Who.PARTICIPANT if participant else Who.CORE
    return CommandDef(name, summary, example, args, who)


def _suspicious(text: str) -> bool:
    # Format characters (zero-width, bidi overrides) make a command read
    # differently from what it does; refuse rather than guess.
    return any(unicodedata.category(ch) == "Cf" for ch in text)


def _missing(spec: CommandDef, arg: Arg) -> UsageError:
    message = f"missing {arg.name}. Usage: {spec.usage()}"
    return UsageError(spec.name, message, "missing", arg.name)


def parse(text: str, commands: Mapping[str, CommandDef]) -> Command | UsageError | None:
    """None when the text is not a command at all (does not start with ``!``)."""
    stripped = text.strip()
    if not stripped.startswith("!"):
        return None
    if len(stripped) > MAX_COMMAND_CHARS:
        return UsageError(
            None, f"command too long (over {MAX_COMMAND_CHARS} characters)", "too_long"
        )
    head, _, rest = stripped[1:].partition(" ")
    name = head.strip().lower()
    if name not in commands:
        if not name.isascii() or not name.isalnum():
            return UsageError(None, "unknown command; !help lists them", "unknown")
        return UsageError(None, f"unknown command !{name}; !help lists them", "unknown", name)
    spec = commands[name]
    if _suspicious(stripped):
        return UsageError(name, "the command contains invisible formatting characters", "invisible")
    words = rest.split()
    confirmed = spec.confirmable and bool(words) and words[-1].lower() == "confirm"
    if confirmed:
        words = words[:-1]
    args: dict[str, str] = {}
    values: dict[str, object] = {}
    i = 0
    for n, arg in enumerate(spec.args):
        if arg.type.rest:
            word = " ".join(words[i:])
            i = len(words)
            if not word:
                if arg.optional:
                    break
                return _missing(spec, arg)
        elif i >= len(words):
            if arg.optional:
                continue
            return _missing(spec, arg)
        else:
            word = words[i]
        try:
            value = arg.type.convert(word)
        except BadValue as err:
            if arg.optional and not arg.type.rest and spec.args[n + 1 :]:
                continue  # perhaps the next argument's word
            message = f"{arg.shown or arg.name} {err}. Usage: {spec.usage()}"
            return UsageError(name, message, "invalid", arg.name)
        args[arg.name] = word
        values[arg.name] = value
        if not arg.type.rest:
            i += 1
    if i < len(words):
        return UsageError(name, f"too many arguments. Usage: {spec.usage()}", "extra")
    return Command(name, args, stripped, confirmed, values)
