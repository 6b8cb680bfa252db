"""A crew member reads its rooms once ahead of a look (bot/runs/warmup.py): a
first ``/messages`` in a room joined over federation makes the homeserver
backfill from another server, seconds per room, and the standby's look at
instant + grace timed out and sent a second copy (benchmarks/scaleout.py). The
fake crew of test_runs_duty and the fake Matrix; milliseconds each."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from fakes import BOT, T0, kit
from test_runs_duty import OTHER, R1, R2, FakeCrew, _turns, crew_scenario

from bot.crew.link import CrewLink
from bot.crew.members import Crew

PREPARE = timedelta(seconds=1)  # the kit's prepare_seconds


@dataclass
class WatchedCrew(FakeCrew):
    """Says when it was asked to read ahead."""

    asked: asyncio.Event = field(default_factory=asyncio.Event)
    learned: list[tuple[str, ...]] = field(default_factory=list)

    async def learn_members(self, room_ids: Sequence[str]) -> None:
        self.learned.append(tuple(room_ids))

    def warm(self, room_ids: Sequence[str]) -> None:
        super().warm(room_ids)
        self.asked.set()


async def asked(crew: WatchedCrew, times: int) -> None:
    """Wait until it was asked ``times`` (the store's calls run on a thread:
    a few turns of the loop are not enough)."""
    async with asyncio.timeout(5):
        while len(crew.warmed) < times:
            crew.asked.clear()
            await crew.asked.wait()


async def test_a_standby_reads_its_rooms_ahead_at_arming_and_at_preparation(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], crew=lambda hs: WatchedCrew(hs)) as k:
        k.write(crew_scenario([OTHER, BOT]))
        await k.arm("cs")
        await k.idle()
        assert [sorted(w) for w in k.crew.warmed] == [[R1, R2]]  # at !arm
        # Member lists too, so the preparation just before the instant finds
        # them loaded (it waits for them: a fresh process's first room was late).
        assert [sorted(m) for m in k.crew.learned] == [[R1, R2]]
        k.clock.set(T0 - PREPARE)
        firing = asyncio.ensure_future(k.timers.fire_due())
        await asked(k.crew, 2)
        await _turns()
        assert [sorted(w) for w in k.crew.warmed][1:] == [[R1, R2]]  # the stage prepared
        assert k.crew.looked == [] and k.hs.stages(R1) == []  # not a look: nothing decided
        k.clock.set(T0 + timedelta(seconds=5))
        await asyncio.wait_for(firing, 5)
        await k.idle()
        assert sorted(k.crew.looked) == [R1, R2]
        assert k.hs.stages(R1) == [("one", "text")]


async def test_the_member_on_duty_reads_no_room_at_preparation(tmp_path: Path) -> None:
    """Its sends leave at the instant: no read beside them."""
    async with kit(tmp_path, opted_in=[R1, R2], crew=lambda hs: WatchedCrew(hs)) as k:
        k.write(crew_scenario([BOT, OTHER]))
        await k.arm("cs")
        await k.idle()
        await k.at(T0)
        assert [w for w in k.crew.warmed[1:] if w] == []
        assert k.hs.stages(R1) == [("one", "text")] and k.hs.stages(R2) == [("one", "text")]


@dataclass
class HangingCrew(WatchedCrew):
    """Its reads ahead never finish (the other homeserver down mid-backfill)."""

    hanging: list[asyncio.Task[None]] = field(default_factory=list)

    def warm(self, room_ids: Sequence[str]) -> None:
        super().warm(room_ids)
        self.hanging.append(asyncio.ensure_future(asyncio.Event().wait()))  # type: ignore[arg-type]


async def test_a_read_ahead_that_never_ends_does_not_hold_up_the_release(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], crew=lambda hs: HangingCrew(hs)) as k:
        k.write(crew_scenario([OTHER, BOT]))
        await k.arm("cs")
        k.clock.set(T0 - PREPARE)
        firing = asyncio.ensure_future(k.timers.fire_due())
        await asked(k.crew, 2)
        assert len(k.crew.warmed) == 2
        k.clock.set(T0 + timedelta(seconds=5))
        await asyncio.wait_for(firing, 1)
        await k.idle()
        assert k.hs.stages(R1) == [("one", "text")] and k.hs.stages(R2) == [("one", "text")]
        for t in k.crew.hanging:
            t.cancel()


class SlowMatrix:
    """recent_events: the first read of a room waits until released, counted."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.reads: list[str] = []
        self.gate = asyncio.Event()
        self.fail = fail or set()
        self.at_once = 0
        self.most = 0

    async def recent_events(self, room_id: str, *, timeout_s: float = 10.0) -> list[object] | None:
        self.reads.append(room_id)
        self.at_once += 1
        self.most = max(self.most, self.at_once)
        try:
            await self.gate.wait()
        finally:
            self.at_once -= 1
        if room_id in self.fail:
            raise RuntimeError("boom")
        return []


class _Roster:
    crew = Crew((BOT, OTHER), timedelta(seconds=1))
    me = BOT


async def test_the_link_reads_each_room_once_a_few_at_a_time_and_only_logs_failures(
    caplog: object,
) -> None:
    matrix = SlowMatrix(fail={"!bad:fake"})
    link = CrewLink(roster=_Roster(), matrix=matrix)  # type: ignore[arg-type]
    rooms = [f"!r{i}:fake" for i in range(10)] + ["!bad:fake"]
    link.warm(rooms)  # returns at once
    link.warm(rooms)  # being read: not read again
    await _turns()
    assert matrix.most == 4 and len(matrix.reads) == 4
    matrix.gate.set()
    await _turns()
    assert sorted(matrix.reads) == sorted(rooms)
    link.warm(rooms)  # read already, except the one that failed
    await _turns()
    assert matrix.reads.count("!bad:fake") == 2 and matrix.reads.count("!r0:fake") == 1
    assert "!bad:fake" in caplog.text  # type: ignore[attr-defined]
