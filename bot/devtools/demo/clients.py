"""The people of the demo: real Matrix clients (matrix-nio) that sync in the background.

An organiser and participants log in with their passwords like any client,
create rooms, invite, join and send messages. Each runs its own sync loop and
hands every timeline event to a callback. Plain (unencrypted) rooms: the demo
shows the dispatch, not key management.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinedMembersResponse,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)

log = logging.getLogger(__name__)

# Long enough that a burst between two syncs never leaves a gap in the timeline.
SYNC_FILTER: dict[str, Any] = {
    "room": {"timeline": {"limit": 500}, "state": {"lazy_load_members": True}},
    "presence": {"not_types": ["*"]},
}

OnEvent = Callable[[str, dict[str, Any]], Awaitable[None] | None]
"""(room_id, raw event) for every timeline event of a joined room."""


class DemoClientError(RuntimeError):
    """A Matrix request of a demo person failed."""


def _check(response: object, expected: type[Any], what: str) -> Any:
    if not isinstance(response, expected):
        # nio's error responses carry the status and errcode; never a password.
        raise DemoClientError(f"{what} failed: {response}")
    return response


class DemoClient:
    """One person: a logged-in nio client with a background sync loop."""

    def __init__(self, homeserver: str, user_id: str, localpart: str) -> None:
        config = AsyncClientConfig(encryption_enabled=False, max_limit_exceeded=None)
        self.client = AsyncClient(homeserver, user_id, config=config)
        self.user_id = user_id
        self.localpart = localpart
        self.on_event: OnEvent | None = None
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def login(self, password: str) -> None:
        response = await self.client.login(password, device_name=f"blossom demo {self.localpart}")
        _check(response, LoginResponse, f"login of {self.user_id}")

    # -- background sync -----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sync_loop(), name=f"sync {self.localpart}")

    async def _sync_loop(self) -> None:
        while True:
            response = await self.client.sync(timeout=1000, sync_filter=SYNC_FILTER)
            if not isinstance(response, SyncResponse):
                log.warning("%s: sync failed: %s", self.localpart, response)
                await asyncio.sleep(0.5)
                continue
            for room_id, info in response.rooms.join.items():
                for event in info.timeline.events:
                    if self.on_event is not None:
                        result = self.on_event(room_id, event.source)
                        if result is not None:
                            await result
            self.synced.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.client.close()

    # -- actions -------------------------------------------------------------------------

    async def create_room(
        self, name: str, invite: Sequence[str] = (), power: Sequence[str] = ()
    ) -> str:
        """A private room; its creator has (in room version 12) unlimited power,
        and each of ``power`` 50 (a crew member's heartbeat is a state event)."""
        override = {"users": {user: 50 for user in power}} if power else None
        response = await self.client.room_create(
            name=name, invite=list(invite), power_level_override=override
        )
        room_id: str = _check(response, RoomCreateResponse, f"creating room {name!r}").room_id
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        response = await self.client.room_invite(room_id, user_id)
        if getattr(response, "status_code", None):
            raise DemoClientError(f"inviting {user_id} to {room_id} failed: {response}")

    async def join(self, room_id: str) -> None:
        _check(await self.client.join(room_id), JoinResponse, f"{self.user_id} joining")

    async def send_text(self, room_id: str, body: str) -> str:
        content = {"msgtype": "m.text", "body": body}
        response = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        event_id: str = _check(response, RoomSendResponse, f"{self.user_id} sending").event_id
        return event_id

    async def members(self, room_id: str) -> set[str]:
        response = await self.client.joined_members(room_id)
        if not isinstance(response, JoinedMembersResponse):
            return set()
        return {m.user_id for m in response.members}

    async def wait_member(
        self, room_id: str, user_id: str, *, within_s: float = 30, what: str = ""
    ) -> None:
        """Poll until ``user_id`` has joined ``room_id``; the error names ``what``."""
        deadline = asyncio.get_running_loop().time() + within_s
        while user_id not in await self.members(room_id):
            if asyncio.get_running_loop().time() > deadline:
                raise DemoClientError(f"{what or user_id} did not join within {within_s:g} s")
            await asyncio.sleep(0.2)

    async def timeline(self, room_id: str) -> list[dict[str, Any]]:
        """The room's whole timeline, oldest first (raw events)."""
        events: list[dict[str, Any]] = []
        start: str | None = None
        while True:
            response = await self.client.room_messages(
                room_id, start=start, direction=MessageDirection.back, limit=500
            )
            page = _check(response, RoomMessagesResponse, f"reading {room_id}")
            events.extend(e.source for e in page.chunk)
            if not page.chunk or not page.end:
                break
            start = page.end
        events.reverse()
        return events
