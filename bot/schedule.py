"""APScheduler wiring: timers only. The database is the schedule's source of truth.

Jobs live in memory and are rebuilt from the ledger on every start. Each job
fires a little *before* its instant (``lead``) so the run manager can render
and prepare; it then waits for the exact instant on the injected clock.

Misfire and coalesce are explicit: APScheduler's default 1-second misfire
grace silently drops a job that is slightly late (an event-loop stall, a
suspended host). Here ``misfire_grace_time=None`` runs a late job however late
— the late policy, not the timer, decides what lateness means — and
``coalesce=False`` never merges two runs of a job into one.

Clock jumps: APScheduler computes a job's wall-clock run date once and then
sleeps on the event loop's monotonic clock. If the machine's clock is stepped
forward (NTP, a resumed laptop), a job would run late by the jump. So a job set
with :meth:`Timers.set_on` keeps the injected clock and instant it is for, and
once a second :meth:`Timers.retime` moves any job whose wall time moved and
lets APScheduler look at the time again. A backward jump is harmless to the
release itself (the run manager sleeps until the instant on the run's clock
after the timer fires), and retime also moves that timer back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from bot.clock import Clock

log = logging.getLogger(__name__)

JobFn = Callable[[], Awaitable[None]]

# How often clocks are checked for jumps, and how far a job's wall time may
# drift before it is moved.
RETIME_EVERY_S = 1.0
RETIME_TOLERANCE_S = 0.25


class Timers:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1},
        )
        # job id -> (clock, instant on it) for jobs set with set_on.
        self._on_clock: dict[str, tuple[Clock, datetime]] = {}
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._scheduler.start()
        self._watch = asyncio.get_running_loop().create_task(self._watch_clocks())

    def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def set(self, job_id: str, at_wall: datetime, fn: JobFn) -> None:
        """(Re)place the job ``job_id`` to run ``fn`` at wall-clock ``at_wall``
        (at once if that has passed)."""
        self._on_clock.pop(job_id, None)
        self._scheduler.add_job(
            fn,
            trigger=DateTrigger(run_date=at_wall.astimezone(UTC), timezone=UTC),
            id=job_id,
            replace_existing=True,
        )
        log.debug("timer %s at %s", job_id, at_wall.isoformat())

    def set_on(self, job_id: str, clock: Clock, at: datetime, fn: JobFn) -> None:
        """(Re)place the job ``job_id`` to run ``fn`` when ``clock`` reads ``at``;
        the job follows the clock if it jumps (see :meth:`retime`)."""
        self.set(job_id, clock.to_wall(at), fn)
        self._on_clock[job_id] = (clock, at)

    def retime(self) -> None:
        """Move each pending job whose clock now maps its instant to another wall
        time, then have APScheduler re-read the wall clock (for a jump of the
        machine's own clock, which its monotonic sleep would not notice). A job
        that has already run is not in the scheduler, so it is never re-added."""
        for job_id, (clock, at) in list(self._on_clock.items()):
            job = self._scheduler.get_job(job_id)
            if job is None:
                del self._on_clock[job_id]  # ran, or was cancelled
                continue
            wall = clock.to_wall(at).astimezone(UTC)
            planned = job.next_run_time
            if planned is None or abs((planned - wall).total_seconds()) > RETIME_TOLERANCE_S:
                log.info("clock jump: timer %s moved to %s", job_id, wall.isoformat())
                job.reschedule(DateTrigger(run_date=wall, timezone=UTC))
        if self._scheduler.running:
            self._scheduler.wakeup()

    async def _watch_clocks(self) -> None:
        while True:
            await asyncio.sleep(RETIME_EVERY_S)
            try:
                self.retime()
            except Exception:
                log.exception("re-timing the timers failed")

    def cancel(self, job_id: str) -> None:
        self._on_clock.pop(job_id, None)
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(job_id)

    def cancel_prefix(self, prefix: str) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith(prefix):
                self.cancel(job.id)

    def job_ids(self) -> list[str]:
        return sorted(job.id for job in self._scheduler.get_jobs())
