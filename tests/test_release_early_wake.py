"""A release timer that wakes early by its run's clock still sends its stage.

A drill's clock (ScaledClock) magnifies the smallest disagreement between the
wall clock APScheduler fires by and the monotonic clock the run reads: 10 ms at
x100 is a second of the run. The release job used to re-set its own job id when
woken early; APScheduler then skipped that job (the instance setting it was still
running: max_instances=1) and the stage was never sent (seen in the crew demo).
Real APScheduler (bot.schedule.Timers) and the real run manager over fakes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import kit, scenario

import bot.clock
from bot.clock import ScaledClock, SystemClock
from bot.schedule import Timers

DRILL = "!drill:fake"
SPEED = 100.0
LAG = timedelta(seconds=1.5)  # of the run's time: 15 ms of wall time at x100


class LaggingClock:
    """A scaled clock whose reading trails the wall times it maps to by ``LAG``:
    the timer fires (by the wall clock) when the run's clock still reads 1.5 s
    before the instant."""

    def __init__(self, epoch: datetime, speed: float) -> None:
        self._inner = ScaledClock(epoch, speed)
        self._epoch, self._speed = epoch, speed
        self._start_wall = datetime.now(UTC)

    def now(self) -> datetime:
        return self._inner.now() - LAG

    def to_wall(self, instant: datetime) -> datetime:
        return self._start_wall + (instant - self._epoch) / self._speed

    async def sleep_until(self, instant: datetime) -> None:
        await self._inner.sleep_until(instant + LAG)


async def test_a_stage_woken_early_by_its_drill_clock_is_still_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.runs.arming.ScaledClock", LaggingClock)
    timers = Timers()
    timers.start()
    try:
        async with kit(tmp_path, clock=SystemClock(), timers=timers) as k:
            k.write(
                scenario(
                    "early",
                    {"town": ["!a:fake"]},
                    [
                        {"id": "one", "at": "0s", "text": "first"},
                        {"id": "two", "at": "+2m", "text": "second"},
                    ],
                    start=datetime.now(UTC) + timedelta(days=1),
                )
            )
            out = await k.arm(
                "early", drill_room=DRILL, drill_speed=SPEED, drill_lead=timedelta(seconds=0.5)
            )
            assert out.run_id is not None, out.text
            # Stage two is 120 s of the run after one: 1.2 s of wall time.
            for _ in range(100):
                if len(k.hs.stages(DRILL)) == 2:
                    break
                await asyncio.sleep(0.05)
            assert k.hs.stages(DRILL) == [("one", "text"), ("two", "text")]
    finally:
        timers.shutdown()


def test_a_scaled_clock_maps_to_the_wall_from_its_own_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The monotonic clock falling 50 ms behind the wall clock (NTP slewing) must
    not move the wall times a scaled clock hands to the scheduler: at x100 that
    would be 5 s of the run."""
    clock = ScaledClock(datetime(2030, 1, 1, tzinfo=UTC), SPEED)
    real = time.monotonic
    monkeypatch.setattr(bot.clock.time, "monotonic", lambda: real() - 0.05)
    gap = abs((clock.to_wall(clock.now()) - datetime.now(UTC)).total_seconds())
    assert gap < 0.01, gap
