"""The one source of time. No other module reads the wall clock.

The bot uses :class:`SystemClock`; tests and drills inject a :class:`ScaledClock`
(time compressed around an epoch) or a :class:`ManualClock`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...

    async def sleep_until(self, instant: datetime) -> None:
        """Return at (not before) ``instant`` on this clock."""
        ...

    def to_wall(self, instant: datetime) -> datetime:
        """The real (wall-clock) moment at which this clock will read ``instant``;
        what an OS-level timer such as APScheduler must be set to."""
        ...


# A sleep is cut into slices no longer than this so a wall-clock jump
# (NTP step, suspended laptop) is noticed within this many seconds.
_MAX_SLICE_S = 1.0


class SystemClock:
    """Real time. ``sleep_until`` re-reads the clock after each slice, so it
    wakes at the true instant even if the system clock is stepped meanwhile."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def to_wall(self, instant: datetime) -> datetime:
        return instant

    async def sleep_until(self, instant: datetime) -> None:
        while True:
            remaining = (instant - self.now()).total_seconds()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, _MAX_SLICE_S))


class ScaledClock:
    """Time running ``speed`` times faster than real time from ``epoch``.

    At real instant ``start_real`` this clock reads ``epoch``; one real second
    later it reads ``epoch + speed`` seconds. Used by drills and the demo.
    """

    def __init__(self, epoch: datetime, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.epoch = epoch
        self.speed = speed
        self._start_mono = time.monotonic()

    def now(self) -> datetime:
        elapsed = time.monotonic() - self._start_mono
        return self.epoch + timedelta(seconds=elapsed * self.speed)

    def to_wall(self, instant: datetime) -> datetime:
        # From this clock's own reading, not from the wall time at its start: the
        # monotonic clock it reads drifts from the wall clock (NTP slewing), and
        # at x100 10 ms of drift is a second of the run (timers woke early).
        return datetime.now(UTC) + (instant - self.now()) / self.speed

    async def sleep_until(self, instant: datetime) -> None:
        while True:
            remaining = (instant - self.now()).total_seconds() / self.speed
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, _MAX_SLICE_S))


class ManualClock:
    """A clock that moves only when told to. For unit tests."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._changed = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def to_wall(self, instant: datetime) -> datetime:
        return instant

    def set(self, instant: datetime) -> None:
        self._now = instant
        self._changed.set()

    def advance(self, delta: timedelta) -> None:
        self.set(self._now + delta)

    async def sleep_until(self, instant: datetime) -> None:
        while self._now < instant:
            self._changed.clear()
            await self._changed.wait()
