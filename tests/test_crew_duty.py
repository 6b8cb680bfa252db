"""Duty across a crew (bot/crew/duty.py): who is down, who is on duty, when each
standby looks and sends, who speaks, who redacts. Pure, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import CrewConfig
from bot.crew import Crew, CrewView, Duty, Member, precedence, redactor

A, B, C = "@blossom:north.example", "@blossom:south.example", "@blossom:west.example"
CREW = Crew((A, B, C), timedelta(seconds=30))
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)  # the instant
GRACE = timedelta(seconds=20)
S = timedelta(seconds=1)


def alive(*ids: str, at: datetime = T) -> dict[str, Member]:
    return {m: Member(m, seen_at=at - 5 * S) for m in ids}


def view(
    members: dict[str, Member], me: str | None = None, roll_call: datetime | None = None
) -> CrewView:
    return CrewView(CREW, members, me=me, roll_call=roll_call)


def duty_of(
    v: CrewView,
    member: str,
    *,
    order: tuple[str, ...] = (A, B, C),
    joined: frozenset[str] = frozenset({A, B, C}),
    now: datetime = T,
    missed_instant: bool = False,
) -> Duty:
    return v.duty(
        member,
        order=order,
        joined=joined,
        instant=T,
        grace=GRACE,
        now=now,
        missed_instant=missed_instant,
    )


# -- the crew -----------------------------------------------------------------------------


def test_crew_from_config_and_solo() -> None:
    crew = Crew.from_config(CrewConfig(members=(A, B), heartbeat_seconds=10))
    assert crew.members == (A, B) and crew.heartbeat == 10 * S
    assert crew.down_after == 30 * S
    assert Crew.solo(A).members == (A,) and A in Crew.solo(A) and B not in Crew.solo(A)


@pytest.mark.parametrize(
    ("members", "heartbeat"), [((), 30 * S), ((A, A), 30 * S), ((A,), timedelta(0))]
)
def test_crew_refuses_what_the_config_refuses(
    members: tuple[str, ...], heartbeat: timedelta
) -> None:
    with pytest.raises(ValueError):
        Crew(members, heartbeat)


# -- (a) down ------------------------------------------------------------------------------


def test_down_after_three_heartbeats_or_never_seen() -> None:
    seen = Member(B, seen_at=T)
    assert not seen.is_down(CREW, T + 90 * S)  # exactly three intervals: still up
    assert seen.is_down(CREW, T + 90 * S + timedelta(milliseconds=1))
    assert Member(B).is_down(CREW, T)
    assert Member(B, seen_at=T, stopping=True).is_down(CREW, T)
    assert view({}).is_down(B, T)  # absent from the view: never seen


def test_down_counts_the_rate_the_member_announced() -> None:
    idle = Member(B, seen_at=T, interval=timedelta(minutes=10))
    assert not idle.is_down(CREW, T + timedelta(minutes=29))
    assert idle.is_down(CREW, T + timedelta(minutes=30, seconds=1))
    # Never fewer than three of the crew's intervals, whatever a member claims.
    hasty = Member(B, seen_at=T, interval=S)
    assert not hasty.is_down(CREW, T + 60 * S)


def test_a_member_that_does_not_answer_the_roll_call_is_down() -> None:
    """Idle members beat every 10 min; every member beats at once on reading a
    command, so one silent three intervals after a command is gone."""
    command = T
    silent = Member(B, seen_at=T - 60 * S, interval=timedelta(minutes=10))
    answered = Member(C, seen_at=T + 2 * S, interval=30 * S)
    assert not silent.is_down(CREW, T + 90 * S, roll_call=command)
    assert silent.is_down(CREW, T + 91 * S, roll_call=command)
    assert not silent.is_down(CREW, T + 91 * S)  # without a roll call: its idle rate
    assert not answered.is_down(CREW, T + 91 * S, roll_call=command)
    v = view({B: silent, C: answered}, roll_call=command)
    assert v.is_down(B, T + 91 * S) and not v.is_down(C, T + 91 * S)


def test_me_is_never_down() -> None:
    assert not view({}, me=A).is_down(A, T + timedelta(days=1))


# -- (b) on duty --------------------------------------------------------------------------


def test_on_duty_is_the_first_joined_member_that_is_up() -> None:
    everyone = view(alive(A, B, C))
    assert everyone.on_duty((A, B, C), {A, B, C}, T) == A
    assert everyone.on_duty((B, A, C), {A, B, C}, T) == B  # the city's order, not the config's
    assert everyone.on_duty((A, B, C), {B, C}, T) == B  # A not in the room
    assert view(alive(B, C)).on_duty((A, B, C), {A, B, C}, T) == B  # A down
    assert view(alive(C)).on_duty((A, B), {A, B, C}, T) is None  # C not in the city's order
    assert view({}).on_duty((A, B, C), {A, B, C}, T) is None


def test_a_member_that_did_not_arm_the_scenario_is_not_on_duty() -> None:
    digest = "d" * 64
    members = {A: Member(A, seen_at=T), B: Member(B, seen_at=T, armed=frozenset({digest}))}
    assert view(members).on_duty((A, B), {A, B}, T, digest) == B
    assert view(members).on_duty((A, B), {A, B}, T) == A
    assert view(members, me=A).on_duty((A, B), {A, B}, T, digest) == A  # it knows its own


# -- (c) ranks, send times and looking -------------------------------------------------------


def test_all_up_on_duty_at_the_instant_standbys_by_rank() -> None:
    v = view(alive(A, B, C))
    a, b, c = (duty_of(v, m) for m in (A, B, C))
    assert (a.rank, a.send_at, a.look_first, a.on_duty) == (0, T, False, True)
    assert (b.rank, b.send_at, b.look_first) == (1, T + GRACE, True)
    assert (c.rank, c.send_at, c.look_first) == (2, T + 2 * GRACE, True)


def test_down_members_hold_no_rank() -> None:
    b = duty_of(view(alive(B, C)), B)
    assert (b.rank, b.send_at, b.look_first) == (0, T, False)
    c = duty_of(view(alive(B, C)), C)
    assert (c.rank, c.send_at) == (1, T + GRACE)


def test_when_every_member_before_it_is_down_it_sends_at_the_instant() -> None:
    c = duty_of(view(alive(C), me=C), C)
    assert (c.rank, c.send_at, c.look_first) == (0, T, False)


def test_a_member_outside_the_room_or_the_order_has_no_duty() -> None:
    v = view(alive(A, B, C))
    assert duty_of(v, C, joined=frozenset({A, B})).rank is None
    assert duty_of(v, C, order=(A, B)).rank is None
    assert duty_of(v, C, order=(A, B)).send_at is None


def test_a_send_later_than_grace_after_the_instant_looks_first() -> None:
    v = view(alive(A, B, C), me=A)
    assert not duty_of(v, A, now=T + 5 * S).look_first
    assert not duty_of(v, A, now=T + GRACE).look_first  # exactly grace: not later
    late = duty_of(v, A, now=T + GRACE + S)
    assert late.look_first and late.send_at == T + GRACE + S and late.rank == 0
    # A standby read late sends now, not at its planned time in the past.
    assert duty_of(v, B, now=T + timedelta(minutes=5)).send_at == T + timedelta(minutes=5)


def test_a_member_cut_off_at_the_instant_looks_first_even_when_soon_back() -> None:
    """Its heartbeats did not reach the room at the instant, so B covered at once;
    back 5 s later, A must not land a copy on top of B's."""
    d = duty_of(view(alive(B, C), me=A), A, now=T + 5 * S, missed_instant=True)
    assert d.rank == 0 and d.look_first


# -- (d) the speaker --------------------------------------------------------------------------


def test_speaker_is_the_first_in_the_config_order_that_is_up() -> None:
    assert view(alive(A, B, C)).speaker(T) == A
    assert view(alive(B, C)).speaker(T) == B
    assert view({}, me=C).speaker(T) == C
    assert view({}).speaker(T) is None
    # It takes over once the speaker's heartbeat is stale: within one interval
    # of it counting as down.
    quiet = {A: Member(A, seen_at=T), B: Member(B, seen_at=T + 60 * S)}
    assert view(quiet).speaker(T + 90 * S) == A
    assert view(quiet).speaker(T + 91 * S) == B


# -- (e) redaction ------------------------------------------------------------------------------


def test_the_member_later_in_the_citys_order_redacts() -> None:
    assert redactor((A, B), A, B) == B
    assert redactor((B, A), A, B) == A
    assert redactor((A,), A, C) == C  # outside the order: after it
    with pytest.raises(ValueError):
        redactor((A, B), A, A)


# -- properties ---------------------------------------------------------------------------------

IDS = [f"@bot{i}:s{i}.example" for i in range(5)]


@st.composite
def situations(draw: st.DrawFn) -> tuple[CrewView, tuple[str, ...], frozenset[str]]:
    members = tuple(draw(st.permutations(IDS))[: draw(st.integers(1, 5))])
    crew = Crew(members, timedelta(seconds=draw(st.integers(1, 120))))
    order = tuple(draw(st.permutations(members))[: draw(st.integers(0, len(members)))])
    joined = frozenset(draw(st.sets(st.sampled_from(members))))
    seen = {}
    for m in members:
        age = draw(st.none() | st.integers(0, 10 * 120 * 1000))
        if age is not None:
            seen[m] = Member(m, seen_at=T - timedelta(milliseconds=age))
    return CrewView(crew, seen), order, joined


@settings(max_examples=300, deadline=None)
@given(situations(), st.integers(2_000, 600_000), st.integers(0, 3_600_000))
def test_exactly_one_on_duty_and_it_sends_first(
    situation: tuple[CrewView, tuple[str, ...], frozenset[str]], grace_ms: int, late_ms: int
) -> None:
    v, order, joined = situation
    grace = timedelta(milliseconds=grace_ms)
    now = T + timedelta(milliseconds=late_ms)
    up = [m for m in order if m in joined and not v.is_down(m, T)]
    duties = {m: v.duty(m, order=order, joined=joined, instant=T, grace=grace, now=now) for m in up}
    on_duty = [m for m, d in duties.items() if d.on_duty]
    # Exactly one member on duty whenever any joined member is up, and it is
    # the one on_duty() names; none otherwise.
    assert on_duty == ([up[0]] if up else [])
    assert v.on_duty(order, joined, T) == (up[0] if up else None)
    # Ranks are 0, 1, 2 … in the city's order; sends never go out before a
    # better-ranked member's, and the member on duty sends no later than any.
    assert [duties[m].rank for m in up] == list(range(len(up)))
    times = [duties[m].send_at for m in up]
    assert times == sorted(times)  # type: ignore[type-var]
    # Every standby looks before sending.
    assert all(duties[m].look_first for m in up[1:])


@settings(max_examples=300, deadline=None)
@given(situations())
def test_a_member_whose_betters_are_all_down_sends_at_the_instant(
    situation: tuple[CrewView, tuple[str, ...], frozenset[str]],
) -> None:
    v, order, joined = situation
    for me in order:
        if me not in joined:
            continue
        mine = CrewView(v.crew, v.members, me=me)
        before = order[: order.index(me)]
        betters_down = all(m not in joined or v.is_down(m, T) for m in before)
        d = mine.duty(me, order=order, joined=joined, instant=T, grace=GRACE, now=T)
        assert (d.send_at == T) == betters_down
        assert d.on_duty == betters_down


@given(st.permutations(IDS), st.sampled_from(IDS), st.sampled_from(IDS), st.integers(0, 5))
def test_redaction_is_antisymmetric(perm: list[str], first: str, second: str, cut: int) -> None:
    order = tuple(perm[:cut])
    if first == second:
        return
    who = redactor(order, first, second)
    assert who == redactor(order, second, first)
    assert who in (first, second)
    keeper = second if who == first else first
    assert precedence(order, keeper) < precedence(order, who)


@settings(max_examples=200, deadline=None)
@given(situations())
def test_members_that_are_up_agree_with_each_other(
    situation: tuple[CrewView, tuple[str, ...], frozenset[str]],
) -> None:
    """Each member decides alone from what it sees: when they all see the same,
    a member that is up gets the same duty from its own view as the others
    compute for it, so no two of them are on duty for one room."""
    v, order, joined = situation
    up = [m for m in order if m in joined and not v.is_down(m, T)]
    for me in up:
        own = CrewView(v.crew, v.members, me=me)
        assert own.on_duty(order, joined, T) == v.on_duty(order, joined, T)
        mine = own.duty(me, order=order, joined=joined, instant=T, grace=GRACE, now=T)
        theirs = v.duty(me, order=order, joined=joined, instant=T, grace=GRACE, now=T)
        assert mine == theirs
    speakers = {
        CrewView(v.crew, v.members, me=m).speaker(T) for m in v.crew.members if not v.is_down(m, T)
    }
    assert len(speakers) <= 1
