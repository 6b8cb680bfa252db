"""Check-ins shared across a crew, as tokens, so a gate counts each person once. Pure.

Each member publishes, in the control room, the :func:`~bot.crew.gate.checkin_token`
values of the check-ins it took for a (run, city, stage): an ``m.notice``
carrying ``org.blossom.checkins`` (run, city, stage, tokens). The member
deciding a gate counts the union of its own tokens and those published by the
other members (:func:`shared_count`), so a person who checked in through two
members counts once and participants' ids never appear in the control room.

With pods and roles each event also carries the ``pod`` and ``role`` its tokens
count for (ids, which the crew may see: the control room sees pods by id), so
gates ``per: pod`` or with a ``role`` count every member's check-ins too
(:func:`gate_share_count`). An event without them (a member running the
previous version) is read as untagged: it counts for gates of the whole city only.

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
    pod: str | None = None
    role: str | None = None
    tagged: bool = False
    """Whether the event said which pod and role (None: none) its tokens count for."""


Tag = tuple[str | None, str | None]
"""(pod id or None, role id or None) a check-in counts for."""


def share_contents(
    run: str, city: str, stage: str, user_ids: Iterable[str], *, tag: Tag | None = None
) -> list[dict[str, Any]]:
    """The values under :data:`CHECKINS_KEY` for these check-ins, at most
    :data:`MAX_TOKENS` tokens each (none for no check-ins); with ``tag``, the
    pod and role they count for."""
    tokens = sorted({checkin_token(run, u) for u in user_ids})
    extra = {} if tag is None else {"pod": tag[0], "role": tag[1]}
    return [
        {"run": run, "city": city, "stage": stage, "tokens": tokens[i : i + MAX_TOKENS], **extra}
        for i in range(0, len(tokens), MAX_TOKENS)
    ]


def tagged_share_contents(
    run: str, city: str, stage: str, checkins: Mapping[str, Tag]
) -> list[dict[str, Any]]:
    """:func:`share_contents` for check-ins (user id → pod and role), one group
    of events per (pod, role), in a stable order."""
    groups: dict[Tag, list[str]] = {}
    for user, tag in checkins.items():
        groups.setdefault(tag, []).append(user)
    return [
        body
        for tag in sorted(groups, key=lambda t: (t[0] or "", t[1] or ""))
        for body in share_contents(run, city, stage, groups[tag], tag=tag)
    ]


def _tag(body: Mapping[str, Any]) -> Tag | bool | None:
    """The body's (pod, role); False when it has neither (the previous format);
    None when malformed."""
    if "pod" not in body and "role" not in body:
        return False
    pod, role = body.get("pod", 0), body.get("role", 0)
    if not all(v is None or (isinstance(v, str) and 0 < len(v) <= _MAX_ID) for v in (pod, role)):
        return None
    return (None if pod is None else str(pod), None if role is None else str(role))


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
    tag = _tag(body)
    if tag is None:
        return None
    pod, role = tag if isinstance(tag, tuple) else (None, None)
    return CheckinShare(
        str(run), str(city), str(stage), frozenset(tokens), str(event["sender"]),
        pod, role, tagged=tag is not False,
    )


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


def gate_share_count(
    *,
    run: str,
    city: str,
    stage: str,
    own: Mapping[str, Tag],
    shares: Iterable[CheckinShare],
    me: str,
    crew: Collection[str],
    pod: str | None,
    role: str | None,
) -> int:
    """What a gate counts of (run, city, stage) across the crew, once per
    person: this member's own check-ins (user id → pod and role) and the tokens
    the others published, those of ``pod`` only (None: every pod) and ``role``
    only (None: every role). ``city`` is a city id; shares published for any of
    its lanes (``hk/mongkok``) count. Untagged shares (the previous format)
    count only when neither pod nor role is asked."""

    def wanted(tag: Tag) -> bool:
        return pod in (None, tag[0]) and role in (None, tag[1])

    mine = {checkin_token(run, u) for u, tag in own.items() if wanted(tag)}
    theirs = [
        s.tokens
        for s in shares
        if (s.run, s.city.partition("/")[0], s.stage) == (run, city, stage)
        and s.member != me
        and (wanted((s.pod, s.role)) if s.tagged else pod is None and role is None)
    ]
    return count_checkins([mine, *theirs], crew={checkin_token(run, m) for m in crew})
