"""Messages to the control room (replies, reports). Never stage content.

Notices are not dispatches: they are not in the ledger, but they are retried
on 429 and transient errors (bounded) so a report is not silently lost, and a
report that still cannot be sent is logged with its ids.
"""

from __future__ import annotations

import html
import logging
import random
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from bot.clock import Clock
from bot.content import notice, preformatted
from bot.matrix.sender import Sender, SendFailed
from bot.retry import GiveUp, RetryPolicy

log = logging.getLogger(__name__)


class Notifier:
    def __init__(
        self,
        sender: Sender,
        clock: Clock,
        control_rooms: Iterable[str],
        *,
        policy: RetryPolicy | None = None,
        max_attempts: int = 6,
    ) -> None:
        self._sender = sender
        self._clock = clock
        self.control_rooms = tuple(control_rooms)
        self._policy = policy or RetryPolicy()
        self._max_attempts = max_attempts
        self._rng = random.Random()

    async def send(
        self, room_id: str, content: Mapping[str, Any], *, txn_id: str | None = None
    ) -> str | None:
        """Send one notice. ``txn_id`` makes it idempotent: a notice sent again
        with the same id (after a crash) is the homeserver's first one."""
        txn = txn_id or f"blossom-notice-{uuid.uuid4().hex}"
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._sender.send(room_id, "m.room.message", content, txn)
            except SendFailed as err:
                decision = self._policy.decide(
                    err.failure,
                    attempt=attempt,
                    now=self._clock.now(),
                    deadline=None,
                    rng=self._rng,
                )
                if isinstance(decision, GiveUp) or attempt == self._max_attempts:
                    log.error("could not send a notice to %s: %s", room_id, err.failure.describe())
                    return None
                await self._clock.sleep_until(
                    self._clock.now() + min(decision.delay, timedelta(seconds=30))
                )
        return None

    async def reply(
        self,
        room_id: str,
        event_id: str | None,
        text: str,
        *,
        table: str | None = None,
        txn_id: str | None = None,
    ) -> str | None:
        body = text if table is None else f"{text}\n{table}"
        html_text = html.escape(text).replace("\n", "<br/>")
        if table is not None:
            html_text += preformatted(table)
        return await self.send(
            room_id, notice(body, html_text=html_text, reply_to=event_id), txn_id=txn_id
        )

    async def report(
        self,
        room_id: str | None,
        text: str,
        *,
        table: str | None = None,
        txn_id: str | None = None,
    ) -> None:
        """Tell one control room (the run's), or all of them when ``room_id`` is None."""
        rooms = (room_id,) if room_id else self.control_rooms
        for room in rooms:
            await self.reply(room, None, text, table=table, txn_id=txn_id)
