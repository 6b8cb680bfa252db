"""One gate decision per city across a crew (bot/crew/gate.py). Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.crew import Crew, CrewView, Member
from bot.crew.gate import (
    GATE_KEY,
    GateDecision,
    Step,
    checkin_token,
    city_on_duty,
    count_checkins,
    gate_step,
    parse_gate_decision,
)
from bot.policy import Action

A, B, C = "@blossom:north.example", "@blossom:south.example", "@blossom:west.example"
ORDER = (A, B, C)
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
GRACE = timedelta(seconds=20)
S = timedelta(seconds=1)
WHICH = {"run": "$arm", "city": "south", "stage": "go"}


def decision(member: str, action: Action = Action.RELEASE, **kw: Any) -> GateDecision:
    fields: dict[str, Any] = {**WHICH, "checkins": 4, "needed": 3, **kw}
    return GateDecision(action=action, member=member, **fields)


def step(me: str, city_duty: str | None, decisions: list[GateDecision], now: datetime) -> Any:
    return gate_step(
        me=me,
        city_duty=city_duty,
        decisions=decisions,
        order=ORDER,
        instant=T,
        grace=GRACE,
        now=now,
        **WHICH,
    )


def test_the_member_on_duty_decides_at_the_instant() -> None:
    assert step(A, A, [], T).step is Step.DECIDE
    early = step(A, A, [], T - S)
    assert early.step is Step.WAIT and early.until == T


def test_the_others_follow_or_decide_only_after_grace() -> None:
    waiting = step(B, A, [], T + 5 * S)
    assert waiting.step is Step.WAIT and waiting.until == T + GRACE
    assert step(B, A, [], T + GRACE).step is Step.DECIDE
    published = decision(A)
    followed = step(B, A, [published], T + 5 * S)
    assert followed.step is Step.FOLLOW and followed.decision == published
    # Even after grace, a published decision is followed rather than remade.
    assert step(B, A, [published], T + 2 * GRACE).step is Step.FOLLOW


def test_decisions_for_other_gates_are_not_followed() -> None:
    others = [decision(A, run="$old"), decision(A, city="north"), decision(A, stage="call")]
    assert step(B, A, others, T + 5 * S).step is Step.WAIT


def test_after_a_partition_everyone_follows_the_earliest_member() -> None:
    a, c = decision(A, Action.HOLD, checkins=2), decision(C, Action.RELEASE)
    for me in ORDER:
        for decisions in ([a, c], [c, a]):
            assert step(me, A, decisions, T + 5 * S).decision == a
    # A member that published twice: its first decision.
    again = decision(A, Action.SKIP)
    assert step(B, A, [a, again], T).decision == a


def test_the_city_on_duty_is_joined_to_one_of_its_rooms() -> None:
    crew = Crew(ORDER)
    view = CrewView(crew, {m: Member(m, seen_at=T) for m in (B, C)}, me=None)
    assert city_on_duty(view, ORDER, [{A, C}, {C}], T) == C  # A down, B in no room
    assert city_on_duty(view, ORDER, [{A, B}, {C}], T) == B
    assert city_on_duty(view, ORDER, [], T) is None


def test_decisions_round_trip_and_hostile_ones_are_ignored() -> None:
    published = decision(A, Action.ABORT, checkins=1)
    event = {
        "type": "m.room.message",
        "sender": A,
        "event_id": "$d",
        "content": {"msgtype": "m.notice", "body": "gate", GATE_KEY: published.content()},
    }
    assert parse_gate_decision(event, members=ORDER) == published
    bad_bodies: list[Any] = [
        None,
        "x",
        {},
        {**published.content(), "action": "explode"},
        {**published.content(), "checkins": True},
        {**published.content(), "needed": -1},
        {**published.content(), "run": ""},
        {**published.content(), "city": 3},
    ]
    for body in bad_bodies:
        bad = {**event, "content": {GATE_KEY: body}}
        assert parse_gate_decision(bad, members=ORDER) is None
    assert parse_gate_decision({**event, "sender": "@mallory:x"}, members=ORDER) is None
    assert parse_gate_decision({**event, "state_key": ""}, members=ORDER) is None
    assert parse_gate_decision(None, members=ORDER) is None


@pytest.mark.parametrize(
    ("seen", "count"),
    [
        ([{"@p1:x", "@p2:x"}, {"@p2:x", "@p3:x"}], 3),  # @p2 seen by two members: once
        ([{"@p1:x", A}, {B}], 1),  # crew members never count
        ([], 0),
    ],
)
def test_checkins_are_counted_once_per_person(seen: list[set[str]], count: int) -> None:
    assert count_checkins(seen, crew=ORDER) == count


PEOPLE = st.sets(st.sampled_from([f"@p{i}:x" for i in range(6)] + [A, B]))


@given(st.lists(PEOPLE, max_size=4))
def test_the_count_is_the_union_whoever_counted(seen: list[set[str]]) -> None:
    union = set().union(*seen) - set(ORDER)
    assert count_checkins(seen, crew=ORDER) == len(union)
    assert count_checkins(reversed(seen), crew=ORDER) == len(union)
    assert count_checkins([*seen, *seen], crew=ORDER) == len(union)
    tokens = [{checkin_token("$arm", p) for p in s - set(ORDER)} for s in seen]
    assert count_checkins(tokens, crew=ORDER) == len(union)


def test_tokens_hide_the_id_and_differ_between_runs() -> None:
    token = checkin_token("$arm", "@p1:x")
    assert "@p1" not in token
    assert token == checkin_token("$arm", "@p1:x") != checkin_token("$other", "@p1:x")


# -- the shell (bot/runs/gates.py) with pods and roles, against fakes ---------------------

PODS_TEXT = """\
version: 1
id: pods
title: pods
start: 2026-12-05T17:30:00Z
roles: [{id: front, name: In the action}, {id: support, name: Nearby support}]
cities:
  - id: hk
    name: Hong Kong
    timezone: Asia/Hong_Kong
    direct: true
    pods:
      - {id: mongkok, places: {staging: {name: a}}}
      - {id: causeway, places: {staging: {name: b}}}
stages:
  - {id: call, at: -1d, text: hi}
  - {id: gather, at: -30m, place: staging, text: "{staging}",
     require: {checkins: 2, per: pod}}
  - {id: spot, at: 0m, text: now, require: {checkins: 2, role: front}}
"""


async def test_per_pod_and_role_gates_count_every_members_checkins_once() -> None:
    from types import SimpleNamespace

    from bot.crew.shares import parse_checkin_share, tagged_share_contents
    from bot.runs import gates
    from bot.runs.instant import lane_checkins
    from bot.scenario import load_scenario_text

    scenario = load_scenario_text(PODS_TEXT)
    # This member (A) took two check-ins; B took three, one of them the same person's.
    mine = {("hk", "call"): {"@p:x": ("mongkok", None), "@q:x": ("causeway", "front")},
            ("hk", "gather"): {"@p:x": ("mongkok", "front")}}
    theirs = {("hk", "call"): {"@p:x": ("mongkok", None), "@r:x": ("mongkok", "front"),
                               "@s:x": ("causeway", None)},
              ("hk", "gather"): {"@r:x": ("mongkok", "front"), "@s:x": ("causeway", "support")}}

    class FakeParticipants:
        async def checkin_tags(self, run_id: int) -> Any:
            return mine

        async def checkin_users(self, run_id: int) -> Any:
            return {k: set(v) for k, v in mine.items()}

    by_lane: dict[Any, dict[Any, int]] = {}
    for key, users in mine.items():
        for tag in users.values():
            by_lane.setdefault(key, {}).setdefault(tag, 0)
            by_lane[key][tag] += 1
    own = lane_checkins(scenario, by_lane)
    assert own[("hk/mongkok", "call")] == 1 and own[("hk/mongkok", "gather")] == 1
    shares = [
        s
        for (city, stage), users in theirs.items()
        for lane in ("hk/mongkok", "hk/causeway")
        for body in tagged_share_contents("$arm", lane, stage, users)
        if (s := parse_checkin_share(
            {"type": "m.room.message", "sender": B, "content": {"org.blossom.checkins": body}},
            members=(A, B),
        ))
    ]
    ctx = SimpleNamespace(store=SimpleNamespace(participants=FakeParticipants()))
    crew = SimpleNamespace(me=A, crew=SimpleNamespace(members=(A, B)))
    armed = SimpleNamespace(scenario=scenario, run_key="$arm", run=SimpleNamespace(id=1))
    counts = await gates.with_shared(ctx, crew, armed, own, shares)  # type: ignore[arg-type]
    # gather (per pod) counts call's check-ins: mongkok @p @r, causeway @q @s.
    assert counts[("hk/mongkok", "call")] == 2
    assert counts[("hk/causeway", "call")] == 2
    # spot (role front) counts gather's: @p (mine) and @r (B's), in every pod's lane.
    assert counts[("hk/mongkok", "gather")] == 2
    assert counts[("hk/causeway", "gather")] == 2
