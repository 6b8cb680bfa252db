"""The sync loop: long-polls the homeserver, retrying for ever when it is away
(``bot.retry.retry_call`` with :data:`SYNC_POLICY`).

The first sync of a session asks for full state so that every joined room is
known to the client (nio keeps no room state across restarts) before any
stage is sent; ``ready`` is set when it is done. Each response becomes typed
events (bot/matrix/events.py) for ``on_events``. After each sync the
encryption keys are kept current (upload, query, claim), as nio's
``sync_forever`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import ClientError
from nio import AsyncClient, SyncResponse

from bot.matrix.events import MatrixEvent, from_sync
from bot.matrix.sender import failure_from_error
from bot.retry import RequestFailed, RetryPolicy, SendFailure, retry_call
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SYNC_FILTER: dict[str, Any] = {
    "room": {
        "state": {"lazy_load_members": True},
        "timeline": {"limit": 100, "lazy_load_members": True},
    },
    "presence": {"not_types": ["*"]},
}

# Every failure is retried (the bot must never stop listening), backing off to 30 s.
SYNC_POLICY = RetryPolicy(base_s=1.0, cap_s=30.0, give_up_on_client_errors=False)

OnEvents = Callable[[Sequence[MatrixEvent]], Awaitable[None]]


def _where(err: BaseException) -> str:
    """An exception's class and innermost frame: enough to find the bug, and no
    message (which could quote an event's content)."""
    frames = traceback.extract_tb(err.__traceback__)
    at = f" at {frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{err.__class__.__name__}{at}"


class SyncLoop:
    """Long-polls /sync and hands each response's typed events to ``on_events``.

    ``hold`` (the dispatcher: no fan-out under way) is awaited before each
    long-poll, at most ``max_hold_s``: commands typed during a fan-out are read
    when it ends, or after this long at the latest. ``while_held`` runs while a
    hold lasts longer than ``watch_after_s``, from the last sync's token, and is
    cancelled when it ends: the control-room watch, so a command typed during a
    fan-out is not kept waiting by the hold. If it returns, the hold ends at
    once (it saw something only a sync can bring, e.g. a message whose room key
    arrives over /sync)."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        on_events: OnEvents | None = None,
        control_rooms: Iterable[str] = (),
        hold: Callable[[], Awaitable[None]] | None = None,
        max_hold_s: float = 30.0,
        while_held: Callable[[str], Awaitable[None]] | None = None,
        watch_after_s: float = 0.1,
        poll_ms: int = 30_000,
        policy: RetryPolicy = SYNC_POLICY,
        crew: Iterable[str] = (),
    ) -> None:
        self._client = client
        # The crew (this bot among them); alone, this bot only (bot/runs/doubles.py).
        self._crew = frozenset(crew)
        self._on_events = on_events
        self._control_rooms = frozenset(control_rooms)
        self._hold = hold
        self._max_hold_s = max_hold_s
        self._while_held = while_held
        self._watch_after_s = watch_after_s
        self._poll_ms = poll_ms
        self._policy = policy
        self.ready = asyncio.Event()
        # Whether this is the account's first sync ever on this device: its
        # timeline holds old history, which is never taken as commands.
        self.first_sync_ever = client.loaded_sync_token is None
        self.synced_once = False
        self._rng = random.Random()
        self._failures = 0

    @property
    def taking_commands(self) -> bool:
        """False only during the first sync ever (its timeline is history)."""
        return self.synced_once or not self.first_sync_ever

    async def _held(self, hold: Callable[[], Awaitable[None]]) -> None:
        """Wait for ``hold`` (at most ``max_hold_s``), running ``while_held``
        alongside once the wait is more than a moment."""
        waiting = asyncio.ensure_future(hold())
        watcher: asyncio.Future[None] | None = None
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
            # cancellation (shutdown) when the awaited hold ends at that moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._max_hold_s):
                    done, _ = await asyncio.wait({waiting}, timeout=self._watch_after_s)
                    since = self._client.next_batch
                    if not done and self._while_held is not None and since:
                        watcher = asyncio.ensure_future(self._while_held(since))
                        await asyncio.wait({waiting, watcher}, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        await waiting
        finally:
            # Not ``suppress(CancelledError)`` around an await: a shutdown arriving
            # here would be swallowed with the helpers' own cancellations.
            await cancel_and_wait(waiting, watcher)

    async def _keys(self) -> None:
        client = self._client
        if client.olm is None:
            return
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            users = client.get_users_for_key_claiming()
            if users:
                await client.keys_claim(users)
        # Answer other devices' key requests and share keys sent to-device.
        await client.send_to_device_messages()

    async def _sync_once(self) -> SyncResponse:
        try:
            resp = await self._client.sync(
                timeout=self._poll_ms if self.synced_once else 0,
                sync_filter=SYNC_FILTER,
                full_state=not self.synced_once,
            )
        except (ClientError, TimeoutError, ConnectionError) as err:
            raise RequestFailed(SendFailure(None, message=err.__class__.__name__)) from None
        except Exception as err:
            # nio failed on the response itself (an event it could not handle).
            # The sanitizing client removes what nio cannot parse; this is the
            # last line: the bot must never stop listening because of one event.
            why = f"internal error {_where(err)}"
            raise RequestFailed(SendFailure(None, message=why)) from None
        if not isinstance(resp, SyncResponse):
            raise RequestFailed(failure_from_error(resp))
        return resp

    def _retrying(self, failure: SendFailure, delay: timedelta, attempt: int) -> None:
        self._failures = attempt
        why = failure.message if failure.http_status is None else failure.describe()
        log.warning(
            "sync failed (%s); retrying in %.1fs", why or "error", delay.total_seconds()
        )

    async def _handle(self, resp: SyncResponse, *, history: bool) -> None:
        if self._on_events is not None:
            events = from_sync(
                resp,
                me=self._client.user_id,
                control_rooms=self._control_rooms,
                history=history,
                crew=self._crew,
            )
            try:
                await self._on_events(events)
            except Exception as err:
                log.error("handling a sync failed: %s", _where(err))
        try:
            await self._keys()
        except (ClientError, TimeoutError, ConnectionError) as err:
            log.warning("key maintenance failed: %s", err.__class__.__name__)
        except Exception as err:
            log.error("key maintenance failed: %s", _where(err))

    async def run(self) -> None:
        while True:
            if self.synced_once and self._hold is not None and self._max_hold_s > 0:
                await self._held(self._hold)
            resp = await retry_call(
                self._sync_once,
                policy=self._policy,
                sleep=lambda d: asyncio.sleep(d.total_seconds()),
                now=lambda: datetime.now(UTC),
                max_attempts=None,
                rng=self._rng,
                on_retry=self._retrying,
            )
            if self._failures:
                log.info("sync recovered after %d failures", self._failures)
                self._failures = 0
            history = not self.taking_commands
            self.synced_once = True
            await self._handle(resp, history=history)
            if not self.ready.is_set():
                self.ready.set()
                log.info("first sync done; %d rooms joined", len(self._client.rooms))
