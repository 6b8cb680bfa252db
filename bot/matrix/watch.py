"""Read the control rooms while the sync loop is held for a fan-out.

During a large fan-out the sync loop waits (``dispatch.sync_hold_seconds``):
every stage message wakes the bot's /sync, and on one Synapse each sync costs
about as much as the sends it reports. An ``!abort`` typed meanwhile must not
wait for the hold, so this polls only the control rooms, forward from the last
sync's token, with ``/rooms/{id}/messages`` — one cheap request per control room
per poll, whatever the number of rooms being sent to. The main sync still reads
these events later; the handler ignores a command it has already taken.

An encrypted control room's command is readable here only if the bot already
holds the sender's room key. Keys arrive over /sync, so a message the bot cannot
decrypt ends the watch, and with it the hold: the sync that follows brings the
key and the command.

With a crew, the watch also hands on the other members' heartbeats
(``org.blossom.crew`` state events) it finds in the control rooms: held for a
whole fan-out, a member that read them only from /sync saw every other member
go silent — down, after three heartbeats — while they were sending too, and
covered rooms they were about to send (benchmarks.scaleout, replicated).

Pages are sanitised like /sync bodies (bot/matrix/sanitize.py): an event nio
cannot parse is dropped, so one malformed event (another server can relay one)
does not make the page fail. Should nio still fail on a room's page several
polls in a row, the watch ends, and with it the hold: the sync reads on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import ClientError
from nio import (
    AsyncClient,
    MegolmEvent,
    MessageDirection,
    RoomMessagesResponse,
)

from bot.crew.heartbeat import EVENT_TYPE
from bot.matrix.events import Command, Heartbeats, command_of

log = logging.getLogger(__name__)

OnCommand = Callable[[Command], Awaitable[None]]
OnHeartbeats = Callable[[Heartbeats], None]

# Only messages can be commands; encrypted ones are decrypted by nio if it can.
_MESSAGES = ["m.room.message", "m.room.encrypted"]
_PAGE = 50
# Pages of one room nio failed on, in a row, before the watch gives way to the sync.
MAX_FAILED_POLLS = 3


class ControlWatch:
    def __init__(
        self,
        client: AsyncClient,
        control_rooms: Callable[[], Iterable[str]],
        on_command: OnCommand,
        *,
        interval_s: float = 0.3,
        crew: Iterable[str] = (),
        on_heartbeats: OnHeartbeats | None = None,
    ) -> None:
        self._client = client
        self._crew = frozenset(crew)  # the crew's bots: never commands
        self._control_rooms = control_rooms
        self._on_command = on_command
        self._on_heartbeats = on_heartbeats
        self._filter = {"types": _MESSAGES + ([EVENT_TYPE] if on_heartbeats else [])}
        self._interval = interval_s

    async def watch(self, since: str) -> None:
        """Poll every control room from ``since`` until cancelled, or until a
        message only a sync can make readable: then return (ending the hold).
        Never raises: a failed poll is retried at the next interval (the main
        sync is the fallback that always comes); a page nio cannot parse
        ``MAX_FAILED_POLLS`` times in a row ends the watch."""
        tokens: dict[str, str] = {}
        failed: dict[str, int] = {}
        while True:
            for room_id in list(self._control_rooms()):
                start = tokens.setdefault(room_id, since)
                try:
                    tokens[room_id], unreadable = await self._poll(room_id, start)
                except (ClientError, TimeoutError, ConnectionError) as err:
                    log.debug("control watch: %s poll failed: %s", room_id, type(err).__name__)
                    continue
                except Exception as err:  # nio failed on the page itself
                    failed[room_id] = failed.get(room_id, 0) + 1
                    log.warning("control watch: %s poll failed: %s", room_id, type(err).__name__)
                    if failed[room_id] >= MAX_FAILED_POLLS:
                        # The same page from the same token fails again: the sync
                        # (sanitised, and the fallback that always comes) reads on.
                        log.warning("control watch: %s unreadable; syncing now", room_id)
                        return
                    continue
                failed.pop(room_id, None)
                if unreadable:
                    log.info("control watch: undecryptable message in %s; syncing now", room_id)
                    return
            await asyncio.sleep(self._interval)

    async def _poll(self, room_id: str, start: str) -> tuple[str, bool]:
        """Hand new messages of one room to the handler (and heartbeats to
        theirs); returns the next token and whether a message could not be
        decrypted (stopping there)."""
        while True:
            resp = await self._client.room_messages(
                room_id,
                start=start,
                direction=MessageDirection.front,
                limit=_PAGE,
                message_filter=self._filter,
            )
            if not isinstance(resp, RoomMessagesResponse):
                return start, False
            if self._on_heartbeats is not None:
                # Never raises (the roster's parser is total); the next sync
                # brings them again, taken once (by event id).
                beats = [e.source for e in resp.chunk if _is_heartbeat(e.source)]
                if beats:
                    self._on_heartbeats(Heartbeats(room_id, tuple(beats)))
            for event in resp.chunk:
                if event.sender == self._client.user_id or _is_heartbeat(event.source):
                    continue
                if isinstance(event, MegolmEvent):
                    # Later commands wait too: they must not overtake this one.
                    return start, True
                command = command_of(room_id, event, self._client.user_id, self._crew)
                if command is not None:
                    await self._on_command(command)
            # No ``end``: nothing newer yet; keep asking from the same place.
            if not resp.end or resp.end == start:
                return start, False
            start = resp.end
            if len(resp.chunk) < _PAGE:
                return start, False


def _is_heartbeat(source: Mapping[str, Any]) -> bool:
    return source.get("type") == EVENT_TYPE and "state_key" in source
