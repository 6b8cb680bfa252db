"""The crew as the run manager sees it: the roster's view of who is up, which
members are joined to each room, and a look into a room. A shell: the roster
(heartbeats) and ``bot.matrix.actions`` (member lists, ``/messages``) do the
I/O; bot/runs/duty.py and bot/crew/duty.py decide.

Built only when the config has a ``crew`` section (bot/app.py, over the crew
control's roster); a bot without one gives the run manager no crew and
behaves exactly as before crews.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Sequence
from datetime import datetime

from bot.crew.duty import CrewView
from bot.crew.members import Crew
from bot.crew.roster import Roster
from bot.matrix.actions import MatrixActions

log = logging.getLogger(__name__)

# Rooms whose member lists are loaded at once before an instant.
_MEMBERS_AT_ONCE = 8
# Rooms read at once ahead of a look: fewer than a look's 8, since a first read
# may make the homeserver backfill from another server, and it may come just
# before an instant, beside the sends.
_WARM_AT_ONCE = 4
# Longer than a look's 10 s: nothing waits on it, and a backfill cut short
# would leave the look to wait for it again.
_WARM_TIMEOUT_S = 60.0
# The control rooms' state is read afresh (``refresh``) at most this often:
# several waves of one release ask at once.
_REFRESH_EVERY_S = 1.0


class CrewLink:
    """Implements bot.runs.duty.CrewSide over a roster and the bot's client."""

    def __init__(self, *, roster: Roster, matrix: MatrixActions) -> None:
        self.roster = roster
        self._matrix = matrix
        self._warm: set[str] = set()  # rooms read once already (bot/runs/warmup.py)
        self._warming: dict[str, asyncio.Task[None]] = {}
        self._warm_slots = asyncio.Semaphore(_WARM_AT_ONCE)  # across calls
        self._refreshing = asyncio.Lock()
        self._refreshed = -math.inf  # the event loop's clock: real seconds

    @property
    def crew(self) -> Crew:
        return self.roster.crew

    @property
    def me(self) -> str:
        return self.roster.me

    def view(self) -> CrewView:
        return self.roster.view()

    def missed(self, at: datetime) -> bool:
        return self.roster.missed(at)

    def cut_off_since(self, at: datetime) -> bool:
        return self.roster.cut_off_since(at)

    def heard_since(self, at: datetime) -> bool:
        for member in self.crew.members:
            beat = self.roster.heartbeat_of(member) if member != self.me else None
            if beat is not None and beat.time > at:
                return True
        return False

    async def refresh(self) -> None:
        async with self._refreshing:
            loop = asyncio.get_running_loop()
            if loop.time() - self._refreshed >= _REFRESH_EVERY_S:
                await self.roster.refresh()
                self._refreshed = loop.time()

    def joined(self, room_id: str) -> frozenset[str]:
        return self._matrix.joined_among(room_id, self.crew.members)

    async def learn_members(self, room_ids: Sequence[str]) -> None:
        slots = asyncio.Semaphore(_MEMBERS_AT_ONCE)

        async def one(room_id: str) -> None:
            async with slots:
                await self._matrix.learn_members(room_id)

        await asyncio.gather(*(one(r) for r in dict.fromkeys(room_ids)))

    def warm(self, room_ids: Sequence[str]) -> None:
        for room_id in dict.fromkeys(room_ids):
            # A room read once, or being read (arming, then a stage prepared),
            # is not read again.
            if room_id not in self._warm and room_id not in self._warming:
                task = asyncio.ensure_future(self._warm_one(room_id))
                self._warming[room_id] = task  # held here: nothing awaits it
                task.add_done_callback(functools.partial(self._warmed, room_id))

    async def warmed(self) -> None:
        """Wait for the reads ahead in flight (for tests and tools)."""
        while self._warming:
            await asyncio.gather(*self._warming.values(), return_exceptions=True)

    def _warmed(self, room_id: str, _task: object) -> None:
        self._warming.pop(room_id, None)

    async def _warm_one(self, room_id: str) -> None:
        async with self._warm_slots:
            try:
                events = await self._matrix.recent_events(room_id, timeout_s=_WARM_TIMEOUT_S)
            except Exception:  # only ever logged: nothing waits on this
                log.exception("could not read %s ahead of a look", room_id)
                return
        if events is None:
            log.warning("could not read %s ahead of a look; it is read at the look", room_id)
        else:
            self._warm.add(room_id)

    async def recent(self, room_id: str) -> list[object] | None:
        return await self._matrix.recent_events(room_id)

    def nudge(self) -> None:
        self.roster.nudge()
