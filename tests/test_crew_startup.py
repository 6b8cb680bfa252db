"""The start-up rule (docs/crew.md): right after a member starts, another member
it has not heard from yet is *unknown*, not down, until it is heard or the
start-up window passes; a member speaks only when every member ahead of it is
known down, and falls silent only once one of them is known up; a command read
meanwhile waits for the decision. A previous run's heartbeat left in the room's
state neither keeps a dead member up past three heartbeats nor makes a live one
look dead. Against fakes and a ManualClock: milliseconds, no server."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_crew_roster import FakePort, settle

from bot.clock import ManualClock
from bot.crew import Crew, Heartbeat
from bot.crew.duty import DOWN, UNKNOWN, UP, CrewView, Listening
from bot.crew.heartbeat import EVENT_TYPE, IDLE_INTERVAL, parse_heartbeat, sighting
from bot.crew.members import Member
from bot.crew.rollcall import roll_call_window
from bot.crew.roster import Roster

A, B, C = "@blossom:north.example", "@blossom:south.example", "@blossom:west.example"
R1 = "!control1:north.example"
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
S = timedelta(seconds=1)
BASE = 30 * S
CREW = Crew((A, B, C), BASE)
PAIR = Crew((A, B), BASE)
WINDOW = roll_call_window(BASE)  # 20 s


def roster(clock: ManualClock, port: FakePort, *, me: str, crew: Crew = PAIR) -> Roster:
    return Roster(crew=crew, me=me, rooms=(R1,), port=port, clock=clock, version="0.1.0")


def beat(
    sender: str,
    time_: datetime,
    *,
    event_id: str,
    interval: timedelta = BASE,
    started: datetime | None = None,
    stopping: bool = False,
) -> dict[str, Any]:
    content = Heartbeat(
        sender, time_, interval, "0.1.0", stopping=stopping, started=started
    ).content()
    return {
        "type": EVENT_TYPE,
        "state_key": sender,
        "sender": sender,
        "event_id": event_id,
        "origin_server_ts": 0,
        "content": content,
    }


def started(port: FakePort) -> list[datetime]:
    return [t for t, _, _, content in port.puts if "started" in content]


# -- the pure rule ---------------------------------------------------------------------


def view(
    members: Mapping[str, Member], *, me: str, since: datetime | None = T, crew: Crew = CREW
) -> CrewView:
    return CrewView(crew, members, me=me, roll_call=since, listening=Listening(since, WINDOW))


def test_a_member_not_heard_yet_is_unknown_until_the_window_closes() -> None:
    v = view({}, me=B)
    assert v.status(A, T + S) == UNKNOWN
    assert v.status(A, T + WINDOW - timedelta(milliseconds=1)) == UNKNOWN
    assert v.status(A, T + WINDOW) == DOWN
    assert v.status(B, T) == UP  # itself


def test_a_member_speaks_only_when_every_one_ahead_is_known_down() -> None:
    v = view({}, me=C)
    assert v.speaks(C, T + S) is None and v.speaker(T + S) is None and not v.decided(T + S)
    assert v.speaks(C, T + WINDOW) is True and v.speaker(T + WINDOW) == C
    # One ahead heard (up): silent, whatever the one before it is.
    heard_b = view({B: Member(B, seen_at=T + S)}, me=C)
    assert heard_b.speaks(C, T + 2 * S) is False
    assert heard_b.speaker(T + 2 * S) is None  # A, ahead of B, still unknown
    assert heard_b.speaker(T + WINDOW) == B
    # The first member has nobody ahead: it speaks at once.
    assert view({}, me=A).speaks(A, T) is True and view({}, me=A).speaker(T) == A


def test_not_listening_yet_everyone_else_is_unknown() -> None:
    v = view({A: Member(A, seen_at=T)}, me=B, since=None)
    assert v.status(A, T + timedelta(hours=1)) == UNKNOWN
    assert v.speaks(B, T) is None
    assert v.first_up(T) == A  # the fallback once a bounded wait has run out


def test_a_heartbeat_from_before_the_start_is_not_hearing_it() -> None:
    """A previous run's heartbeat (older than one crew interval before this
    member started) does not count as having heard that member."""
    old = view({A: Member(A, seen_at=T - BASE - S, interval=IDLE_INTERVAL)}, me=B)
    assert old.status(A, T + S) == UNKNOWN
    assert old.status(A, T + WINDOW) == DOWN
    fresh = view({A: Member(A, seen_at=T - BASE + S)}, me=B)
    assert fresh.status(A, T + S) == UP


def test_a_stopping_member_heard_after_the_start_is_down_at_once() -> None:
    v = view({A: Member(A, seen_at=T + S, stopping=True)}, me=B)
    assert v.status(A, T + S) == DOWN and v.speaker(T + S) == B


def test_without_the_start_up_rule_nothing_changes() -> None:
    v = CrewView(CREW, {}, me=C)
    assert v.speaker(T) == C and v.decided(T) and v.status(A, T) == DOWN


def test_an_old_heartbeat_counts_from_its_own_time() -> None:
    idle = Heartbeat(A, T - timedelta(minutes=5), IDLE_INTERVAL, "0.1.0")
    assert sighting(idle, T).seen_at == T  # arrived fresh by its own interval
    assert sighting(idle, T, old=True).seen_at == T - timedelta(minutes=5)


def test_started_is_read_back_and_checked() -> None:
    event = beat(A, T, event_id="$a", started=T - S)
    parsed = parse_heartbeat(event, members=CREW.members)
    assert parsed is not None and parsed.started == T - S
    bad = {**event, "content": {**event["content"], "started": "yesterday"}}
    assert parse_heartbeat(bad, members=CREW.members) is None
    plain = parse_heartbeat(beat(A, T, event_id="$p"), members=CREW.members)
    assert plain is not None and plain.started is None


# -- the roster ----------------------------------------------------------------------


async def test_the_second_member_neither_speaks_nor_falls_silent_until_it_hears_the_first(
) -> None:
    """The start-up race: before the first member's heartbeat has crossed the
    federation, the second counted it down and spoke too."""
    clock = ManualClock(T)
    r = roster(clock, FakePort(clock), me=B)
    r.start()
    await settle()
    clock.advance(S)
    assert r.view().speaker(clock.now()) is None  # undecided (it said B before)
    assert r.view().speaks(B, clock.now()) is None
    r.ingest(R1, [beat(A, clock.now(), event_id="$a1", started=clock.now())])
    assert r.view().speaker(clock.now()) == A
    assert r.view().speaks(B, clock.now()) is False
    await r.halt()


async def test_the_second_member_speaks_once_the_window_passes_unheard() -> None:
    clock = ManualClock(T)
    r = roster(clock, FakePort(clock), me=B)
    r.start()
    await settle()
    clock.set(T + WINDOW)
    assert r.view().speaker(clock.now()) == B
    await r.halt()


async def test_a_dead_members_old_heartbeat_in_the_state_does_not_keep_it_up() -> None:
    """A's previous run left an idle heartbeat (ten-minute rate) five minutes
    before B started: it used to keep A up, and B silent, for half an hour."""
    clock = ManualClock(T)
    port = FakePort(clock)
    port.state[R1] = [beat(A, T - timedelta(minutes=5), event_id="$old", interval=IDLE_INTERVAL,
                           started=T - timedelta(hours=2))]
    r = roster(clock, port, me=B)
    await r.load()
    r.start()
    await settle()
    assert r.view().status(A, T + S) == UNKNOWN
    clock.set(T + WINDOW)
    assert r.view().speaker(clock.now()) == B
    assert r.view().is_down(A, T + 3 * BASE + S)  # for duty too: at most three heartbeats
    await r.halt()


async def test_the_same_heartbeat_from_the_first_sync_counts_from_its_own_time() -> None:
    """Before the roster starts, /sync brings the room's state: old news too."""
    clock = ManualClock(T)
    r = roster(clock, FakePort(clock), me=B)
    r.ingest(R1, [beat(A, T - timedelta(minutes=5), event_id="$old", interval=IDLE_INTERVAL)])
    r.start()
    await settle()
    assert r.view().is_down(A, T + 3 * BASE + S)
    assert r.view().speaker(T + WINDOW) == B
    await r.halt()


async def test_a_heartbeat_made_a_moment_before_the_start_is_not_old() -> None:
    """Its time is in whole milliseconds: made 0.4 ms after this member started,
    it reads as 0.1 ms before. It counted from its own time, and the start's roll
    call made an idle member down three heartbeats later (a live test, 1 of 5)."""
    clock = ManualClock(T + timedelta(microseconds=123_456))
    r = roster(clock, FakePort(clock), me=A)
    r.start()
    await settle()
    clock.advance(timedelta(microseconds=400))
    r.ingest(R1, [beat(B, clock.now(), event_id="$b1", interval=IDLE_INTERVAL,
                       started=clock.now())])
    assert not r.view().is_down(B, clock.now() + 3 * BASE + S)
    await r.halt()


async def test_a_live_member_answers_a_start_at_once_so_it_never_looks_dead() -> None:
    """A has been idle five minutes (next beat in five more); B starts. A sees
    B's ``started`` and beats at once, so B hears it within its window; it
    used to stay silent, and B counted it down."""
    clock = ManualClock(T)
    port_a, port_b = FakePort(clock), FakePort(clock)
    a = roster(clock, port_a, me=A)
    a.start()
    await settle()
    clock.advance(timedelta(minutes=5))
    await settle()
    assert len(port_a.puts) == 1  # idle: nothing since its start
    b = roster(clock, port_b, me=B)
    b.ingest(R1, [as_event(A, port_a.puts[0][3], "$a1")])  # the state: old news
    b.start()
    await settle()
    assert b.view().status(A, clock.now()) == UNKNOWN
    a.ingest(R1, [as_event(B, port_b.puts[0][3], "$b1")])
    await settle()
    answered = clock.now()
    assert [t for t, *_ in port_a.puts] == [T, answered]  # answered at once
    idle = int(IDLE_INTERVAL / timedelta(milliseconds=1))
    assert port_a.puts[-1][3]["interval"] == idle  # at the rate it announces anyway
    b.ingest(R1, [as_event(A, port_a.puts[-1][3], "$a2")])
    assert b.view().speaker(clock.now()) == A
    assert not b.view().is_down(A, clock.now() + 3 * BASE)
    # The same run of B again: no new answer; the second one a heartbeat later.
    clock.advance(S)
    a.ingest(R1, [as_event(B, {**port_b.puts[0][3], "time": port_b.puts[0][3]["time"] + 1000},
                           "$b2")])
    await settle()
    assert len(port_a.puts) == 2
    clock.set(answered + BASE)
    await settle()
    assert [t for t, *_ in port_a.puts] == [T, answered, answered + BASE]
    assert port_a.puts[-1][3]["interval"] == idle
    clock.advance(BASE)
    await settle()
    assert len(port_a.puts) == 3  # then idle again
    await a.halt()
    await b.halt()


def as_event(sender: str, content: Mapping[str, Any], event_id: str) -> dict[str, Any]:
    return {"type": EVENT_TYPE, "state_key": sender, "sender": sender, "event_id": event_id,
            "origin_server_ts": 0, "content": dict(content)}


async def test_a_command_read_while_undecided_waits_for_the_decision() -> None:
    clock = ManualClock(T)
    r = roster(clock, FakePort(clock), me=B)
    r.start()
    await settle()
    waiting = asyncio.ensure_future(r.decided_speaker(timeout_s=5))
    await settle()
    assert not waiting.done()
    r.ingest(R1, [beat(A, clock.now(), event_id="$a1", started=clock.now())])
    assert await asyncio.wait_for(waiting, 1) == A

    lonely = roster(clock, FakePort(clock), me=B)
    lonely.start()
    await settle()
    waiting = asyncio.ensure_future(lonely.decided_speaker(timeout_s=5))
    await settle()
    assert not waiting.done()
    clock.advance(WINDOW)  # nobody heard: the window closes, B speaks
    assert await asyncio.wait_for(waiting, 1) == B
    await r.halt()
    await lonely.halt()


async def test_the_wait_is_bounded_when_the_roster_never_starts() -> None:
    clock = ManualClock(T)
    r = roster(clock, FakePort(clock), me=B)
    assert await r.decided_speaker(timeout_s=0.05) == B  # the rule without the window


# -- every member computes the same answer ------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    start_b=st.integers(0, 60_000),
    latency=st.integers(0, int(WINDOW / timedelta(milliseconds=1)) // 2 - 1),
    command=st.integers(0, 120_000),
)
def test_a_command_is_answered_by_exactly_one_member(
    start_b: int, latency: int, command: int
) -> None:
    """A starts at T, B at T + start_b ms; each one's heartbeats reach the
    other ``latency`` ms after they are made (a round trip within the window),
    and each answers the other's start at once. Whenever a command is read, the member
    each one decides is the speaker (at the first moment it is decided) is the
    same, and it is A, the first that is up."""
    ms = timedelta(milliseconds=1)
    t_a, t_b, lat = T, T + start_b * ms, latency * ms
    read = T + command * ms
    # What each has seen: A's first beat at t_a reaches B at t_a + lat (if B is
    # listening by then, else B has it from the state, made before its start);
    # B's first beat reaches A at t_b + lat, and A answers it.
    a_beats = [t_a, t_b + lat]  # its start, its answer to B's start
    b_beats = [t_b]

    def view_of(me: str, at: datetime) -> CrewView:
        if me == A:
            seen = [t for t in b_beats if t + lat <= at]
            members = {}
            if seen:
                members = {B: Member(B, seen_at=max(seen) + lat, interval=IDLE_INTERVAL)}
            return CrewView(PAIR, members, me=A, roll_call=t_a, listening=Listening(t_a, WINDOW))
        seen = [t for t in a_beats if t + lat <= at]
        if not seen:
            members = {}
        else:
            newest = max(seen)
            arrival = newest + lat
            seen_at = newest if newest < t_b else max(arrival, t_b)  # old news: own time
            members = {A: Member(A, seen_at=seen_at, interval=IDLE_INTERVAL)}
        return CrewView(PAIR, members, me=B, roll_call=t_b, listening=Listening(t_b, WINDOW))

    def decision(me: str) -> str | None:
        at = max(read, t_b if me == B else t_a)
        while not view_of(me, at).decided(at):
            at += 100 * ms
        return view_of(me, at).speaker(at)

    assert decision(A) == A
    assert decision(B) == A
