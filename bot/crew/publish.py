"""Publishing this bot's heartbeat, in the roster's terms: the port to the
homeserver (``bot.matrix.crew_state`` implements it), a failed request, and the
problem told to the control room when the heartbeat is refused. Ids only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from bot.crew.heartbeat import EVENT_TYPE
from bot.retry import SendFailure


class HeartbeatFailed(Exception):
    """A heartbeat request failed; ``failure`` says how, in bot.retry's terms."""

    def __init__(self, failure: SendFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


@dataclass(frozen=True)
class PublishProblem:
    """This bot cannot write its heartbeat in a control room. Ids only."""

    room_id: str
    member: str
    failure: str
    forbidden: bool
    retry_every: timedelta

    def __str__(self) -> str:
        every = f"{self.retry_every.total_seconds():g} s"
        if self.forbidden:
            return (
                f"Cannot publish the crew heartbeat of {self.member} in {self.room_id}: "
                f"{self.failure} (not enough power to send state). The other members "
                f"count {self.member} down and cover its rooms. Fix: give {self.member} "
                f'power 50 in {self.room_id}, or set events: {{"{EVENT_TYPE}": 0}} in '
                f"its m.room.power_levels. Retrying every {every}."
            )
        return (
            f"Cannot publish the crew heartbeat of {self.member} in {self.room_id}: "
            f"{self.failure}. The other members count {self.member} down and cover its "
            f"rooms. Retrying every {every}."
        )


class CrewStatePort(Protocol):
    """What the roster needs from the homeserver (``bot.matrix.crew_state``)."""

    async def publish(self, room_id: str, state_key: str, content: Mapping[str, Any]) -> str:
        """Put the ``org.blossom.crew`` state event; its event id, or raise
        :class:`HeartbeatFailed`."""
        ...

    async def heartbeats(self, room_id: str) -> list[Any]:
        """The room's current ``org.blossom.crew`` state events as raw dicts, or
        raise :class:`HeartbeatFailed`."""
        ...
