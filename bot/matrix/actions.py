"""Every request the bot makes to its homeserver, but sends and the sync, as a
small typed facade over matrix-nio: rooms (join, leave, create, members,
state, aliases), reactions, edits, read markers, and whether the bot is in a
room. Nothing outside ``bot/matrix/`` needs nio.

Errors become plain answers (None, False, an empty list) or
:class:`ActionFailed` with a message that is safe to show; none carries
content. Joins are retried (``bot.retry``): a join is a membership event,
which Synapse counts against the bot's message rate limit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from aiohttp import ClientError
from nio import (
    AsyncClient,
    JoinedMembersResponse,
    JoinResponse,
    LocalProtocolError,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomRedactResponse,
    RoomResolveAliasResponse,
    RoomSendResponse,
)

from bot.clock import Clock
from bot.matrix.sender import failure_from_error
from bot.retry import RequestFailed, RetryPolicy, SendFailure, retry_call

log = logging.getLogger(__name__)

# A join is retried this many times (rate limits, transient errors).
JOIN_ATTEMPTS = 6
_NETWORK = (ClientError, TimeoutError, ConnectionError)


class ActionFailed(Exception):
    """A request was refused or could not be made; the message names the status."""


class MatrixActions:
    def __init__(
        self, client: AsyncClient, clock: Clock, *, policy: RetryPolicy | None = None
    ) -> None:
        self._client = client
        self._clock = clock
        self._policy = policy or RetryPolicy()
        self._rng = random.Random()

    @property
    def user_id(self) -> str:
        return str(self._client.user_id)

    # -- membership ----------------------------------------------------------------

    def in_room(self, room_id: str) -> bool:
        """Whether the sync has shown the bot joined to ``room_id`` (nio sends
        only to rooms it knows)."""
        return room_id in self._client.rooms

    async def wait_in_room(self, room_id: str, within_s: float = 15.0) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        # nio offers no event for "this room is now known"; poll briefly.
        while not self.in_room(room_id) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        return self.in_room(room_id)

    async def join(self, room_id: str, *, retry: bool = True) -> str | None:
        """Join; None when joined, else why not (``retry``: rate limits and
        transient errors are retried, bounded)."""

        async def once() -> None:
            try:
                resp = await self._client.join(room_id)
            except _NETWORK as err:
                raise RequestFailed(SendFailure(None, message=err.__class__.__name__)) from None
            if not isinstance(resp, JoinResponse):
                raise RequestFailed(failure_from_error(resp))

        try:
            await retry_call(
                once,
                policy=self._policy,
                sleep=lambda d: self._clock.sleep_until(self._clock.now() + d),
                now=self._clock.now,
                max_attempts=JOIN_ATTEMPTS if retry else 1,
                rng=self._rng,
            )
        except RequestFailed as err:
            return err.failure.describe()
        return None

    async def leave(self, room_id: str, *, forget: bool = False) -> bool:
        """Leave (or reject an invite to) ``room_id``; ``forget`` also drops it
        from the bot's room list. False if the homeserver could not be told."""
        try:
            await self._client.room_leave(room_id)
            if forget:
                await self._client.room_forget(room_id)
        except _NETWORK as err:
            log.warning("could not leave %s: %s", room_id, err.__class__.__name__)
            return False
        return True

    async def members(self, room_id: str) -> list[str] | None:
        """The joined members' user ids, or None if they cannot be read."""
        try:
            resp = await self._client.joined_members(room_id)
        except _NETWORK:
            return None
        if not isinstance(resp, JoinedMembersResponse):
            return None
        return [m.user_id for m in resp.members]

    def joined_among(self, room_id: str, users: Collection[str]) -> frozenset[str]:
        """Which of ``users`` the client's member list shows joined to
        ``room_id`` (no request; invited users are not joined). The bot itself
        counts when it is in the room. Complete once :meth:`learn_members` ran:
        the sync loads members lazily."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return frozenset()
        joined = {u for u in users if u in room.users and u not in room.invited_users}
        if self.user_id in users:
            joined.add(self.user_id)
        return frozenset(joined)

    async def learn_members(self, room_id: str, *, timeout_s: float = 10.0) -> bool:
        """Load the room's whole member list into the client (one request, only
        if the sync has not loaded it yet); later member events keep it current.
        False if it could not be read (the list stays as the sync left it)."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return False
        if room.members_synced:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._client.joined_members(room_id)
        except (*_NETWORK, LocalProtocolError):
            return False
        return isinstance(resp, JoinedMembersResponse)

    async def recent_events(
        self, room_id: str, *, limit: int = 100, timeout_s: float = 10.0
    ) -> list[object] | None:
        """The room's latest ``limit`` events, newest first, as raw dicts (one
        ``/messages`` request; the bot's client sanitises the page, so a
        malformed event is dropped, not fatal). Encrypted events are decrypted
        when the client holds their keys. None if the room cannot be read."""
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._client.room_messages(room_id, start=None, limit=limit)
        except (*_NETWORK, LocalProtocolError):
            return None
        if not isinstance(resp, RoomMessagesResponse):
            return None
        return [dict(source) for e in resp.chunk if isinstance(source := e.source, Mapping)]

    async def create_room(
        self, *, name: str, topic: str = "", invite: Sequence[str] = ()
    ) -> str:
        """A new private room; its id. Raises :class:`ActionFailed`."""
        try:
            resp = await self._client.room_create(name=name, topic=topic, invite=list(invite))
        except _NETWORK as err:
            raise ActionFailed(f"network error ({err.__class__.__name__})") from None
        if not isinstance(resp, RoomCreateResponse):
            raise ActionFailed(str(getattr(resp, "status_code", None) or "error"))
        return str(resp.room_id)

    # -- state and aliases -----------------------------------------------------------

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        """One state event's content, or None (none, or it cannot be read)."""
        try:
            resp = await self._client.room_get_state_event(room_id, event_type, state_key)
        except _NETWORK:
            return None
        return dict(resp.content) if isinstance(resp, RoomGetStateEventResponse) else None

    async def state(self, room_id: str) -> list[Mapping[str, Any]]:
        """The room's whole current state, as events (with their senders)."""
        try:
            resp = await self._client.room_get_state(room_id)
        except _NETWORK:
            return []
        if not isinstance(resp, RoomGetStateResponse):
            return []
        return [e for e in resp.events if isinstance(e, Mapping)]

    async def resolve_alias(self, alias: str) -> str | None:
        """The room id an alias names now; None if it names none. Raises
        :class:`ActionFailed` when the homeserver cannot be asked (the caller
        may keep what it knew)."""
        try:
            resp = await self._client.room_resolve_alias(alias)
        except _NETWORK as err:
            raise ActionFailed(f"network error ({err.__class__.__name__})") from None
        return str(resp.room_id) if isinstance(resp, RoomResolveAliasResponse) else None

    # -- small sends -------------------------------------------------------------------

    async def react(self, room_id: str, event_id: str, key: str) -> str | None:
        """An ``m.reaction`` to ``event_id``; its event id, or None (a reaction is
        a courtesy: it is never retried and never raises)."""
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self._send_once(room_id, "m.reaction", content, "blossom-react")

    async def edit(self, room_id: str, event_id: str, new_content: Mapping[str, Any]) -> str | None:
        """Replace an event's content (``m.replace``); the edit's event id or None."""
        content = {
            **new_content,
            "m.new_content": dict(new_content),
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        }
        return await self._send_once(room_id, "m.room.message", content, "blossom-edit")

    async def redact(self, room_id: str, event_id: str, reason: str) -> bool:
        """Redact ``event_id`` (the crew's duplicate of a dispatch): rate limits
        and transient errors retried, bounded; False if it could not be done."""

        async def once() -> None:
            try:
                resp = await self._client.room_redact(room_id, event_id, reason=reason)
            except _NETWORK as err:
                raise RequestFailed(SendFailure(None, message=err.__class__.__name__)) from None
            if not isinstance(resp, RoomRedactResponse):
                raise RequestFailed(failure_from_error(resp))

        return await self._bounded(once, f"redact {event_id} in {room_id}")

    async def invite(self, room_id: str, user_id: str) -> bool:
        """Invite ``user_id`` (another crew member) to ``room_id``; False if refused."""

        async def once() -> None:
            try:
                resp = await self._client.room_invite(room_id, user_id)
            except _NETWORK as err:
                raise RequestFailed(SendFailure(None, message=err.__class__.__name__)) from None
            if not isinstance(resp, RoomInviteResponse):
                raise RequestFailed(failure_from_error(resp))

        return await self._bounded(once, f"invite {user_id} to {room_id}")

    async def _bounded(self, once: Callable[[], Awaitable[None]], what: str) -> bool:
        try:
            await retry_call(
                once,
                policy=self._policy,
                sleep=lambda d: self._clock.sleep_until(self._clock.now() + d),
                now=self._clock.now,
                max_attempts=JOIN_ATTEMPTS,
                rng=self._rng,
            )
        except RequestFailed as err:
            log.warning("could not %s: %s", what, err.failure.describe())
            return False
        return True

    async def mark_read(self, room_id: str, event_id: str) -> bool:
        """Move the bot's read marker and receipt to ``event_id``."""
        try:
            await self._client.room_read_markers(room_id, event_id, event_id)
        except _NETWORK:
            return False
        return True

    async def _send_once(
        self, room_id: str, event_type: str, content: Mapping[str, Any], prefix: str
    ) -> str | None:
        try:
            resp = await self._client.room_send(
                room_id,
                event_type,
                dict(content),
                tx_id=f"{prefix}-{uuid.uuid4().hex}",
                ignore_unverified_devices=True,
            )
        except Exception as err:  # nio raises for unknown rooms and encryption trouble
            log.info("could not send %s in %s: %s", event_type, room_id, err.__class__.__name__)
            return None
        return str(resp.event_id) if isinstance(resp, RoomSendResponse) else None

