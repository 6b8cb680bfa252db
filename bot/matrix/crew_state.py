"""The crew's heartbeats on the homeserver: the one place that sends or reads them.

:class:`MatrixCrewState` implements :class:`bot.crew.roster.CrewStatePort` with
nio: it puts this bot's ``org.blossom.crew`` state event (state key = its own
user id) into a control room, and reads the room's current heartbeats at
start. :func:`crew_events` picks the heartbeat events out of a /sync response
as raw dicts, for :meth:`bot.crew.roster.Roster.ingest`. Nothing here decides
what a heartbeat means: the pure parser does (``bot.crew.heartbeat``).

Every request is bounded (``timeout_s``) and raises only
:class:`~bot.crew.roster.HeartbeatFailed`, in bot.retry's terms, so the roster
applies the project's retry policy and a 403 (no power to send state) is told
apart from a rate limit or an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import ClientError
from nio import (
    AsyncClient,
    LocalProtocolError,
    RoomGetStateError,
    RoomGetStateResponse,
    RoomPutStateError,
    RoomPutStateResponse,
    SyncResponse,
)

from bot.crew.heartbeat import EVENT_TYPE
from bot.crew.publish import HeartbeatFailed
from bot.matrix.sender import failure_from_error
from bot.retry import SendFailure

REQUEST_TIMEOUT_S = 10.0


class MatrixCrewState:
    """Heartbeat state events through ``client`` (the bot's own session)."""

    def __init__(self, client: AsyncClient, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def publish(self, room_id: str, state_key: str, content: Mapping[str, Any]) -> str:
        resp = await self._request(
            self._client.room_put_state(room_id, EVENT_TYPE, dict(content), state_key=state_key)
        )
        if isinstance(resp, RoomPutStateResponse):
            return str(resp.event_id)
        if isinstance(resp, RoomPutStateError):
            raise HeartbeatFailed(failure_from_error(resp))
        raise HeartbeatFailed(SendFailure(None, message=f"unexpected {type(resp).__name__}"))

    async def heartbeats(self, room_id: str) -> list[Any]:
        resp = await self._request(self._client.room_get_state(room_id))
        if isinstance(resp, RoomGetStateResponse):
            return [
                e for e in resp.events if isinstance(e, Mapping) and e.get("type") == EVENT_TYPE
            ]
        if isinstance(resp, RoomGetStateError):
            raise HeartbeatFailed(failure_from_error(resp))
        raise HeartbeatFailed(SendFailure(None, message=f"unexpected {type(resp).__name__}"))

    async def _request(self, request: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await request
        except TimeoutError:
            raise HeartbeatFailed(SendFailure(None, message="timed out")) from None
        except (ClientError, ConnectionError, LocalProtocolError) as err:
            raise HeartbeatFailed(SendFailure(None, message=err.__class__.__name__)) from None


def crew_events(response: SyncResponse, rooms: Collection[str]) -> dict[str, list[Any]]:
    """The ``org.blossom.crew`` events of a /sync response, as raw dicts, for each
    of ``rooms`` (the control rooms) that has any: its state section first, then
    its timeline, in order — the order :meth:`Roster.ingest` expects."""
    found: dict[str, list[Any]] = {}
    for room_id, room in response.rooms.join.items():
        if room_id not in rooms:
            continue
        events = [*room.state, *room.timeline.events]
        sources = [getattr(e, "source", None) for e in events]
        picked = [s for s in sources if isinstance(s, Mapping) and s.get("type") == EVENT_TYPE]
        if picked:
            found[room_id] = picked
    return found
