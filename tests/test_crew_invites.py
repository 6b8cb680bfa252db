"""A crew member that is in a room invites the rest of the crew, but never one
its homeserver shows invited or joined: its view may lag a join made on another
server, and an invite concurrent with that join can win the room's state
resolution (seen on two federating Synapses: the joined member was turned back
into an invited one and got 403 for every message and heartbeat). Fakes only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.clock import ManualClock
from bot.control.crew import CrewControl
from bot.crew import Crew

A, B, C, D = "@a:north", "@b:south", "@c:west", "@d:east"
ROOM = "!control:north"


class FakeMatrix:
    def __init__(self, memberships: dict[str, str]) -> None:
        self.memberships = memberships
        self.invited: list[str] = []

    async def members(self, room_id: str) -> list[str]:
        return [u for u, m in self.memberships.items() if m == "join"]

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        assert event_type == "m.room.member"
        membership = self.memberships.get(state_key)
        return None if membership is None else {"membership": membership}

    async def invite(self, room_id: str, user_id: str) -> bool:
        self.invited.append(user_id)
        return True


async def test_only_members_without_a_membership_are_invited() -> None:
    matrix = FakeMatrix({A: "join", B: "invite", C: "leave"})
    control = CrewControl(
        crew=Crew((A, B, C, D)), me=A, control_rooms=(ROOM,), port=None,  # type: ignore[arg-type]
        runs=None, library=None, matrix=matrix, notifier=None,  # type: ignore[arg-type]
        clock=ManualClock(datetime(2026, 12, 5, tzinfo=UTC)),
    )
    await control.invite_crew(ROOM)
    assert matrix.invited == [C, D]  # B already invited (by the organiser): left alone
