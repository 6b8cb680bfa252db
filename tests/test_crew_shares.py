"""Check-ins shared across a crew as tokens (bot/crew/shares.py): pure, milliseconds."""

from __future__ import annotations

from typing import Any

import pytest

from bot.crew.gate import checkin_token
from bot.crew.shares import (
    CHECKINS_KEY,
    MAX_TOKENS,
    CheckinShare,
    parse_checkin_share,
    share_contents,
    shared_count,
)

A, B, C = "@a:hs", "@b:hs", "@c:hs"
CREW = (A, B)


def event(body: object, sender: str = B, **extra: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": sender,
            "content": {"msgtype": "m.notice", "body": "x", CHECKINS_KEY: body}, **extra}


def share(users: list[str], member: str = B, run: str = "r") -> CheckinShare:
    return CheckinShare(run, "c", "s", frozenset(checkin_token(run, u) for u in users), member)


def test_contents_carry_tokens_not_ids_and_round_trip() -> None:
    (body,) = share_contents("r", "c", "s", ["@p:hs", "@q:hs", "@p:hs"])
    assert "@p:hs" not in str(body) and len(body["tokens"]) == 2
    parsed = parse_checkin_share(event(body), members=CREW)
    assert parsed == CheckinShare("r", "c", "s", frozenset(body["tokens"]), B)


def test_contents_are_bounded_per_event() -> None:
    users = [f"@p{n}:hs" for n in range(MAX_TOKENS * 2 + 1)]
    chunks = share_contents("r", "c", "s", users)
    assert [len(c["tokens"]) for c in chunks] == [MAX_TOKENS, MAX_TOKENS, 1]
    assert share_contents("r", "c", "s", []) == []


@pytest.mark.parametrize("bad", [
    None, 1, "x", [], {}, {"run": "r", "city": "c", "stage": "s"},
    {"run": "r", "city": "c", "stage": "s", "tokens": "ab"},
    {"run": "r", "city": "c", "stage": "s", "tokens": ["@p:hs"]},
    {"run": "r", "city": "c", "stage": "s", "tokens": [1]},
    {"run": "r", "city": "c", "stage": "s", "tokens": ["a" * 64] * (MAX_TOKENS + 1)},
    {"run": "", "city": "c", "stage": "s", "tokens": []},
    {"run": "r" * 300, "city": "c", "stage": "s", "tokens": []},
    {"run": 5, "city": "c", "stage": "s", "tokens": []},
])
def test_malformed_content_is_ignored(bad: object) -> None:
    assert parse_checkin_share(event(bad), members=CREW) is None


def test_shares_from_outside_the_crew_or_not_messages_are_ignored() -> None:
    (body,) = share_contents("r", "c", "s", ["@p:hs"])
    assert parse_checkin_share(event(body, sender=C), members=CREW) is None
    assert parse_checkin_share(event(body, state_key=""), members=CREW) is None
    assert parse_checkin_share("junk", members=CREW) is None
    assert parse_checkin_share({"sender": B, "type": "m.room.message", "content": 3},
                               members=CREW) is None


def test_the_count_is_once_per_person_across_members() -> None:
    kw: dict[str, Any] = {"run": "r", "city": "c", "stage": "s", "me": A, "crew": CREW}
    assert shared_count(own=["@p:hs"], shares=[share(["@q:hs"])], **kw) == 2
    assert shared_count(own=["@p:hs"], shares=[share(["@p:hs"])], **kw) == 1
    # Crew members never count, nor other runs', cities' or stages' tokens.
    assert shared_count(own=[], shares=[share([A, B, "@p:hs"])], **kw) == 1
    assert shared_count(own=[], shares=[share(["@p:hs"], run="other")], **kw) == 0
    other_stage = CheckinShare("r", "c", "t", share(["@p:hs"]).tokens, B)
    assert shared_count(own=[], shares=[other_stage], **kw) == 0
