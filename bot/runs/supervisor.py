"""The run manager's background work: tracked tasks, errors reported, shutdown waits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.notify import Notifier

log = logging.getLogger(__name__)


class Supervisor:
    """Starts release work without holding up a command's reply, keeps track of
    it (shutdown waits for it), and reports an error to the run's control room
    instead of letting it vanish into the scheduler's log."""

    def __init__(
        self,
        notifier: Notifier,
        ready: asyncio.Event,
        control_room_of: Callable[[int], str | None],
    ) -> None:
        self._notifier = notifier
        self._ready = ready
        self._control_room_of = control_room_of
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[None], run_id: int, what: str) -> None:
        task = asyncio.create_task(self.guarded(work, run_id, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def after_ready(self, run_id: int, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` once the first sync is done. restore() runs before it, and
        until then the client knows no room: nio refuses to send ("No such room")
        and a notice sent then would be lost."""

        async def later() -> None:
            await self._ready.wait()
            await work()

        self.spawn(later(), run_id, what)

    async def guarded(
        self,
        work: Awaitable[None],
        run_id: int,
        what: str,
        reraise: tuple[type[Exception], ...] = (),
    ) -> None:
        """Run release work as a tracked task: shutdown waits for it, and an error
        is reported instead of vanishing."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await work
        except reraise:
            raise
        except Exception:
            log.exception("run %d: %s failed", run_id, what)
            await self._notifier.report(
                self._control_room_of(run_id),
                f"⚠️ Run {run_id}: {what} hit an internal error; see the bot's log. "
                "Undelivered rooms stay pending.",
            )
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def wait_idle(self, seconds: float) -> None:
        """Shutdown: give releases in flight a moment to finish their requests."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)
