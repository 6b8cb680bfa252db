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
from bot.matrix.rooms import JOIN_AGAIN_S, join_invited

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


async def test_a_federated_invite_refused_at_first_is_joined_shortly_after() -> None:
    """The invite reached this homeserver before the inviter's had stored it:
    the first join got 403 and the member never joined (the federated tests)."""
    answers = ["HTTP 403 M_FORBIDDEN", None]
    waits: list[float] = []

    async def join() -> str | None:
        return answers.pop(0)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    assert await join_invited(join, remote=True, sleep=sleep) is None
    assert waits == [JOIN_AGAIN_S[0]]


async def test_a_join_is_tried_again_only_for_a_403_over_federation() -> None:
    async def refused() -> str | None:
        return "HTTP 403 M_FORBIDDEN"

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    waits: list[float] = []
    assert await join_invited(refused, remote=False, sleep=sleep) == "HTTP 403 M_FORBIDDEN"
    assert waits == []  # an invite from this homeserver: no race, no waiting
    assert await join_invited(refused, remote=True, sleep=sleep) == "HTTP 403 M_FORBIDDEN"
    assert waits == list(JOIN_AGAIN_S)  # bounded
