"""Check-ins shared across a crew, as tokens, so a gate counts each person once. Pure.

Each member publishes, in the control room, the :func:`~bot.crew.gate.checkin_token`
values of the check-ins it took for a (run, city, stage): an ``m.notice``
carrying ``org.blossom.checkins`` (run, city, stage, tokens). The member
deciding a gate counts the union of its own tokens and those published by the
other members (:func:`shared_count`), so a person who checked in through two
members counts once and participants' ids never appear in the control room.

Bounded: at most :data:`MAX_TOKENS` tokens per event (a Matrix event is at most
64 KiB); a member with more publishes several events. Malformed content, or
content from outside the crew, is ignored and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.crew.gate import checkin_token, count_checkins

CHECKINS_KEY = "org.blossom.checkins"
"""Content key of a member's published check-in tokens."""

MAX_TOKENS = 400
"""Tokens per event: 400 x 64 hex digits is about 27 KB, well under 64 KiB."""

_MAX_ID = 255
_TOKEN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CheckinShare:
    """Tokens one member published for one (run, city, stage)."""

    run: str
    city: str
    stage: str
    tokens: frozenset[str]
    member: str = ""


def share_contents(
    run: str, city: str, stage: str, user_ids: Iterable[str]
) -> list[dict[str, Any]]:
    """The values under :data:`CHECKINS_KEY` for these check-ins, at most
    :data:`MAX_TOKENS` tokens each (none for no check-ins)."""
    tokens = sorted({checkin_token(run, u) for u in user_ids})
    return [
        {"run": run, "city": city, "stage": stage, "tokens": tokens[i : i + MAX_TOKENS]}
        for i in range(0, len(tokens), MAX_TOKENS)
    ]


def parse_checkin_share(event: object, *, members: Collection[str]) -> CheckinShare | None:
    """A crew member's published check-in tokens from a control-room event, or
    ``None``. Never raises: anything malformed or from outside the crew is ignored."""
    if not isinstance(event, Mapping) or event.get("sender") not in members:
        return None
    if "state_key" in event or event.get("type") != "m.room.message":
        return None
    content = event.get("content")
    body = content.get(CHECKINS_KEY) if isinstance(content, Mapping) else None
    if not isinstance(body, Mapping):
        return None
    run, city, stage, tokens = (body.get(k) for k in ("run", "city", "stage", "tokens"))
    if not all(isinstance(v, str) and 0 < len(v) <= _MAX_ID for v in (run, city, stage)):
        return None
    if not isinstance(tokens, list) or len(tokens) > MAX_TOKENS:
        return None
    if not all(isinstance(t, str) and _TOKEN.fullmatch(t) for t in tokens):
        return None
    return CheckinShare(str(run), str(city), str(stage), frozenset(tokens), str(event["sender"]))


def shared_count(
    *,
    run: str,
    city: str,
    stage: str,
    own: Iterable[str],
    shares: Iterable[CheckinShare],
    me: str,
    crew: Collection[str],
) -> int:
    """The check-ins of (run, city, stage) counted once per person: this
    member's own (user ids) united with the tokens the other members published.
    Crew members never count, whoever's set names them."""
    mine = {checkin_token(run, u) for u in own}
    theirs = [
        s.tokens
        for s in shares
        if (s.run, s.city, s.stage) == (run, city, stage) and s.member != me
    ]
    return count_checkins([mine, *theirs], crew={checkin_token(run, m) for m in crew})
