"""A standby that finds the member on duty still delivering waits for it
instead of covering beside it (bot/runs/covering.py ``_wave``,
bot/runs/duty.py ``Follow``): it covers only what is still missing once every
member ahead is down or no new copy has appeared for a grace. Fakes and a
ManualClock; the sender is slower than the grace, as a replicated crew's is
under load (benchmarks.scaleout: 2,315 rooms sent twice in 5 rounds)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from bot import DISPATCH_KEY
from bot.clock import ManualClock
from bot.crew import Crew
from bot.crew.duty import CrewView
from bot.crew.members import Member
from bot.delivery import Message, Outcome, Release
from bot.ledger import Part
from bot.runs.covering import _wave
from bot.runs.duty import Follow, Wave

ON_DUTY, ME = "@blossom:north.example", "@blossom:south.example"
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
S = timedelta(seconds=1)
GRACE = 20 * S
ROOMS = tuple(f"!r{i}:north" for i in range(10))
RELEASE = Release(
    1, "sc", "hk", "call", T, ROOMS,
    (Message(Part.TEXT, "m.room.message", {"body": "go"}),), run_key="$arm",
)


def test_follow_waits_while_copies_keep_appearing() -> None:
    follow = Follow(GRACE, 10, T).seen(6, T + GRACE)
    assert follow.patient(T + GRACE + 5 * S)
    follow = follow.seen(3, T + GRACE + 5 * S)
    assert follow.patient(T + GRACE + 24 * S)
    assert not follow.patient(T + GRACE + 25 * S), "no copy for a grace: cover"


def test_follow_covers_at_once_when_nothing_appeared_since_the_instant() -> None:
    """The member on duty up but not delivering (cut off from the rooms, refused):
    covered at grace, as before."""
    assert not Follow(GRACE, 10, T).seen(10, T + GRACE).patient(T + GRACE)


def test_follow_is_done_when_nothing_is_missing() -> None:
    assert not Follow(GRACE, 10, T).seen(0, T + GRACE).patient(T + GRACE)


@dataclass
class World:
    """The member on duty delivers one room every ``every``, until ``stop_after``
    rooms (then it stops sending; ``dies``: its heartbeats stop too).
    ``heard_until``: this bot's view holds its heartbeats only as of then (its
    sync held for its own fan-out), until ``refresh`` reads the rooms."""

    clock: ManualClock
    every: timedelta
    stop_after: int = len(ROOMS)
    dies: bool = False
    heard_until: datetime | None = None
    deaf: bool = False  # and reading the rooms again does not help
    crew: Crew = field(default_factory=lambda: Crew((ON_DUTY, ME), S))
    me: str = ME
    sent: list[str] = field(default_factory=list)  # what the standby sent
    copies_of: Release = RELEASE  # whose copies the member on duty makes
    refreshed: list[datetime] = field(default_factory=list)

    def delivered(self) -> int:
        return min(int((self.clock.now() - T) / self.every), self.stop_after)

    def view(self) -> CrewView:
        seen = self.clock.now()
        if self.heard_until is not None:
            seen = max([self.heard_until, *self.refreshed])
        if self.dies:
            seen = min(seen, T + self.stop_after * self.every)
        return CrewView(self.crew, {ON_DUTY: Member(ON_DUTY, seen_at=seen)}, me=ME)

    async def refresh(self) -> None:
        if not self.deaf:
            self.refreshed.append(self.clock.now())

    def joined(self, room_id: str) -> frozenset[str]:
        return frozenset((ON_DUTY, ME))

    async def recent(self, room_id: str) -> list[object] | None:
        if ROOMS.index(room_id) >= self.delivered():
            return []
        key = self.copies_of.key(room_id, Part.TEXT)
        return [
            {
                "type": "m.room.message",
                "sender": ON_DUTY,
                "event_id": f"$e{room_id}",
                "origin_server_ts": 1,
                "content": {"body": "go", DISPATCH_KEY: key.content_tag()},
            }
        ]

    # The dispatcher and the ledger of the context.
    stopping = False

    async def release(self, releases: Sequence[Release], **_: Any) -> list[Outcome]:
        for r in releases:
            self.sent += r.rooms
        return [Outcome(r, delivered=list(r.rooms)) for r in releases]

    async def delivery(self, key: object) -> None:
        return None


def _setup(world: World) -> tuple[Any, Any]:
    scenario = SimpleNamespace(
        failover=SimpleNamespace(grace=GRACE), city=lambda _id: SimpleNamespace(crew=None)
    )
    loaded = SimpleNamespace(sha256=None)
    armed = SimpleNamespace(clock=world.clock, scenario=scenario, loaded=loaded)
    ctx = SimpleNamespace(
        clock=world.clock, armed={1: armed}, dispatcher=world, store=SimpleNamespace(ledger=world)
    )
    return ctx, armed


async def _run(world: World, release: Release = RELEASE) -> list[Outcome]:
    ctx, armed = _setup(world)
    task = asyncio.ensure_future(
        _wave(ctx, world, armed, Wave(T + GRACE, release, 1), lambda r: r, priority=release.final)
    )
    while not task.done():
        await asyncio.sleep(0)
        world.clock.advance(100 * timedelta(milliseconds=1))
        assert world.clock.now() < T + 120 * S, "the wave never ended"
    return task.result()


@pytest.mark.parametrize("every_s", [3, 4])
async def test_a_standby_does_not_send_beside_a_slow_member_on_duty(every_s: int) -> None:
    """The member on duty needs 30-40 s for ten rooms, grace is 20 s: the
    standby used to send the 3-5 rooms not yet delivered at grace, and the
    member on duty sent them as well."""
    world = World(ManualClock(T), every_s * S)
    await _run(world)
    assert world.sent == []


async def test_a_standby_whose_view_lags_reads_the_heartbeats_again_before_covering() -> None:
    """Its sync held for its own fan-out, the standby's view had the member on
    duty down while it was still sending: the standby covered the rooms it had
    not reached yet, and both copies landed (benchmarks.scaleout, replicated:
    60 of 1,000 rooms twice after the control watch read heartbeats too)."""
    # One room every 6 s, a look every 5 s: some looks find nothing new, and
    # then only the heartbeats (read again) say it is still up.
    world = World(ManualClock(T), 6 * S, heard_until=T)
    await _run(world)
    assert world.sent == []
    assert world.refreshed, "the control rooms were read again"


async def test_copies_still_arriving_keep_a_standby_waiting_whatever_the_heartbeats_say() -> None:
    """Heartbeats crossing a loaded federation 6-9 s late at 5 s heartbeats:
    the member on duty looked down even in the control rooms' state while its
    copies kept arriving, and the standby covered its last 16 rooms
    (benchmarks.scaleout, replicated, 1 round of 5)."""
    # Up at the standby's first look, then its heartbeats stop reaching it.
    world = World(ManualClock(T), 3 * S, heard_until=T + GRACE, deaf=True)
    await _run(world)
    assert world.sent == []


async def test_a_standby_asks_nothing_more_of_a_member_it_sees_up() -> None:
    world = World(ManualClock(T), 3 * S)
    await _run(world)
    assert world.sent == [] and world.refreshed == []


async def test_a_standby_covers_what_a_member_that_stopped_sending_left() -> None:
    """Seven rooms delivered, then nothing (up, but not sending): the standby
    covers the other three a grace after the last copy appeared."""
    world = World(ManualClock(T), 3 * S, stop_after=7)
    await _run(world)
    assert world.sent == list(ROOMS[7:])
    assert world.clock.now() <= T + 21 * S + GRACE + 6 * S


async def test_a_standby_covers_at_once_when_the_member_on_duty_dies() -> None:
    world = World(ManualClock(T), 3 * S, stop_after=7, dies=True)
    await _run(world)
    assert world.sent == list(ROOMS[7:])
    # Down three heartbeats (3 s) after its last, at 21 s; its last copy seen at
    # the look of 25 s: covered at the first look that finds nothing new (30 s).
    assert world.clock.now() <= T + 21 * S + 3 * S + 6 * S + S


async def test_an_abort_is_covered_at_grace_even_beside_a_member_still_sending() -> None:
    """A second "stop" costs nothing; a stop a grace late might."""
    final = Release(
        1, "sc", "hk", "!abort", T, ROOMS,
        (Message(Part.TEXT, "m.room.message", {"body": "stop"}),), final=True, run_key="$arm",
    )
    world = World(ManualClock(T), 3 * S, copies_of=final)
    await _run(world, final)
    assert world.clock.now() < T + GRACE + S
    assert world.sent == list(ROOMS[6:])  # the rooms without a copy yet, at once
