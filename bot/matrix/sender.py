"""One request to the homeserver, translated into the ledger's terms.

``send`` returns an event id or raises :class:`SendFailed` carrying a
transport-neutral :class:`bot.retry.SendFailure`; it never retries (the
dispatcher does, by ``bot.retry``'s policy) and never logs content.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from aiohttp import ClientError
from nio import (
    AsyncClient,
    LocalProtocolError,
    RoomMessagesError,
    RoomSendError,
    RoomSendResponse,
)
from nio.exceptions import OlmUnverifiedDeviceError, SendRetryError

from bot.ledger import is_dispatch_of
from bot.matrix.power import OPT_IN_POWER
from bot.retry import RequestFailed, SendFailure

log = logging.getLogger(__name__)


class SendFailed(RequestFailed):
    """A send failed (what the dispatcher and the notifier catch)."""


class Sender(Protocol):
    async def send(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str: ...

    async def prepare(self, room_id: str) -> None: ...

    async def find_dispatch(self, room_id: str, tag: Mapping[str, str]) -> str | None: ...


def failure_from_error(resp: Any) -> SendFailure:
    """A nio error response as a transport-neutral failure."""
    transport = getattr(resp, "transport_response", None)
    status = getattr(transport, "status", None)
    errcode = getattr(resp, "status_code", None)
    if status is None and errcode == "M_LIMIT_EXCEEDED":
        status = 429
    return SendFailure(
        http_status=int(status) if status is not None else 400,
        errcode=str(errcode) if errcode else None,
        retry_after_ms=getattr(resp, "retry_after_ms", None),
        message=str(getattr(resp, "message", ""))[:200],
    )


class MatrixSender:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        # One device-key query and one-time-key claim at a time (see prepare).
        self._keys_lock = asyncio.Lock()

    @property
    def keys_lock(self) -> asyncio.Lock:
        """Held around key queries and claims (the switch's encryption shares it)."""
        return self._keys_lock

    async def send(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str:
        try:
            resp = await self._client.room_send(
                room_id,
                event_type,
                dict(content),
                tx_id=txn_id,
                # Participants' devices are not verified by hand; an unverified
                # device must not block delivery (it still gets the room key).
                ignore_unverified_devices=True,
            )
        except (ClientError, TimeoutError, ConnectionError) as err:
            raise SendFailed(SendFailure(None, message=err.__class__.__name__)) from None
        except (OlmUnverifiedDeviceError, SendRetryError) as err:
            raise SendFailed(
                SendFailure(None, message=f"encryption: {err.__class__.__name__}")
            ) from None
        except LocalProtocolError:
            # Not in client.rooms: the bot is not (or no longer) joined.
            raise SendFailed(
                SendFailure(
                    403,
                    errcode="M_FORBIDDEN",
                    message="bot is not in the room",
                    advice=self._upgrade_advice(room_id),
                )
            ) from None
        if isinstance(resp, RoomSendResponse):
            return str(resp.event_id)
        if isinstance(resp, RoomSendError):
            failure = failure_from_error(resp)
            if failure.http_status == 403:
                failure = replace(failure, advice=self._upgrade_advice(room_id))
            raise SendFailed(failure)
        raise SendFailed(SendFailure(None, message=f"unexpected {type(resp).__name__}"))

    def _upgrade_advice(self, room_id: str) -> str:
        """An upgraded room refuses the bot's messages (Synapse restricts the old
        room); the fix is the new room's moderators' to make."""
        room = self._client.rooms.get(room_id)
        new = getattr(room, "replacement_room", None)
        if not isinstance(new, str):
            return ""
        return (
            f"the room was upgraded to {new}: invite the bot there from an account "
            f"with power ≥ {OPT_IN_POWER}"
        )

    async def prepare(self, room_id: str) -> None:
        """Share the room's megolm session ahead of the instant, so the instant
        itself only encrypts and sends. A no-op for plain rooms."""
        room = self._client.rooms.get(room_id)
        olm = self._client.olm
        if room is None or not room.encrypted or olm is None:
            return
        try:
            if not room.members_synced:
                await self._client.joined_members(room_id)
            # Rooms are prepared concurrently. Unserialised, every room would query
            # the same devices and claim a one-time key from each of them: 100 rooms
            # spend 100 keys per device (a client uploads ~50), and rooms whose
            # claim comes back empty share their room key with nobody. So: one
            # query and one claim at a time; later rooms find the sessions made.
            async with self._keys_lock:
                if self._client.should_query_keys:
                    await self._client.keys_query()
                missing = olm.get_missing_sessions(list(room.users))
                if missing:
                    await self._client.keys_claim(missing)
            if olm.should_share_group_session(room_id):
                await self._client.share_group_session(room_id, ignore_unverified_devices=True)
        except (ClientError, TimeoutError, ConnectionError, LocalProtocolError) as err:
            # Not fatal: room_send shares the session itself if still needed.
            log.warning("could not prepare %s: %s", room_id, err.__class__.__name__)

    async def find_dispatch(self, room_id: str, tag: Mapping[str, str]) -> str | None:
        """Look through the room's recent timeline for an event of ours with this
        dispatch tag; its event id, or None. Used for SENDING rows after a crash.
        The tag carries the run key: an earlier run's event for the same stage is
        not this delivery's (matched by bot.ledger.is_dispatch_of)."""
        start: str | None = None
        for _ in range(5):  # up to 5 pages of 100 recent events
            try:
                resp = await self._client.room_messages(room_id, start=start, limit=100)
            except (ClientError, TimeoutError, ConnectionError) as err:
                raise SendFailed(SendFailure(None, message=err.__class__.__name__)) from None
            if isinstance(resp, RoomMessagesError):
                raise SendFailed(failure_from_error(resp))
            for event in resp.chunk:
                if getattr(event, "sender", None) != self._client.user_id:
                    continue
                source = getattr(event, "source", {}) or {}
                if is_dispatch_of(source.get("content"), dict(tag)):
                    return str(event.event_id)
            if not resp.chunk or not resp.end or resp.end == start:
                return None
            start = resp.end
            await asyncio.sleep(0)
        return None
