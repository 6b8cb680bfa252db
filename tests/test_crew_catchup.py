"""After an outage of its homeserver, a member's retry looks in the room only
once federation has caught up (bot/runs/covering.py ``_caught_up``): its
heartbeats accepted again, a heartbeat another member made since read, and then
one more. The first may arrive in the catch-up beside the covering copy, which
the room's timeline may not hold yet. A fake crew and a ManualClock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from test_crew_roster import FakePort, settle

from bot.clock import ManualClock
from bot.crew import Crew
from bot.crew.duty import CrewView
from bot.crew.members import Member
from bot.crew.roster import Roster
from bot.retry import SendFailure
from bot.runs.covering import _caught_up

ME, OTHER = "@blossom:south.example", "@blossom:north.example"
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
CREW = Crew((OTHER, ME), timedelta(seconds=1))
R1 = "!control:north"


@dataclass
class Ctx:
    clock: ManualClock


@dataclass
class FakeCrew:
    clock: ManualClock
    back: datetime  # when this member's heartbeats are accepted again
    beats: list[tuple[datetime, datetime]] = field(default_factory=list)  # (made, read)
    crew: Crew = CREW
    me: str = ME

    def view(self) -> CrewView:
        return CrewView(self.crew, {OTHER: Member(OTHER, seen_at=T)}, me=ME)

    def missed(self, at: datetime) -> bool:
        return self.cut_at <= at < self.back

    def cut_off_since(self, at: datetime) -> bool:
        return self.back > at

    cut_at: datetime = T

    def heard_since(self, at: datetime) -> bool:
        now = self.clock.now()
        return any(made > at and read <= now for made, read in self.beats)


async def test_the_look_waits_for_a_heartbeat_after_the_catch_up() -> None:
    clock = ManualClock(T + 5000 * MS)
    back = T + 6000 * MS
    # The catch-up brings the other's latest heartbeat 200 ms after this one is
    # back; its next, made a second later, arrives 100 ms after it is made.
    crew = FakeCrew(clock, back, [(back + 100 * MS, back + 200 * MS),
                                  (back + 1100 * MS, back + 1200 * MS)])
    task = asyncio.ensure_future(_caught_up(Ctx(clock), crew, T))  # type: ignore[arg-type]
    while not task.done():
        await asyncio.sleep(0)
        clock.advance(100 * MS)
        assert clock.now() < T + timedelta(seconds=30), "never caught up"
    await task
    assert clock.now() >= back + 1200 * MS  # not on the catch-up's heartbeat alone


async def test_a_member_already_back_when_it_looks_still_waits_for_federation() -> None:
    """Its heartbeats were accepted again a moment before the retry looked: it
    used to look at once (only "missed now" was checked) and re-send on top of
    the standby's copy its homeserver had not received yet."""
    back = T + 6000 * MS
    clock = ManualClock(back + 100 * MS)
    crew = FakeCrew(clock, back, [(back + 1100 * MS, back + 1200 * MS),
                                  (back + 2100 * MS, back + 2200 * MS)])
    task = asyncio.ensure_future(_caught_up(Ctx(clock), crew, T))  # type: ignore[arg-type]
    while not task.done():
        await asyncio.sleep(0)
        clock.advance(100 * MS)
        assert clock.now() < T + timedelta(seconds=30), "never caught up"
    await task
    assert clock.now() >= back + 2200 * MS


async def test_the_roster_knows_it_was_cut_off_after_an_instant() -> None:
    clock = ManualClock(T)
    port = FakePort(clock)
    r = Roster(crew=Crew((ME, OTHER), timedelta(seconds=30)), me=ME, rooms=(R1,), port=port,
               clock=clock, version="0.1.0", armed=lambda: {"ab" * 32})
    r.start()
    await settle()
    instant = T + timedelta(seconds=10)
    port.failures[R1] = [SendFailure(None, message="ClientConnectorError")] * 20
    for _ in range(8):  # four minutes cut off: failing at least every interval
        clock.advance(timedelta(seconds=30))
        await settle()
    assert r.cut_off_since(instant) and r.missed(clock.now())
    port.failures[R1] = []
    clock.advance(timedelta(seconds=30))
    await settle()
    assert not r.missed(clock.now())  # accepted again
    assert r.cut_off_since(instant)  # but it was cut off after the instant
    assert not r.cut_off_since(clock.now())
    await r.halt()
