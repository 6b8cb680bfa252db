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
from collections.abc import Sequence
from datetime import datetime

from bot.crew.duty import CrewView
from bot.crew.members import Crew
from bot.crew.roster import Roster
from bot.matrix.actions import MatrixActions

# Rooms whose member lists are loaded at once before an instant.
_MEMBERS_AT_ONCE = 8


class CrewLink:
    """Implements bot.runs.duty.CrewSide over a roster and the bot's client."""

    def __init__(self, *, roster: Roster, matrix: MatrixActions) -> None:
        self.roster = roster
        self._matrix = matrix

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

    def joined(self, room_id: str) -> frozenset[str]:
        return self._matrix.joined_among(room_id, self.crew.members)

    async def learn_members(self, room_ids: Sequence[str]) -> None:
        slots = asyncio.Semaphore(_MEMBERS_AT_ONCE)

        async def one(room_id: str) -> None:
            async with slots:
                await self._matrix.learn_members(room_id)

        await asyncio.gather(*(one(r) for r in dict.fromkeys(room_ids)))

    async def recent(self, room_id: str) -> list[object] | None:
        return await self._matrix.recent_events(room_id)

    def nudge(self) -> None:
        self.roster.nudge()
