"""Typed command arguments: each type checks a typed word and converts it.

A type's ``convert`` takes the word as typed and returns the value a handler
gets, or raises :class:`BadValue` with a message that never quotes the word
(it may be content, or a trick). The grammars are the scenario layer's: one
slug pattern, one duration grammar, one geo parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from pydantic import TypeAdapter, ValidationError

from bot.scenario.durations import OFFSET_HINT, parse_offset
from bot.scenario.fields import SLUG_PATTERN, Geo

SLUG = re.compile(SLUG_PATTERN)
MAX_NUMBER = 1_000_000
_GEO = TypeAdapter(Geo)


class BadValue(ValueError):
    """A typed word does not fit its argument; the message quotes nothing typed."""


@dataclass(frozen=True)
class ArgType:
    kind: str  # slug | city | which | duration | number | text | place
    convert: Callable[[str], object]
    audit: bool = False  # its value is an id, kept in the audit row
    rest: bool = False  # takes the rest of the line


def _slug(word: str) -> str:
    if not SLUG.match(word):
        raise BadValue("must be an id (lowercase letters, digits and inner hyphens)")
    return word


def _city(word: str) -> str:
    # A city id in any case (`North` is `north`), or a pod of it (`hk/mongkok`);
    # which city or pod it is, the handler decides against the armed scenario
    # (bot.control.targets).
    lowered = word.lower()
    city, slash, pod = lowered.partition("/")
    if not (word.isascii() and SLUG.match(city) and (not slash or SLUG.match(pod))):
        raise BadValue("must be a city id")
    return lowered


def _which(word: str) -> str:
    lowered = word.lower()
    if lowered not in ("drill", "live"):
        raise BadValue("must be drill or live")
    return lowered


def _duration(word: str) -> timedelta:
    # The scenario files' offset grammar (units in order, each once: no `30m1h`).
    try:
        return parse_offset(word)
    except ValueError:
        raise BadValue(f"must be {OFFSET_HINT}") from None


def _number(word: str) -> int:
    if not (word.isascii() and word.isdigit() and 0 < int(word) <= MAX_NUMBER):
        raise BadValue(f"must be a whole number from 1 to {MAX_NUMBER}")
    return int(word)


def _text(words: str) -> str:
    return words


def parse_geo(word: str) -> tuple[float, float]:
    """``lat,lon`` as scenario files write it (the scenario layer's parser)."""
    try:
        lat, lon = _GEO.validate_python(word)
    except ValidationError as err:
        # The scenario layer's message never quotes the value either.
        raise BadValue(err.errors()[0]["msg"]) from None
    return (lat, lon)


def _looks_geo(word: str) -> bool:
    parts = word.split(",")
    if len(parts) != 2:
        return False
    try:
        float(parts[0]), float(parts[1])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class NewPlace:
    name: str
    geo: tuple[float, float] | None


def _place(words: str) -> NewPlace:
    """``<name> [lat,lon]``: a place's new name, and its position if the last word
    is one."""
    parts = words.split()
    geo = None
    if parts and _looks_geo(parts[-1]):
        geo = parse_geo(parts[-1])
        parts = parts[:-1]
    name = " ".join(parts)
    if not name or len(name) > 200:
        raise BadValue(
            "must be the new place's name (up to 200 characters), then optionally lat,lon"
        )
    return NewPlace(name, geo)


SLUG_ARG = ArgType("slug", _slug, audit=True)
CITY_ARG = ArgType("city", _city)  # audited once the command succeeded (it was a city)
WHICH_ARG = ArgType("which", _which, audit=True)
DURATION_ARG = ArgType("duration", _duration, audit=True)
NUMBER_ARG = ArgType("number", _number, audit=True)
TEXT_ARG = ArgType("text", _text, rest=True)
PLACE_ARG = ArgType("place", _place, rest=True)


@dataclass(frozen=True)
class Arg:
    name: str
    type: ArgType
    optional: bool = False
    shown: str | None = None  # how usage lines show it, if not by its name

    @property
    def kind(self) -> str:
        return self.type.kind

    def label(self) -> str:
        shown = self.shown or self.name
        return f"[{shown}]" if self.optional else f"<{shown}>"


# The arguments commands share.
SCENARIO = Arg("scenario", SLUG_ARG)
RUN = Arg("run", WHICH_ARG, optional=True, shown="drill|live")
CITY = Arg("city", CITY_ARG, optional=True)
