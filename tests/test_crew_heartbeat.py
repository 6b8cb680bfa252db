"""The crew's heartbeat (bot/crew/heartbeat.py): content, reading what other
members publish (hostile input never raises), sightings and the rate. Pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.crew import Crew, Heartbeat, parse_heartbeat, sighting
from bot.crew.heartbeat import (
    AWAKE_FOR,
    EVENT_TYPE,
    IDLE_INTERVAL,
    clock_skew,
    interval,
    missed,
    next_due,
)

A, B = "@blossom:north.example", "@blossom:south.example"
MEMBERS = frozenset({A, B})
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
S = timedelta(seconds=1)
BASE = 30 * S
DIGEST = "ab" * 32

BEAT = Heartbeat(member=B, time=T, interval=BASE, version="0.1.0", armed=frozenset({DIGEST}))


def state_event(content: Any, sender: str = B, state_key: str | None = None) -> dict[str, Any]:
    return {
        "type": EVENT_TYPE,
        "state_key": sender if state_key is None else state_key,
        "sender": sender,
        "event_id": "$hb",
        "origin_server_ts": 1764954000000,
        "content": content,
    }


def test_content_is_plain_json_and_reads_back() -> None:
    content = BEAT.content()
    assert content == {
        "time": 1796490000000,
        "interval": 30000,
        "version": "0.1.0",
        "armed": [DIGEST],
    }
    assert json.loads(json.dumps(content)) == content
    assert parse_heartbeat(state_event(content), members=MEMBERS) == BEAT
    stopping = Heartbeat(B, T, BASE, "0.1.0", stopping=True)
    assert stopping.content()["stopping"] is True
    assert parse_heartbeat(state_event(stopping.content()), members=MEMBERS) == stopping


def test_unknown_keys_are_ignored_for_newer_members() -> None:
    content = {**BEAT.content(), "pods": [1, 2]}
    assert parse_heartbeat(state_event(content), members=MEMBERS) == BEAT


@pytest.mark.parametrize(
    "event",
    [
        state_event(BEAT.content(), sender="@someone:else.example"),  # not a member
        state_event(BEAT.content(), state_key=A),  # B writing A's slot
        {**state_event(BEAT.content()), "type": "m.room.member"},
        state_event({}),  # a retired member's emptied slot
        state_event("nope"),
        state_event({**BEAT.content(), "time": True}),
        state_event({**BEAT.content(), "time": 1.5}),
        state_event({**BEAT.content(), "time": -1}),
        state_event({**BEAT.content(), "time": 2**64}),
        state_event({**BEAT.content(), "time": 221_845_392_000_001}),  # after year 9000
        state_event({**BEAT.content(), "time": "1764954000000"}),
        state_event({**BEAT.content(), "interval": 0}),
        state_event({**BEAT.content(), "interval": 10**12}),
        state_event({k: v for k, v in BEAT.content().items() if k != "interval"}),
        state_event({**BEAT.content(), "version": ""}),
        state_event({**BEAT.content(), "version": "x" * 65}),
        state_event({**BEAT.content(), "version": "0.1\n"}),
        state_event({**BEAT.content(), "armed": [DIGEST.upper()]}),
        state_event({**BEAT.content(), "armed": ["not a digest"]}),
        state_event({**BEAT.content(), "armed": DIGEST}),
        state_event({**BEAT.content(), "armed": [DIGEST] * 257}),
        state_event({**BEAT.content(), "stopping": "yes"}),
        None,
        [],
        "org.blossom.crew",
    ],
)
def test_what_is_not_a_members_heartbeat_is_ignored(event: Any) -> None:
    assert parse_heartbeat(event, members=MEMBERS) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON, st.sampled_from([A, B, "@x:y", ""]), st.sampled_from([A, B, "", None]))
def test_hostile_content_never_raises(content: Any, sender: str, key: str | None) -> None:
    parse_heartbeat(state_event(content, sender=sender, state_key=key), members=MEMBERS)
    parse_heartbeat(content, members=MEMBERS)


@given(
    st.integers(1, 221_845_392_000_000),
    st.integers(1_000, 3_600_000),
    st.from_regex(r"[!-~]{1,64}", fullmatch=True),
    st.sets(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), max_size=5),
    st.booleans(),
)
def test_every_heartbeat_round_trips(
    ms: int, interval_ms: int, version: str, armed: set[str], stopping: bool
) -> None:
    beat = Heartbeat(
        B,
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms),
        timedelta(milliseconds=interval_ms),
        version,
        frozenset(armed),
        stopping,
    )
    assert parse_heartbeat(state_event(beat.content()), members=MEMBERS) == beat


# -- sightings ------------------------------------------------------------------------------


def test_a_heartbeat_counts_from_its_arrival() -> None:
    """Clocks may disagree by up to one interval without effect."""
    ahead = Heartbeat(B, T + 20 * S, BASE, "0.1.0")  # its clock runs 20 s ahead
    assert sighting(ahead, T).seen_at == T
    behind = Heartbeat(B, T - 25 * S, BASE, "0.1.0")
    assert sighting(behind, T).seen_at == T
    assert clock_skew(ahead, T) == 20 * S


def test_a_stale_heartbeat_never_makes_a_dead_member_look_alive() -> None:
    """Held back by federation (or read from room state at start-up): it counts
    from its own time."""
    old = Heartbeat(B, T - 10 * 60 * S, BASE, "0.1.0", armed=frozenset({DIGEST}))
    member = sighting(old, T)
    assert member.seen_at == old.time
    assert member.is_down(Crew((A, B)), T)
    assert member.armed == {DIGEST} and member.interval == BASE


@given(st.integers(-(10**7), 10**7), st.integers(1_000, 3_600_000))
def test_a_sighting_is_never_in_the_future(offset_ms: int, interval_ms: int) -> None:
    beat = Heartbeat(
        B, T + timedelta(milliseconds=offset_ms), timedelta(milliseconds=interval_ms), "v"
    )
    seen = sighting(beat, T).seen_at
    assert seen is not None and seen <= T


# -- the rate ----------------------------------------------------------------------------


def test_fast_while_armed_or_after_a_command_slow_otherwise() -> None:
    assert interval(base=BASE, armed=True, last_command=None, now=T) == BASE
    assert interval(base=BASE, armed=False, last_command=None, now=T) == IDLE_INTERVAL
    assert interval(base=BASE, armed=False, last_command=T, now=T + AWAKE_FOR - S) == BASE
    assert interval(base=BASE, armed=False, last_command=T, now=T + AWAKE_FOR) == IDLE_INTERVAL
    slow = timedelta(minutes=20)
    assert interval(base=slow, armed=False, last_command=None, now=T) == slow  # never faster


def test_idle_rate_keeps_the_rooms_history_small() -> None:
    """The decision in docs/crew.md: ~144 state events a day per control room idle."""
    assert timedelta(days=1) / IDLE_INTERVAL == 144
    assert timedelta(hours=1) / BASE == 120


def test_when_the_next_heartbeat_is_due() -> None:
    last = Heartbeat(A, T, BASE, "0.1.0")
    same = Heartbeat(A, T + 5 * S, BASE, "0.1.0")
    assert next_due(None, same) == same.time  # first one: at once
    assert next_due(last, same) == T + BASE
    armed = Heartbeat(A, T + 5 * S, BASE, "0.1.0", armed=frozenset({DIGEST}))
    assert next_due(last, armed) == armed.time  # what it says changed
    idle_last = Heartbeat(A, T, IDLE_INTERVAL, "0.1.0")
    assert next_due(idle_last, same) == same.time  # speeding up
    # Slowing down: the next one still comes when the last one promised it (the
    # others count down from the interval it announced), and announces the new rate.
    assert next_due(last, Heartbeat(A, T + 5 * S, IDLE_INTERVAL, "0.1.0")) == T + BASE
    assert next_due(idle_last, Heartbeat(A, T + 5 * S, IDLE_INTERVAL, "0.1.0")) == (
        T + IDLE_INTERVAL
    )
    stop = Heartbeat(A, T + 5 * S, BASE, "0.1.0", stopping=True)
    assert next_due(last, stop) == stop.time
    # The roll call: a command read since the last heartbeat → at once.
    assert next_due(last, same, last_command=T + 2 * S) == same.time
    assert next_due(last, same, last_command=T - 2 * S) == T + BASE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([BASE, IDLE_INTERVAL, 2 * S]), min_size=1, max_size=20))
def test_a_member_beating_when_due_never_looks_down(rates: list[timedelta]) -> None:
    """Whatever rate it wants at each beat (faster, slower), a member that
    publishes at next_due is never counted down by the others."""
    crew = Crew((A, B), 2 * S)
    last = Heartbeat(A, T, rates[0], "0.1.0")
    for rate in rates[1:]:
        due = next_due(last, Heartbeat(A, last.time, rate, "0.1.0"))
        due = max(due, last.time)
        seen = sighting(last, last.time)
        assert not seen.is_down(crew, due), (last.interval, rate)
        last = Heartbeat(A, due, rate, "0.1.0")


def test_missed_the_instant() -> None:
    assert missed([], T, BASE)
    assert missed([T - 91 * S], T, BASE)
    assert not missed([T - 90 * S], T, BASE)
    # Heartbeats after the instant do not hide the gap before it.
    assert missed([T - 5 * 60 * S, T + 5 * S], T, BASE)
