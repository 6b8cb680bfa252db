"""``!arm``'s options, parsed: pure.

``!arm <id> [at <instant>] [resend]``, in either order (a trailing ``confirm``
is the control layer's confirmation flow, bot/control/confirm.py):

- ``at <instant>``: run the scenario with a new T0 (the file is not edited).
  An ISO 8601 instant with its offset (``2026-12-08T19:00+01:00``, ``…Z``), or
  a local date and time followed by a city of the scenario, read in that
  city's time zone (``at 2026-12-08 19:00 lisbon``).
- ``resend``: past stages an earlier run of the scenario already sent are sent
  again (under their late policy). Without it they are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bot.runs.model import ArmError

FLAGS = ("resend",)
_EXAMPLE = "e.g. at 2026-12-08T19:00+01:00, or at 2026-12-08 19:00 <city>"


@dataclass(frozen=True)
class ArmOptions:
    start_at: datetime | None = None
    resend: bool = False


def parse_instant(words: list[str], zones: Mapping[str, str], now: datetime) -> datetime:
    """An instant from ``at``'s words; ArmError with the accepted forms otherwise."""
    city = words[-1] if len(words) > 1 and words[-1] in zones else None
    text = "T".join(words[:-1] if city else words)
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ArmError(f"cannot read the instant {' '.join(words)!r} ({_EXAMPLE})") from None
    if city is not None:
        if instant.tzinfo is not None:
            raise ArmError("give either an offset or a city, not both")
        zone = ZoneInfo(zones[city])
        instant = instant.replace(tzinfo=zone)
        back = instant.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        if back != instant.replace(tzinfo=None):
            raise ArmError(
                f"{text} does not exist in {zones[city]} (the clocks change then); "
                "nothing was armed"
            )
    elif instant.tzinfo is None:
        raise ArmError(f"give the instant's offset or a city ({_EXAMPLE})")
    if instant <= now:
        raise ArmError(
            f"{instant.astimezone(UTC):%Y-%m-%d %H:%M:%SZ} is in the past "
            f"(now {now.astimezone(UTC):%Y-%m-%d %H:%M:%SZ}); nothing was armed"
        )
    return instant.astimezone(UTC)


def parse_arm_options(text: str, zones: Mapping[str, str], now: datetime) -> ArmOptions:
    """``zones`` maps the scenario's city ids to their time zones."""
    words = text.split()
    flags = {w for w in words if w in FLAGS}
    rest = [w for w in words if w not in FLAGS]
    start_at = None
    if rest:
        if rest[0] != "at" or len(rest) == 1 or len(rest) > 4:
            raise ArmError(
                f"!arm takes: at <instant>, resend ({_EXAMPLE}); nothing was armed"
            )
        start_at = parse_instant(rest[1:], zones, now)
    return ArmOptions(start_at, "resend" in flags)
