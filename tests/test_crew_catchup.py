"""After an outage of its homeserver, a member's retry looks in the room only
once federation has caught up (bot/runs/covering.py ``_caught_up``): its
heartbeats accepted again, then a heartbeat another member made since read
(the others' events of the outage, a covering copy among them, reach its
homeserver before it). A fake crew and a ManualClock."""

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


async def test_an_outage_longer_than_the_bound_still_waits_for_federation() -> None:
    """Cut off for ten seconds from a second after the instant: it used to
    stop waiting 2 × 3 heartbeats (six seconds) after the look began, before it
    was back, and re-send on top of the standby's copy that its
    homeserver had not received yet (the federated test, 2 of 8 runs)."""
    clock = ManualClock(T + 1000 * MS)
    back = T + 10_000 * MS
    # The other's heartbeats of the outage arrive after it, with their own
    # (old) times; the first made after it was back arrives 600 ms later.
    crew = FakeCrew(clock, back, [(T + 5000 * MS, back + 300 * MS),
                                  (back + 500 * MS, back + 600 * MS)])
    task = asyncio.ensure_future(_caught_up(Ctx(clock), crew, T))  # type: ignore[arg-type]
    while not task.done():
        await asyncio.sleep(0)
        clock.advance(100 * MS)
        assert clock.now() < T + timedelta(seconds=30), "never caught up"
    await task
    assert clock.now() >= back + 600 * MS


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
    assert clock.now() >= back + 1200 * MS


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


async def test_federation_that_resumes_late_is_still_waited_for() -> None:
    """Back at last, its homeserver heard from the others only 12 s later (their
    homeserver's backoff, a loaded machine): six seconds of waiting (2 × 3
    heartbeats at 1 s) were not enough, it re-sent (the federated test, 1 of 8)."""
    back = T + 10_000 * MS
    clock = ManualClock(back + 100 * MS)
    crew = FakeCrew(clock, back, [(back + 12_000 * MS, back + 12_100 * MS)])
    task = asyncio.ensure_future(_caught_up(Ctx(clock), crew, T))  # type: ignore[arg-type]
    while not task.done():
        await asyncio.sleep(0)
        clock.advance(100 * MS)
        assert clock.now() < T + timedelta(seconds=60), "never caught up"
    await task
    assert clock.now() >= back + 12_100 * MS
