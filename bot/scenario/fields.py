"""Field types of the scenario format: parsing of one value each, with messages a person can act on.

Each type is an ``Annotated`` pydantic type: a validator that turns the YAML value
into the model's value (or fails with a ``blossom`` error whose message is ours,
not pydantic's), plus the JSON Schema an editor should see for it.

No message here quotes a stage's text or a place's name, geo or note: those are
secret until their release, and errors end up in terminals and logs.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated, Any

from pydantic import AfterValidator, Discriminator, PlainValidator, Tag, WithJsonSchema
from pydantic_core import PydanticCustomError

from bot.i18n.tags import LanguageError, parse_language
from bot.scenario.durations import (
    DURATION_PATTERN,
    OFFSET_HINT,
    OFFSET_PATTERN,
    parse_duration,
    parse_offset,
)

ERROR_TYPE = "blossom"
"""The pydantic error type of every failure raised here; ``ctx['detail']`` is the message."""


def fail(message: str) -> PydanticCustomError:
    """A validation error carrying ``message`` verbatim.

    The message travels in the context rather than as the template, because the
    template is ``str.format``-ed by pydantic and messages may contain braces.
    """
    return PydanticCustomError(ERROR_TYPE, "{detail}", {"detail": message})


# --- identifiers -----------------------------------------------------------

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_SLUG_RE = re.compile(SLUG_PATTERN)


def _check_slug(value: str) -> str:
    if not _SLUG_RE.match(value):
        raise fail(
            "expected a slug: lowercase letters, digits and inner hyphens, at most 64 characters"
        )
    return value


Slug = Annotated[
    str,
    AfterValidator(_check_slug),
    WithJsonSchema({"type": "string", "pattern": SLUG_PATTERN}),
]

# ``{city}`` and ``{time:...}`` are template placeholders of their own, so a
# place cannot take those names.
RESERVED_PLACE_IDS = frozenset({"city", "time"})


def _check_place_id(value: str) -> str:
    _check_slug(value)
    if value in RESERVED_PLACE_IDS:
        raise fail(f"'{value}' is reserved and cannot be a place id")
    return value


PlaceId = Annotated[
    str,
    AfterValidator(_check_place_id),
    WithJsonSchema({"type": "string", "pattern": SLUG_PATTERN}),
]


def _check_nonblank(value: str) -> str:
    if not value.strip():
        raise fail("must not be empty")
    return value


NonBlank = Annotated[
    str, AfterValidator(_check_nonblank), WithJsonSchema({"type": "string", "minLength": 1})
]

# --- Matrix rooms ----------------------------------------------------------

# A room id (``!opaque:server``) or alias (``#name:server``). The server name is
# a DNS name, IPv4 or bracketed IPv6 address with an optional port (Matrix spec,
# "Server names").
# Room version 12 (Synapse's default) room ids carry no server name: they are
# ``!`` and the create event's hash, unpadded URL-safe base64 (MSC4291).
SERVER_NAME_PATTERN = (
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?"
)
ROOM_PATTERN = r"^(?:![A-Za-z0-9_-]{20,}|[!#][^\s:]+:" + SERVER_NAME_PATTERN + r")$"
_ROOM_RE = re.compile(ROOM_PATTERN)
_MAX_ROOM_BYTES = 255  # the spec's limit on identifiers (room ids, aliases, user ids)


def _check_room(value: str) -> str:
    if not _ROOM_RE.match(value) or len(value.encode()) > _MAX_ROOM_BYTES:
        raise fail(
            f"'{value}' is not a room id or alias "
            "(expected !id, !localpart:server or #alias:server)"
        )
    return value


RoomId = Annotated[
    str, AfterValidator(_check_room), WithJsonSchema({"type": "string", "pattern": ROOM_PATTERN})
]

# --- Matrix users ------------------------------------------------------------

# ``@localpart:server``. The localpart is any printable ASCII but ``:`` (the
# spec's historical grammar, which clients must still accept; new accounts use
# a-z 0-9 ._=-/+), at most 255 bytes in all.
USER_ID_PATTERN = r"^@[!-9;-~]+:" + SERVER_NAME_PATTERN + r"$"
_USER_ID_RE = re.compile(USER_ID_PATTERN)


def is_user_id(value: object) -> bool:
    """Whether ``value`` is a well-formed Matrix user id (``@name:server``)."""
    return (
        isinstance(value, str)
        and _USER_ID_RE.match(value) is not None
        and len(value.encode()) <= _MAX_ROOM_BYTES
    )


def _check_user_id(value: str) -> str:
    if not is_user_id(value):
        raise fail(f"'{value}' is not a Matrix user id (expected @name:server)")
    return value


UserId = Annotated[
    str,
    AfterValidator(_check_user_id),
    WithJsonSchema({"type": "string", "pattern": USER_ID_PATTERN}),
]
"""A Matrix user id, such as a crew member's ``@blossom:south.example``."""

# --- time zones --------------------------------------------------------------

# Names that exist on some systems but do not name a fixed zone everywhere.
_NOT_PORTABLE = frozenset({"localtime", "posixrules"})


@cache
def _zone_names() -> frozenset[str]:
    # Checked against the list rather than by opening the zone: ZoneInfo is
    # case-insensitive on some file systems and accepts directory-like keys.
    return frozenset(zoneinfo.available_timezones()) - _NOT_PORTABLE


def _check_timezone(value: str) -> str:
    if value not in _zone_names():
        raise fail(f"unknown time zone '{value}' (expected an IANA name like Europe/Berlin)")
    return value


TimeZoneName = Annotated[
    str,
    AfterValidator(_check_timezone),
    WithJsonSchema({"type": "string", "examples": ["Europe/Berlin", "America/New_York"]}),
]

# --- languages ----------------------------------------------------------------

# What editors see; Babel decides what is accepted (a well-formed tag it has no
# locale data for is still refused).
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-(?:[A-Za-z]{2}|[0-9]{3}))?(-[A-Za-z0-9]{4,8})*$"


def _parse_language(value: object) -> str:
    if isinstance(value, bool):
        # `language: no` (Norwegian) is YAML 1.1's false.
        raise fail(
            "expected a language tag; put it in quotes (YAML reads no, yes, on, off as true/false)"
        )
    if not isinstance(value, str):
        raise fail("expected a BCP 47 language tag such as de, pt-BR or zh-Hant")
    try:
        parse_language(value)
    except LanguageError as exc:
        raise fail(str(exc)) from None
    return value


LanguageTag = Annotated[
    str,
    PlainValidator(_parse_language),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": LANGUAGE_PATTERN,
            "examples": ["de", "fa", "zh-Hant", "pt-BR"],
        }
    ),
]
"""A BCP 47 language tag Babel knows, kept as written (``zh-Hant``, ``fa``)."""

# --- instants and local times --------------------------------------------------

_INSTANT_HINT = "an ISO 8601 instant with an offset or Z, like 2026-12-05T17:00:00Z"


def _parse_iso(value: object, hint: str) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise fail(f"expected {hint}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"expected {hint}") from None


def _parse_instant(value: object) -> datetime:
    moment = _parse_iso(value, _INSTANT_HINT)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise fail(f"missing UTC offset: expected {_INSTANT_HINT}")
    return moment


Instant = Annotated[
    datetime,
    PlainValidator(_parse_instant),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""An aware instant; YAML writes it as ISO 8601 with ``Z`` or an offset."""

_LOCAL_HINT = "a local wall-clock time like 2026-12-05T12:00 (no offset)"


def _parse_local(value: object) -> datetime:
    moment = _parse_iso(value, _LOCAL_HINT)
    if moment.tzinfo is not None:
        raise fail(
            "a city start is a local wall-clock time read in the city's time zone; "
            "remove the offset"
        )
    return moment


LocalTime = Annotated[
    datetime,
    PlainValidator(_parse_local),
    WithJsonSchema({"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?$"}),
]
"""A naive wall-clock time, read in the city's own time zone."""


def _parse_at(value: object) -> timedelta | datetime:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, datetime):
        return _parse_instant(value)
    if not isinstance(value, str):
        raise fail(f"expected {OFFSET_HINT}, or {_INSTANT_HINT}")
    if value[:1] in "+-" or value[-1:] in "dhms":
        try:
            return parse_offset(value)
        except ValueError as exc:
            raise fail(str(exc)) from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"expected {OFFSET_HINT}, or {_INSTANT_HINT}") from None
    return _parse_instant(moment)


At = Annotated[
    timedelta | datetime,
    PlainValidator(_parse_at),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": OFFSET_PATTERN},
                {"type": "string", "format": "date-time"},
            ]
        }
    ),
]
"""When a stage goes out: an offset from the city's T0, or an absolute instant."""


def _parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise fail("duration must be longer than zero")
        return value
    if not isinstance(value, str):
        raise fail("expected a duration like 10m, 1h30m or 90s")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise fail(str(exc)) from None


Duration = Annotated[
    timedelta,
    PlainValidator(_parse_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]

# --- geo -----------------------------------------------------------------------


def _parse_geo(value: object) -> tuple[float, float]:
    # Deliberately never echoes the value: a place's position is secret.
    if isinstance(value, str):
        parts: list[Any] = value.split(",")
        if len(parts) != 2:
            raise fail("expected 'lat,lon' (two numbers separated by a comma)")
        try:
            numbers = [float(p.strip()) for p in parts]
        except ValueError:
            raise fail("expected 'lat,lon' (two numbers separated by a comma)") from None
    elif isinstance(value, list | tuple):
        if len(value) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise fail("expected 'lat,lon' or a list of two numbers [lat, lon]")
        numbers = [float(v) for v in value]
    else:
        raise fail("expected 'lat,lon' or a list of two numbers [lat, lon]")
    lat, lon = numbers
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise fail("latitude out of range (-90 to 90)")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise fail("longitude out of range (-180 to 180)")
    return (lat, lon)


Geo = Annotated[
    tuple[float, float],
    PlainValidator(_parse_geo),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*-?\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?\s*$"},
                {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 2,
                    "maxItems": 2,
                },
            ]
        }
    ),
]

# --- stage text ------------------------------------------------------------------


def _text_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<string>"
    if isinstance(value, dict):
        return "<mapping>"
    return None


# The tags are not slugs, so they can never be confused with a city id when an
# error's location is mapped back onto the YAML file.
Text = Annotated[
    Annotated[str, AfterValidator(_check_nonblank), Tag("<string>")]
    | Annotated[dict[str, NonBlank], Tag("<mapping>")],
    Discriminator(
        _text_kind,
        custom_error_type=ERROR_TYPE,
        custom_error_message=(
            "expected a string, or a mapping from city id (or 'default') to string"
        ),
    ),
]
"""A template, or a mapping from city id (or ``default``) to template."""
