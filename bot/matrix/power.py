"""Who has how much power in a room, read the way the room version defines it.

Pure functions over event content. In room version 12 (MSC4289) the room's
creators — the sender of ``m.room.create`` and its ``additional_creators`` —
have unlimited power and are absent from ``m.room.power_levels``' users, so
they must count as above any threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The power a member must have to opt a room in (invite the bot), the
# moderator level of the default power levels.
OPT_IN_POWER = 50

# Room versions whose creators have infinite power (MSC4289). Unknown future
# versions are assumed to keep the rule.
_CREATOR_POWER_VERSIONS_BEFORE = {str(v) for v in range(1, 12)}


def creators(create_event: Mapping[str, Any] | None) -> frozenset[str]:
    """The creators named by an ``m.room.create`` event (sender + additional_creators)."""
    if not create_event:
        return frozenset()
    found: set[str] = set()
    sender = create_event.get("sender")
    if isinstance(sender, str):
        found.add(sender)
    content = create_event.get("content")
    if isinstance(content, Mapping):
        extra = content.get("additional_creators")
        if isinstance(extra, list):
            found.update(u for u in extra if isinstance(u, str))
    return frozenset(found)


def creators_have_infinite_power(create_event: Mapping[str, Any] | None) -> bool:
    if not create_event:
        return False
    content = create_event.get("content")
    version = content.get("room_version", "1") if isinstance(content, Mapping) else "1"
    return str(version) not in _CREATOR_POWER_VERSIONS_BEFORE


def _int(value: Any, default: int) -> int:
    # Power levels may arrive as strings in old rooms; bools are not numbers here.
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


def user_power(
    user_id: str,
    *,
    power_levels: Mapping[str, Any] | None,
    create_event: Mapping[str, Any] | None,
) -> float:
    """The user's power level; ``math.inf`` for a v12+ creator.

    ``power_levels`` and ``create_event['content']`` are event contents as sent
    by the homeserver; malformed values fall back to the spec's defaults.
    """
    if creators_have_infinite_power(create_event) and user_id in creators(create_event):
        return math.inf
    if power_levels is None:
        # No power levels event: the creator has 100, everyone else 0 (spec).
        return 100.0 if user_id in creators(create_event) else 0.0
    users = power_levels.get("users")
    if isinstance(users, Mapping) and user_id in users:
        return float(_int(users[user_id], 0))
    return float(_int(power_levels.get("users_default"), 0))
