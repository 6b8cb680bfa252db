"""Messages to the control room (replies, reports). Never stage content.

Notices are not dispatches: they are not in the ledger, but they are retried
on 429 and transient errors (bounded) so a report is not silently lost, and a
report that still cannot be sent is logged with its ids.

A report to a control room the bot is not in yet (at the first start, the
invites of city rooms may be handled before the control room's) is not sent
into a 403: it waits, in order with the room's later reports, until the bot
is in the room (bounded by ``wait_in_room_s``). The waiting happens in a task
of its own, so the caller (the inbox handling an invite) is never blocked.

In a crew only the *speaker* talks in the control rooms (docs/crew.md):
``speaking`` says whether this bot is it, asked when a message is about to go
out; a member that is not drops its replies and reports there (logged by
kind), except those sent with ``voice=True`` (what only it can tell: its own
heartbeat refused). Without a crew it always speaks.
"""

from __future__ import annotations

import asyncio
import html
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from bot.clock import Clock
from bot.content import fit_notice, notice, preformatted
from bot.matrix.sender import Sender, SendFailed
from bot.retry import RetryPolicy, retry_call
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How long a report waits for the bot to be in its control room.
WAIT_IN_ROOM_S = 120.0
_IN_ROOM_POLL_S = 0.2


def _always_in(room_id: str) -> bool:
    return True


def _always() -> bool:
    return True


class Notifier:
    def __init__(
        self,
        sender: Sender,
        clock: Clock,
        control_rooms: Iterable[str],
        *,
        policy: RetryPolicy | None = None,
        max_attempts: int = 6,
        in_room: Callable[[str], bool] = _always_in,
        wait_in_room_s: float = WAIT_IN_ROOM_S,
        speaking: Callable[[], bool] = _always,
    ) -> None:
        self._sender = sender
        self._clock = clock
        self.control_rooms = tuple(control_rooms)
        self._policy = policy or RetryPolicy()
        self._max_attempts = max_attempts
        self._rng = random.Random()
        # Whether the bot is in a room (known from its sync), so a send can work.
        self._in_room = in_room
        self._wait_in_room_s = wait_in_room_s
        self.speaking = speaking
        # room -> reports waiting for the bot to be in it, oldest first; and the
        # one task per room that sends them when it is.
        self._backlog: dict[str, list[tuple[str, str | None, str | None]]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}

    async def send(
        self,
        room_id: str,
        content: Mapping[str, Any],
        *,
        txn_id: str | None = None,
        voice: bool = False,
    ) -> str | None:
        """Send one notice. ``txn_id`` makes it idempotent: a notice sent again
        with the same id (after a crash) is the homeserver's first one. In a
        control room, nothing unless this bot speaks for the crew (or ``voice``)."""
        if room_id in self.control_rooms and not voice and not self.speaking():
            log.debug("not the crew's speaker: a notice to %s is left to it", room_id)
            return None
        txn = txn_id or f"blossom-notice-{uuid.uuid4().hex}"

        async def once() -> str:
            return await self._sender.send(room_id, "m.room.message", content, txn)

        try:
            return await retry_call(
                once,
                policy=self._policy,
                sleep=lambda d: self._clock.sleep_until(self._clock.now() + d),
                now=self._clock.now,
                max_attempts=self._max_attempts,
                rng=self._rng,
                max_delay=timedelta(seconds=30),
            )
        except SendFailed as err:
            log.error("could not send a notice to %s: %s", room_id, err.failure.describe())
            return None

    async def reply(
        self,
        room_id: str,
        event_id: str | None,
        text: str,
        *,
        table: str | None = None,
        txn_id: str | None = None,
        voice: bool = False,
    ) -> str | None:
        text, table = fit_notice(text, table)
        body = text if table is None else f"{text}\n{table}"
        html_text = html.escape(text).replace("\n", "<br/>")
        if table is not None:
            html_text += preformatted(table)
        return await self.send(
            room_id,
            notice(body, html_text=html_text, reply_to=event_id),
            txn_id=txn_id,
            voice=voice,
        )

    async def report(
        self,
        room_id: str | None,
        text: str,
        *,
        table: str | None = None,
        txn_id: str | None = None,
        voice: bool = False,
    ) -> None:
        """Tell one control room (the run's), or all of them when ``room_id`` is None.
        Returns at once for a room the bot is not in yet (see the module doc)."""
        rooms = (room_id,) if room_id else self.control_rooms
        for room in rooms:
            if room in self._backlog or not self._in_room(room):
                self._later(room, text, table, txn_id)
            else:
                await self.reply(room, None, text, table=table, txn_id=txn_id, voice=voice)

    def _later(self, room: str, text: str, table: str | None, txn_id: str | None) -> None:
        self._backlog.setdefault(room, []).append((text, table, txn_id))
        if room not in self._drains:
            self._drains[room] = asyncio.create_task(self._drain(room), name=f"notices {room}")

    async def _drain(self, room: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_in_room_s
        try:
            # Membership is learnt from the sync; there is no event to await here.
            while not self._in_room(room) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_IN_ROOM_POLL_S)
            while self._backlog.get(room):
                text, table, txn_id = self._backlog[room].pop(0)
                if self._in_room(room):
                    await self.reply(room, None, text, table=table, txn_id=txn_id)
                else:
                    log.error(
                        "could not send a notice to %s: the bot is not in the room", room
                    )
        finally:
            self._backlog.pop(room, None)
            self._drains.pop(room, None)

    async def close(self) -> None:
        """Shutdown: reports still waiting for their room are dropped (logged)."""
        for room, waiting in self._backlog.items():
            log.warning("%d notice(s) to %s not sent: the bot stopped", len(waiting), room)
        await cancel_and_wait(*self._drains.values())
