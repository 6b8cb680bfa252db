"""Offsets and durations as scenario files write them: ``-2d``, ``-45m``, ``0m``, ``+1h30m``.

Pure parsing and formatting; no dates involved. An offset is an exact elapsed
duration (``-1d`` is 24 hours), never "the same wall-clock time a day earlier".
"""

from __future__ import annotations

import re
from datetime import timedelta

# Units must come in this order and each at most once, so a value has exactly
# one spelling per duration and typos like ``30m1h`` are rejected. Digit counts
# are bounded so a hostile file cannot make us build enormous integers.
_OFFSET_RE = re.compile(
    r"(?P<sign>[+-])?"
    r"(?:(?P<d>\d{1,4})d)?"
    r"(?:(?P<h>\d{1,5})h)?"
    r"(?:(?P<m>\d{1,6})m)?"
    r"(?:(?P<s>\d{1,8})s)?"
)

# A flash mob is planned days or weeks ahead; a year either way is plenty and
# keeps every computed instant far from datetime's limits.
MAX_OFFSET = timedelta(days=366)

OFFSET_PATTERN = r"^[+-]?(?=\d)(\d+d)?(\d+h)?(\d+m)?(\d+s)?$"
"""The same syntax as a JSON Schema pattern (for editors)."""

DURATION_PATTERN = r"^\+?(?=\d)(\d+d)?(\d+h)?(\d+m)?(\d+s)?$"

OFFSET_HINT = "an offset like -2d, -45m, 0m, +1h30m or +90s"
DURATION_HINT = "a duration like 10m, 1h30m or 90s"


def parse_offset(text: str) -> timedelta:
    """Parse a signed offset. Raises ``ValueError`` with a user-facing message."""
    match = _OFFSET_RE.fullmatch(text)
    if match is None or not any(match.group(u) for u in "dhms"):
        raise ValueError(f"expected {OFFSET_HINT}")
    delta = timedelta(
        days=int(match.group("d") or 0),
        hours=int(match.group("h") or 0),
        minutes=int(match.group("m") or 0),
        seconds=int(match.group("s") or 0),
    )
    if delta > MAX_OFFSET:
        raise ValueError("offset is longer than 366 days")
    return -delta if match.group("sign") == "-" else delta


def parse_duration(text: str) -> timedelta:
    """Parse a positive duration (``10m``; a leading ``+`` is allowed, ``-`` is not)."""
    if text.startswith("-"):
        raise ValueError(f"expected {DURATION_HINT} (not negative)")
    try:
        delta = parse_offset(text)
    except ValueError:
        raise ValueError(f"expected {DURATION_HINT}") from None
    if delta <= timedelta(0):
        raise ValueError("duration must be longer than zero")
    return delta


def format_offset(delta: timedelta) -> str:
    """The canonical spelling of ``delta``: ``+1h30m``, ``-2d``, ``0m``."""
    if delta == timedelta(0):
        return "0m"
    sign = "-" if delta < timedelta(0) else "+"
    total = int(abs(delta).total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    return sign + "".join(f"{n}{unit}" for n, unit in parts if n)


def format_until(delta: timedelta) -> str:
    """A compact "time until" for people: ``in 2d 3h``, ``in 45m``, ``now``, ``past``."""
    if delta < timedelta(0):
        return "past"
    total = int(delta.total_seconds())
    if total == 0:
        return "now"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        parts = [(days, "d"), (hours, "h")]
    elif hours:
        parts = [(hours, "h"), (minutes, "m")]
    elif minutes:
        parts = [(minutes, "m"), (seconds, "s")]
    else:
        parts = [(seconds, "s")]
    return "in " + " ".join(f"{n}{unit}" for n, unit in parts if n)
