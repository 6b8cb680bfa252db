"""Commands declared once: name, help line, typed arguments, who may use it and
the handler sit together, on the handler.

    class Steering:
        @command("hold", "Hold a city (or all): no stage goes there until !resume.",
                 example="!hold demo london", args=(SCENARIO, RUN, CITY))
        async def hold(self, ctx: Context, args: Args) -> Reply: ...

(the shape of maubot's ``@command.new`` with ``@command.argument``, and of
Draupnir's ``describeCommand``). A handler gets a small :class:`Context` and the
converted arguments, and returns a :class:`Reply`; the wording of replies lives
in :mod:`bot.text`. :func:`commands_of` reads the declarations of a class (for
``!help``, the docs test, the parser); :func:`bind` pairs them with an
instance's handlers. Declarations are constants; nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import TypeVar

from bot.control.args import Arg, NewPlace


class Who(Enum):
    CORE = "core"  # the core group, in a control room
    PARTICIPANT = "participant"  # anyone, in a city room, a direct chat or a drill room


@dataclass(frozen=True)
class CommandDef:
    name: str
    summary: str
    example: str
    args: tuple[Arg, ...] = ()
    who: Who = Who.CORE
    audit_ids: bool = True  # False: the audit row keeps only the command name
    confirmable: bool = False  # a trailing ``confirm`` confirms it (bot.control.confirm)
    releases: bool = False  # it releases stages: read late, it waits for confirmation

    @property
    def participant(self) -> bool:
        return self.who is Who.PARTICIPANT

    def usage(self) -> str:
        return " ".join([f"!{self.name}", *(a.label() for a in self.args)])

    def help_line(self) -> str:
        return f"{self.usage()} — {self.summary} e.g. {self.example}"


class Args:
    """A command's converted arguments, by name, with typed accessors; and the
    words as typed (checked ids), for replies that say how to type it again."""

    def __init__(
        self,
        spec: CommandDef,
        values: Mapping[str, object],
        words: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self._values = dict(values)
        self.words = dict(words or {})

    def retype(self, *inserted: str) -> str:
        """The command again, ``inserted`` after the scenario (``!hold walk drill
        north``); free text is shown as "…", ``drill|live`` as typed is left out."""
        out = [f"!{self.spec.name}"]
        for a in self.spec.args:
            word = self.words.get(a.name)
            if a.name == "run":
                continue
            if word is not None:
                out.append("…" if a.type.rest else word.lower())
            if a.name == "scenario":
                out.extend(inserted)
        return " ".join(out)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def text(self, name: str) -> str:
        value = self._values[name]
        assert isinstance(value, str)
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._values.get(name)
        assert value is None or isinstance(value, str)
        return value

    def opt_int(self, name: str) -> int | None:
        value = self._values.get(name)
        assert value is None or isinstance(value, int)
        return value

    def duration(self, name: str) -> timedelta:
        value = self._values[name]
        assert isinstance(value, timedelta)
        return value

    def place(self, name: str) -> NewPlace:
        value = self._values[name]
        assert isinstance(value, NewPlace)
        return value


@dataclass(frozen=True)
class Context:
    """What a handler knows about the message it answers."""

    room_id: str
    sender: str
    event_id: str
    sent_at: datetime | None = None  # origin_server_ts, when known
    confirmed: bool = False  # typed with ``confirm`` after the bot asked


@dataclass(frozen=True)
class Reply:
    """What a handler answers; the caller sends it (as a reply to the command)."""

    text: str
    table: str | None = None
    result: str = "ok"
    ask: bool = False  # the reply is a question: remember it for ``confirm``


Handler = Callable[[Context, Args], Awaitable[Reply | None]]
F = TypeVar("F", bound=Callable[..., Awaitable[Reply | None]])
_MARK = "__blossom_command__"


def command(
    name: str,
    summary: str,
    *,
    example: str,
    args: Iterable[Arg] = (),
    who: Who = Who.CORE,
    audit_ids: bool = True,
    confirmable: bool = False,
    releases: bool = False,
) -> Callable[[F], F]:
    """Declare the decorated method as the handler of ``!name``."""
    declared = CommandDef(
        name,
        summary,
        example,
        tuple(args),
        who,
        audit_ids,
        confirmable or releases,
        releases,
    )

    def mark(fn: F) -> F:
        setattr(fn, _MARK, declared)
        return fn

    return mark


def commands_of(*classes: type) -> dict[str, CommandDef]:
    """The commands the classes declare, in declaration order."""
    found: dict[str, CommandDef] = {}
    for cls in classes:
        for attr in vars(cls).values():
            declared = getattr(attr, _MARK, None)
            if isinstance(declared, CommandDef):
                if declared.name in found:
                    raise ValueError(f"!{declared.name} is declared twice")
                found[declared.name] = declared
    return found


@dataclass
class Table:
    """Declarations paired with an instance's handlers, for one audience: a
    table serves either the control room (``Who.CORE``) or participants."""

    who: Who = Who.CORE
    defs: dict[str, CommandDef] = field(default_factory=dict)
    handlers: dict[str, Handler] = field(default_factory=dict)

    def add(self, group: object) -> None:
        for name, declared in commands_of(type(group)).items():
            if name in self.defs:
                raise ValueError(f"!{name} is declared twice")
            if declared.who is not self.who:
                raise ValueError(f"!{name} is for {declared.who.value}, not {self.who.value}")
            self.defs[name] = declared
            attr = next(
                a for a in vars(type(group)).values() if getattr(a, _MARK, None) is declared
            )
            self.handlers[name] = attr.__get__(group)

    def help(self, heading: str) -> str:
        return "\n".join([heading, *(d.help_line() for d in self.defs.values())])
