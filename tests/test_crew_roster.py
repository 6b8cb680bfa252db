"""The roster (bot/crew/roster.py) against a fake homeserver port and a ManualClock:
its own heartbeat's rate, reading the others', the 403 report, retries, and a
bounded stop. Milliseconds, no server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.clock import ManualClock
from bot.crew import Crew, Heartbeat
from bot.crew.heartbeat import AWAKE_FOR, EVENT_TYPE, IDLE_INTERVAL
from bot.crew.publish import HeartbeatFailed, PublishProblem
from bot.crew.roster import Roster
from bot.retry import RetryPolicy, SendFailure

A, B, C = "@blossom:north.example", "@blossom:south.example", "@blossom:west.example"
R1, R2 = "!control1:north.example", "!control2:south.example"
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
S = timedelta(seconds=1)
BASE = 30 * S
CREW = Crew((A, B, C), BASE)
DIGEST = "ab" * 32
FORBIDDEN = SendFailure(403, "M_FORBIDDEN")


class FakePort:
    """Records every heartbeat put; fails or hangs as a test says."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.puts: list[tuple[datetime, str, str, dict[str, Any]]] = []
        self.failures: dict[str, list[SendFailure]] = {}  # room -> next failures, in order
        self.hang = False
        self.state: dict[str, list[Any]] = {}
        self.read_failure: dict[str, SendFailure] = {}
        self.in_flight = 0

    async def publish(self, room_id: str, state_key: str, content: Mapping[str, Any]) -> str:
        self.in_flight += 1
        try:
            if self.hang:
                await asyncio.Event().wait()
            queue = self.failures.get(room_id)
            if queue:
                raise HeartbeatFailed(queue.pop(0))
            self.puts.append((self.clock.now(), room_id, state_key, dict(content)))
            return f"$hb{len(self.puts)}"
        finally:
            self.in_flight -= 1

    async def heartbeats(self, room_id: str) -> list[Any]:
        if self.hang:
            await asyncio.Event().wait()
        if room_id in self.read_failure:
            raise HeartbeatFailed(self.read_failure[room_id])
        return self.state.get(room_id, [])

    def times(self, room_id: str = R1) -> list[datetime]:
        return [t for t, room, _, _ in self.puts if room == room_id]


async def settle() -> None:
    """Let the roster's task run until it waits on the clock again."""
    for _ in range(20):
        await asyncio.sleep(0)


def roster(
    clock: ManualClock,
    port: FakePort,
    *,
    rooms: tuple[str, ...] = (R1,),
    armed: frozenset[str] = frozenset(),
    reports: list[PublishProblem] | None = None,
    me: str = A,
) -> Roster:
    async def report(problem: PublishProblem) -> None:
        if reports is not None:
            reports.append(problem)

    return Roster(
        crew=CREW,
        me=me,
        rooms=rooms,
        port=port,
        clock=clock,
        version="0.1.0",
        armed=lambda: armed,
        report=report,
        policy=RetryPolicy(base_s=0.5, cap_s=10.0),
    )


def beat_event(
    sender: str,
    time_: datetime,
    *,
    event_id: str,
    interval: timedelta = BASE,
    stopping: bool = False,
    state_key: str | None = None,
) -> dict[str, Any]:
    content = Heartbeat(sender, time_, interval, "0.1.0", stopping=stopping).content()
    return {
        "type": EVENT_TYPE,
        "state_key": sender if state_key is None else state_key,
        "sender": sender,
        "event_id": event_id,
        "origin_server_ts": 0,
        "content": content,
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T)


@pytest.fixture
def port(clock: ManualClock) -> FakePort:
    return FakePort(clock)


# -- this bot's heartbeat: where and how often -------------------------------------------


async def test_first_heartbeat_at_once_in_every_control_room(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port, rooms=(R1, R2))
    r.start()
    await settle()
    assert [(room, key) for _, room, key, _ in port.puts] == [(R1, A), (R2, A)]
    content = port.puts[0][3]
    assert content == {
        "time": 1796490000000,
        "interval": int(IDLE_INTERVAL / timedelta(milliseconds=1)),
        "version": "0.1.0",
        "armed": [],
        "started": 1796490000000,  # this run's start: the others answer it
    }
    await r.halt()


async def test_idle_beats_every_ten_minutes_armed_every_heartbeat(
    clock: ManualClock, port: FakePort
) -> None:
    idle = roster(clock, port)
    idle.start()
    await settle()
    clock.advance(IDLE_INTERVAL - S)
    await settle()
    assert port.times() == [T]
    clock.advance(S)
    await settle()
    assert port.times() == [T, T + IDLE_INTERVAL]
    await idle.halt()

    armed_port = FakePort(clock)
    armed = roster(clock, armed_port, armed=frozenset({DIGEST}))
    start = clock.now()
    armed.start()
    for _ in range(3):
        await settle()
        clock.advance(BASE)
    await settle()
    assert armed_port.times() == [start + k * BASE for k in range(4)]
    assert armed_port.puts[0][3]["armed"] == [DIGEST]
    assert armed_port.puts[0][3]["interval"] == 30_000
    await armed.halt()


async def test_arming_is_published_at_once_when_nudged(clock: ManualClock, port: FakePort) -> None:
    digests: set[str] = set()
    r = Roster(
        crew=CREW, me=A, rooms=(R1,), port=port, clock=clock, version="0.1.0", armed=lambda: digests
    )
    r.start()
    await settle()
    clock.advance(5 * S)
    digests.add(DIGEST)
    r.nudge()
    await settle()
    assert port.times() == [T, T + 5 * S]
    assert port.puts[-1][3]["armed"] == [DIGEST] and port.puts[-1][3]["interval"] == 30_000
    await r.halt()


async def test_roll_call_beats_at_once_then_fast_for_a_while(
    clock: ManualClock, port: FakePort
) -> None:
    """A control command read: every member beats at once, so a silent one is
    known down within three heartbeats even while idle."""
    r = roster(clock, port)
    r.start()
    await settle()
    clock.advance(2 * S)
    r.command_read()
    await settle()
    assert port.times() == [T, T + 2 * S]
    assert port.puts[-1][3]["interval"] == 30_000  # awake: the fast rate
    clock.advance(BASE)
    await settle()
    assert port.times()[-1] == T + 2 * S + BASE
    assert r.view().roll_call == T + 2 * S
    # AWAKE_FOR after the command it slows down again.
    clock.set(T + 2 * S + AWAKE_FOR)
    await settle()
    last = port.puts[-1]
    assert last[3]["interval"] == int(IDLE_INTERVAL / timedelta(milliseconds=1))
    count = len(port.puts)
    clock.advance(BASE)
    await settle()
    assert len(port.puts) == count
    await r.halt()


# -- the others' heartbeats ----------------------------------------------------------------


async def test_a_members_heartbeat_makes_it_up_until_three_intervals_pass(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port)
    assert r.view().is_down(B, T)  # never seen
    assert r.ingest(R1, [beat_event(B, T, event_id="$b1")]) == 1
    view = r.view()
    assert not view.is_down(B, T) and view.on_duty((B, A), {A, B}, T) == B
    assert r.heartbeat_of(B) is not None and r.heartbeat_of(B).version == "0.1.0"  # type: ignore[union-attr]
    assert not r.view().is_down(B, T + 3 * BASE)
    assert r.view().is_down(B, T + 3 * BASE + timedelta(milliseconds=1))
    assert not r.view().is_down(A, T + timedelta(days=1))  # itself: always up


async def test_stopping_is_down_at_once(clock: ManualClock, port: FakePort) -> None:
    r = roster(clock, port)
    r.ingest(R1, [beat_event(B, T, event_id="$b1")])
    clock.advance(S)
    r.ingest(R1, [beat_event(B, T + S, event_id="$b2", stopping=True)])
    assert r.view().is_down(B, T + S)
    assert r.view().on_duty((B, A), {A, B}, T + S) == A


@pytest.mark.parametrize(
    "event",
    [
        beat_event("@mallory:evil.example", T, event_id="$m"),  # not a member, own key
        beat_event("@mallory:evil.example", T, event_id="$m", state_key=B),  # faking B
        beat_event(C, T, event_id="$c", state_key=B),  # a member in another's slot
        {**beat_event(B, T, event_id="$x"), "content": {"time": "soon"}},
        {**beat_event(B, T, event_id="$x"), "content": {}},  # a retired member's slot
        {**beat_event(B, T, event_id="$x"), "type": "m.room.message"},
        {"type": EVENT_TYPE},
        None,
        "org.blossom.crew",
        42,
    ],
)
async def test_what_is_not_a_members_heartbeat_changes_nothing(
    clock: ManualClock, port: FakePort, event: Any
) -> None:
    r = roster(clock, port)
    assert r.ingest(R1, [event]) == 0
    assert r.view().members == {}


async def test_events_outside_the_control_rooms_and_its_own_are_not_taken(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port)
    assert r.ingest("!city:north.example", [beat_event(B, T, event_id="$b1")]) == 0
    assert r.ingest(R1, [beat_event(A, T, event_id="$a1")]) == 0
    assert r.view().members == {}


async def test_a_hostile_iterable_never_raises(clock: ManualClock, port: FakePort) -> None:
    def events() -> Any:
        yield beat_event(B, T, event_id="$b1")
        raise RuntimeError("relayed garbage")

    r = roster(clock, port)
    assert r.ingest(R1, events()) == 1  # what was read before the failure is kept
    assert not r.view().is_down(B, T)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


HOSTILE_BEATS = st.builds(lambda c: {**beat_event(B, T, event_id="$h"), "content": c}, JSON)


@settings(max_examples=200, deadline=None)
@given(st.lists(JSON | HOSTILE_BEATS))
def test_ingesting_anything_never_raises(events: list[Any]) -> None:
    clock = ManualClock(T)
    r = roster(clock, FakePort(clock))
    r.ingest(R1, events)
    r.view()


async def test_the_same_event_read_again_does_not_make_a_member_fresher(
    clock: ManualClock, port: FakePort
) -> None:
    """Room state read at start and the first (full-state) sync carry the same
    event; read again 80 s later it must not restart the member's clock."""
    r = roster(clock, port)
    event = beat_event(B, T, event_id="$b1")
    r.ingest(R1, [event])
    clock.advance(80 * S)
    assert r.ingest(R1, [event]) == 0
    assert r.view().is_down(B, T + 91 * S)


async def test_a_start_up_read_never_overrides_what_sync_brought(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port)
    r.ingest(R1, [beat_event(B, T, event_id="$b2", stopping=True)])
    port.state[R1] = [beat_event(B, T - S, event_id="$b1")]
    await r.load()
    assert r.view().is_down(B, T)


async def test_a_copy_delayed_in_one_room_does_not_undo_a_newer_one_in_another(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port, rooms=(R1, R2))
    r.ingest(R1, [beat_event(B, T + S, event_id="$b2", stopping=True)])
    r.ingest(R2, [beat_event(B, T, event_id="$b1")])  # older, arrived later by federation
    assert r.view().is_down(B, T + S)
    clock.advance(2 * S)
    r.ingest(R2, [beat_event(B, T + 2 * S, event_id="$b3")])  # back up, read in R2
    assert not r.view().is_down(B, T + 2 * S)


async def test_load_reads_room_state_bounded_and_never_raises(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port, rooms=(R1, R2))
    port.read_failure[R1] = SendFailure(None, message="ClientConnectorError")
    port.state[R2] = [beat_event(C, T, event_id="$c1")]
    await r.load()
    assert set(r.view().members) == {C}
    port.hang = True
    started = time.monotonic()
    await r.load(timeout_s=0.02)
    assert time.monotonic() - started < 1


async def test_refresh_reads_the_state_afresh_as_a_sync_would(
    clock: ManualClock, port: FakePort
) -> None:
    """Before counting a member down while following it, a standby whose sync
    lags (held for its own fan-out, or the long sync after it) reads the
    control rooms' state: a heartbeat made just now counts from its arrival; the
    same one read again is not taken again; a room that cannot be read changes
    nothing and raises nothing."""
    r = roster(clock, port, rooms=(R1, R2))
    r.start()
    await settle()
    r.ingest(R1, [beat_event(B, T, event_id="$b1")])
    clock.advance(4 * BASE)
    assert r.view().is_down(B, clock.now())
    port.state[R1] = [beat_event(B, clock.now() - S, event_id="$b2")]
    port.read_failure[R2] = SendFailure(502)
    await r.refresh()
    assert not r.view().is_down(B, clock.now())
    assert r.view().members[B].seen_at == clock.now()
    clock.advance(4 * BASE)
    await r.refresh()
    assert r.view().is_down(B, clock.now()), "an old heartbeat read again is not news"
    await r.halt()


# -- no power to write the heartbeat, and retries -------------------------------------------


async def test_forbidden_is_reported_once_with_the_fix_and_retried_at_the_heartbeat_rate(
    clock: ManualClock, port: FakePort
) -> None:
    reports: list[PublishProblem] = []
    port.failures[R1] = [FORBIDDEN] * 3
    r = roster(clock, port, rooms=(R1, R2), armed=frozenset({DIGEST}), reports=reports)
    r.start()
    await settle()
    assert [p.room_id for p in reports] == [R1]
    text = str(reports[0])
    assert R1 in text and A in text and "power 50" in text
    assert 'events: {"org.blossom.crew": 0}' in text and "HTTP 403 M_FORBIDDEN" in text
    assert r.problems() == (R1,)
    assert port.times(R2) == [T]  # the other room is not held back
    for _ in range(3):
        clock.advance(BASE)
        await settle()
    assert len(reports) == 1  # once, though it failed three times
    assert port.times(R1) == [T + 3 * BASE]  # the operator fixed it: accepted
    assert r.problems() == ()
    port.failures[R1] = [FORBIDDEN]  # broken again later: said again
    clock.advance(BASE)
    await settle()
    assert len(reports) == 2
    await r.halt()


@pytest.mark.parametrize(
    ("failure", "retried_by"),
    [
        (SendFailure(429, "M_LIMIT_EXCEEDED", retry_after_ms=2000), 2 * S),
        (SendFailure(502), 10 * S),  # full jitter: somewhere within the capped backoff
        (SendFailure(None, message="ClientConnectorError"), 10 * S),
    ],
)
async def test_rate_limits_and_outages_are_retried_by_the_retry_policy(
    clock: ManualClock, port: FakePort, failure: SendFailure, retried_by: timedelta
) -> None:
    reports: list[PublishProblem] = []
    port.failures[R1] = [failure, failure]
    r = roster(clock, port, armed=frozenset({DIGEST}), reports=reports)
    r.start()
    await settle()
    assert port.times() == [] and r.problems() == (R1,)
    for _ in range(int(2 * retried_by / (S / 10)) + 1):
        clock.advance(S / 10)
        await settle()
        if port.times():
            break
    assert port.times() and port.times()[0] <= T + 2 * retried_by
    assert reports == []  # transient: retried, not reported
    assert r.problems() == ()
    await r.halt()


async def test_a_retry_never_waits_longer_than_one_heartbeat(
    clock: ManualClock, port: FakePort
) -> None:
    port.failures[R1] = [SendFailure(429, "M_LIMIT_EXCEEDED", retry_after_ms=600_000)]
    r = roster(clock, port, armed=frozenset({DIGEST}))
    r.start()
    await settle()
    clock.advance(BASE)
    await settle()
    assert port.times() == [T + BASE]
    await r.halt()


async def test_missed_tells_whether_its_heartbeats_reached_the_rooms(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port, armed=frozenset({DIGEST}))
    assert r.missed(T)
    r.start()
    await settle()
    assert not r.missed(T + 90 * S)
    port.failures[R1] = [SendFailure(502)] * 1000
    clock.advance(BASE)
    await settle()
    clock.set(T + 91 * S)
    await settle()
    assert r.missed(T + 91 * S)
    await r.halt()


# -- stopping -------------------------------------------------------------------------------


async def test_stopping_publishes_stopping_everywhere_and_ends_the_heartbeat(
    clock: ManualClock, port: FakePort
) -> None:
    r = roster(clock, port, rooms=(R1, R2), armed=frozenset({DIGEST}))
    r.start()
    await settle()
    clock.advance(5 * S)
    assert await r.stopping() == (R1, R2)
    last = {room: content for _, room, _, content in port.puts[-2:]}
    assert last[R1]["stopping"] is True and last[R2]["stopping"] is True
    count = len(port.puts)
    clock.advance(10 * BASE)
    await settle()
    assert len(port.puts) == count


async def test_stopping_is_bounded_on_a_dead_homeserver(clock: ManualClock, port: FakePort) -> None:
    r = roster(clock, port, rooms=(R1, R2))
    port.hang = True
    r.start()
    await settle()
    assert port.in_flight == 2  # a heartbeat hangs in each room
    started = time.monotonic()
    assert await r.stopping(timeout_s=0.1) == ()
    assert time.monotonic() - started < 1


async def test_stopping_never_raises_on_failures(clock: ManualClock, port: FakePort) -> None:
    r = roster(clock, port, rooms=(R1, R2))
    port.failures[R1] = [FORBIDDEN]
    port.failures[R2] = [SendFailure(None, message="ClientConnectorError")]
    assert await r.stopping() == ()  # never started: still says it is stopping


async def test_a_heartbeat_in_flight_lands_before_the_stopping_one(clock: ManualClock) -> None:
    """Otherwise it could arrive after "stopping" and make the bot look alive."""
    gate = asyncio.Event()
    order: list[bool] = []

    class SlowPort(FakePort):
        async def publish(self, room_id: str, state_key: str, content: Mapping[str, Any]) -> str:
            if not content.get("stopping"):
                await gate.wait()
            order.append(bool(content.get("stopping")))
            return "$e"

    port = SlowPort(clock)
    r = roster(clock, port)
    r.start()
    await settle()
    stop = asyncio.create_task(r.stopping())
    await settle()
    gate.set()
    assert await stop == (R1,)
    assert order == [False, True]


def test_the_roster_is_a_member_of_its_crew(clock: ManualClock, port: FakePort) -> None:
    with pytest.raises(ValueError):
        roster(clock, port, me="@someone:else.example")


class SharedRoom:
    """One control room shared by several rosters: every accepted put is read by
    the others at once, as a sync would bring it."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.readers: list[Roster] = []
        self.count = 0

    def port_for(self) -> FakePort:
        room = self

        class Relay(FakePort):
            async def publish(
                self, room_id: str, state_key: str, content: Mapping[str, Any]
            ) -> str:
                room.count += 1
                event = {
                    "type": EVENT_TYPE,
                    "state_key": state_key,
                    "sender": state_key,
                    "event_id": f"$e{room.count}",
                    "content": dict(content),
                }
                for reader in room.readers:
                    reader.ingest(room_id, [event])
                return str(event["event_id"])

        return Relay(self.clock)


async def test_a_member_that_keeps_beating_never_looks_down(clock: ManualClock) -> None:
    """Idle, then a command (fast for AWAKE_FOR), then idle again: each member
    beats as it promised, so the other never counts it down — in particular
    when it slows down again after the command."""
    room = SharedRoom(clock)
    a = roster(clock, room.port_for(), me=A)
    b = roster(clock, room.port_for(), me=B)
    room.readers[:] = [a, b]
    a.start()
    b.start()
    await settle()
    step = 5 * S
    for tick in range(int(3 * AWAKE_FOR / step)):
        if tick == 12:  # a command read by both at one minute
            a.command_read()
            b.command_read()
        clock.advance(step)
        await settle()
        now = clock.now()
        assert not a.view().is_down(B, now), f"B down in A's view at {now - T}"
        assert not b.view().is_down(A, now), f"A down in B's view at {now - T}"
    await a.halt()
    await b.halt()


async def test_a_slow_report_does_not_hold_back_the_heartbeat(clock: ManualClock) -> None:
    """The caller's report may retry for minutes (a notice to a rate-limited
    control room); the heartbeat in the other rooms goes on meanwhile."""
    port = FakePort(clock)
    port.failures[R1] = [FORBIDDEN] * 100
    stuck = asyncio.Event()

    async def report(problem: PublishProblem) -> None:
        await stuck.wait()

    r = Roster(
        crew=CREW,
        me=A,
        rooms=(R1, R2),
        port=port,
        clock=clock,
        version="0.1.0",
        armed=lambda: {DIGEST},
        report=report,
    )
    r.start()
    await settle()
    for _ in range(3):
        clock.advance(BASE)
        await settle()
    assert port.times(R2) == [T + k * BASE for k in range(4)]
    await r.halt()  # and the stuck report is ended with it


async def test_a_refused_heartbeat_is_retried_at_once_on_a_roll_call(
    clock: ManualClock, port: FakePort
) -> None:
    """Idle, a 403 is retried every 10 minutes; a command read (perhaps the
    operator saying "fixed") retries at once."""
    port.failures[R1] = [FORBIDDEN]
    r = roster(clock, port)
    r.start()
    await settle()
    clock.advance(30 * S)
    await settle()
    assert port.times() == []
    r.command_read()
    await settle()
    assert port.times() == [T + 30 * S]
    await r.halt()


async def test_a_failing_armed_callback_does_not_end_the_heartbeat(
    clock: ManualClock, port: FakePort
) -> None:
    calls = 0

    def armed() -> frozenset[str]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("store closed")
        return frozenset({DIGEST})

    r = Roster(crew=CREW, me=A, rooms=(R1,), port=port, clock=clock, version="v", armed=armed)
    r.start()
    await settle()
    clock.advance(BASE)
    await settle()
    assert port.times() == [T, T + BASE]
    assert port.puts[-1][3]["armed"] == [DIGEST]  # the last digests it knew
    await r.halt()
