"""APScheduler wiring: timers only. The database is the schedule's source of truth.

Jobs live in memory and are rebuilt from the ledger on every start. Each job
fires a little *before* its instant (``lead``) so the run manager can render
and prepare; it then waits for the exact instant on the injected clock.

Misfire and coalesce are explicit: APScheduler's default 1-second misfire
grace silently drops a job that is slightly late (an event-loop stall, a
suspended host). Here ``misfire_grace_time=None`` runs a late job however late
— the late policy, not the timer, decides what lateness means — and
``coalesce=False`` never merges two runs of a job into one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

log = logging.getLogger(__name__)

JobFn = Callable[[], Awaitable[None]]


class Timers:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1},
        )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def set(self, job_id: str, at_wall: datetime, fn: JobFn) -> None:
        """(Re)place the job ``job_id`` to run ``fn`` at wall-clock ``at_wall``
        (at once if that has passed)."""
        self._scheduler.add_job(
            fn,
            trigger=DateTrigger(run_date=at_wall.astimezone(UTC), timezone=UTC),
            id=job_id,
            replace_existing=True,
        )
        log.debug("timer %s at %s", job_id, at_wall.isoformat())

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(job_id)

    def cancel_prefix(self, prefix: str) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith(prefix):
                self.cancel(job.id)

    def job_ids(self) -> list[str]:
        return sorted(job.id for job in self._scheduler.get_jobs())
