"""Timers follow the clock they were set on (bot/schedule.py): a jump of that clock
moves a pending timer, and a timer that has fired is never set again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from bot.schedule import Timers


class OffsetClock:
    """Real time plus an offset the test changes (a jump of the machine's clock)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def to_wall(self, instant: datetime) -> datetime:
        return instant - self.offset

    async def sleep_until(self, instant: datetime) -> None:
        await asyncio.sleep(max(0.0, (instant - self.now()).total_seconds()))


async def test_a_forward_jump_pulls_a_timer_in_and_a_fired_one_stays_fired() -> None:
    clock = OffsetClock()
    timers = Timers()
    timers.start()
    fired: list[str] = []

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            fired.append(name)

        return run

    try:
        timers.set_on("later", clock, clock.now() + timedelta(seconds=30), job("later"))
        timers.set_on("soon", clock, clock.now() + timedelta(seconds=0.2), job("soon"))
        await asyncio.sleep(0.5)
        assert fired == ["soon"]
        clock.offset = timedelta(seconds=29)  # "later" is now due in about a second
        timers.retime()
        await asyncio.sleep(1.3)
        assert fired == ["soon", "later"]
        clock.offset = timedelta(seconds=-60)  # back: neither is set again
        timers.retime()
        await asyncio.sleep(0.3)
        assert fired == ["soon", "later"] and timers.job_ids() == []
    finally:
        timers.shutdown()


async def test_a_backward_jump_pushes_a_timer_out() -> None:
    clock = OffsetClock()
    timers = Timers()
    timers.start()
    fired: list[datetime] = []

    async def run() -> None:
        fired.append(clock.now())

    try:
        due = clock.now() + timedelta(seconds=0.8)
        timers.set_on("t", clock, due, run)
        clock.offset = timedelta(seconds=-0.6)
        timers.retime()
        await asyncio.sleep(1.0)
        assert fired == []  # by the clock it is not time yet
        await asyncio.sleep(0.7)
        assert len(fired) == 1 and fired[0] >= due
    finally:
        timers.shutdown()
