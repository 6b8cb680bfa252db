"""Check-ins shared across a crew as tokens (bot/crew/shares.py): pure, milliseconds."""

from __future__ import annotations

from typing import Any

import pytest

from bot.crew.gate import checkin_token
from bot.crew.shares import (
    CHECKINS_KEY,
    MAX_TOKENS,
    CheckinShare,
    gate_share_count,
    parse_checkin_share,
    share_contents,
    shared_count,
    tagged_share_contents,
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


# -- pods and roles: tokens tagged with the pod and role they count for ---------------------


def tagged(users: dict[str, tuple[str | None, str | None]], member: str = B) -> list[CheckinShare]:
    out = []
    for body in tagged_share_contents("r", "hk/mongkok", "s", users):
        parsed = parse_checkin_share(event(body, sender=member), members=CREW)
        assert parsed is not None
        out.append(parsed)
    return out


def test_tagged_contents_carry_pod_and_role_but_no_id_and_round_trip() -> None:
    users = {"@p:hs": ("mongkok", "front"), "@q:hs": ("mongkok", None), "@r:hs": (None, None)}
    bodies = tagged_share_contents("r", "hk/mongkok", "s", users)
    assert {(b["pod"], b["role"], len(b["tokens"])) for b in bodies} == {
        ("mongkok", "front", 1), ("mongkok", None, 1), (None, None, 1)}
    assert all("@" not in str(b) for b in bodies)
    got = {(s.pod, s.role): s.tokens for s in tagged(users)}
    assert got[("mongkok", "front")] == {checkin_token("r", "@p:hs")}
    assert got[(None, None)] == {checkin_token("r", "@r:hs")}
    assert all(s.tagged for s in tagged(users))
    # The previous version's content (no pod, no role) still reads, untagged.
    (old,) = share_contents("r", "hk", "s", ["@p:hs"])
    parsed = parse_checkin_share(event(old), members=CREW)
    assert parsed is not None and not parsed.tagged and parsed.pod is None


@pytest.mark.parametrize("bad", [
    {"run": "r", "city": "c", "stage": "s", "tokens": [], "pod": 5, "role": None},
    {"run": "r", "city": "c", "stage": "s", "tokens": [], "pod": "mk"},
    {"run": "r", "city": "c", "stage": "s", "tokens": [], "role": "x" * 300, "pod": None},
])
def test_malformed_tags_are_ignored(bad: object) -> None:
    assert parse_checkin_share(event(bad), members=CREW) is None


def test_per_pod_and_per_role_counts_take_every_members_tokens_once_per_person() -> None:
    kw: dict[str, Any] = {"run": "r", "city": "hk", "stage": "s", "me": A, "crew": CREW}
    own = {"@p:hs": ("mongkok", "front"), "@q:hs": ("causeway", None)}
    theirs = tagged({"@p:hs": ("mongkok", "front"), "@s:hs": ("mongkok", None),
                     "@t:hs": ("causeway", "front"), B: ("mongkok", None)})
    assert gate_share_count(own=own, shares=theirs, pod="mongkok", role=None, **kw) == 2
    assert gate_share_count(own=own, shares=theirs, pod="causeway", role=None, **kw) == 2
    assert gate_share_count(own=own, shares=theirs, pod=None, role="front", **kw) == 2
    assert gate_share_count(own=own, shares=theirs, pod="mongkok", role="front", **kw) == 1
    assert gate_share_count(own=own, shares=theirs, pod=None, role=None, **kw) == 4
    # A member of the previous version shares untagged tokens: they count for the
    # whole city, never for a pod or a role (which they cannot be placed in).
    old = [CheckinShare("r", "hk/mongkok", "s", frozenset({checkin_token("r", "@u:hs")}), B)]
    assert gate_share_count(own=own, shares=old, pod=None, role=None, **kw) == 3
    assert gate_share_count(own=own, shares=old, pod="mongkok", role=None, **kw) == 1
    assert gate_share_count(own=own, shares=old, pod=None, role="front", **kw) == 1
    # Other cities', stages' and runs' shares, and this member's own published, never count.
    mine = tagged({"@x:hs": ("mongkok", None)}, member=A)
    assert gate_share_count(own={}, shares=mine, pod=None, role=None, **kw) == 0
    assert gate_share_count(own={}, shares=theirs, pod=None, role=None,
                            **{**kw, "city": "lon"}) == 0
