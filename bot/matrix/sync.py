"""The sync loop: long-polls the homeserver, with backoff when it is away.

The first sync of a session asks for full state so that every joined room is
known to the client (nio keeps no room state across restarts) before any
stage is sent; ``ready`` is set when it is done. After each sync the
encryption keys are kept current (upload, query, claim), as nio's
``sync_forever`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientError
from nio import AsyncClient, SyncError, SyncResponse

from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SYNC_FILTER: dict[str, Any] = {
    "room": {
        "state": {"lazy_load_members": True},
        "timeline": {"limit": 100, "lazy_load_members": True},
    },
    "presence": {"not_types": ["*"]},
}


def _where(err: BaseException) -> str:
    """An exception's class and innermost frame: enough to find the bug, and no
    message (which could quote an event's content)."""
    frames = traceback.extract_tb(err.__traceback__)
    at = f" at {frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{err.__class__.__name__}{at}"


class SyncLoop:
    def __init__(
        self,
        client: AsyncClient,
        *,
        on_sync: Callable[[SyncResponse], Awaitable[None]] | None = None,
        poll_ms: int = 30_000,
    ) -> None:
        self._client = client
        # nio runs response callbacks only inside sync_forever; ours is called here.
        self._on_sync = on_sync
        self._poll_ms = poll_ms
        self.ready = asyncio.Event()
        # Whether this is the account's first sync ever on this device: its
        # timeline holds old history, which is never taken as commands.
        self.first_sync_ever = client.loaded_sync_token is None
        self.synced_once = False
        self._rng = random.Random()
        # Before each long-poll, wait for ``hold`` (the dispatcher: no fan-out
        # under way), at most ``max_hold_s``: commands typed during a fan-out are
        # read when it ends, or after this long at the latest.
        self.hold: Callable[[], Awaitable[None]] | None = None
        self.max_hold_s = 30.0
        # Run while a hold lasts longer than ``watch_after_s``, from the last sync's
        # token, and cancelled when it ends: the control-room watch, so a command
        # typed during a fan-out is not kept waiting by the hold. If it returns,
        # the hold ends at once (it saw something only a sync can bring, e.g. a
        # message whose room key arrives over /sync).
        self.while_held: Callable[[str], Awaitable[None]] | None = None
        self.watch_after_s = 0.1

    async def _held(self, hold: Callable[[], Awaitable[None]]) -> None:
        """Wait for ``hold`` (at most ``max_hold_s``), running ``while_held``
        alongside once the wait is more than a moment."""
        waiting = asyncio.ensure_future(hold())
        watcher: asyncio.Future[None] | None = None
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
            # cancellation (shutdown) when the awaited hold ends at that moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.max_hold_s):
                    done, _ = await asyncio.wait({waiting}, timeout=self.watch_after_s)
                    since = self._client.next_batch
                    if not done and self.while_held is not None and since:
                        watcher = asyncio.ensure_future(self.while_held(since))
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

    async def run(self) -> None:
        failures = 0
        while True:
            if self.synced_once and self.hold is not None and self.max_hold_s > 0:
                await self._held(self.hold)
            try:
                resp = await self._client.sync(
                    timeout=self._poll_ms if self.synced_once else 0,
                    sync_filter=SYNC_FILTER,
                    full_state=not self.synced_once,
                )
            except (ClientError, TimeoutError, ConnectionError) as err:
                resp = None
                why = err.__class__.__name__
            except Exception as err:
                # nio failed on the response itself (an event it could not handle).
                # The sanitizing client removes what nio cannot parse; this is the
                # last line: the bot must never stop listening because of one event.
                resp = None
                why = f"internal error {_where(err)}"
            else:
                why = str(getattr(resp, "status_code", "")) if isinstance(resp, SyncError) else ""
            if not isinstance(resp, SyncResponse):
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * self._rng.uniform(0.5, 1.0)
                retry_after = getattr(resp, "retry_after_ms", None)
                if retry_after:
                    delay = max(delay, retry_after / 1000)
                log.warning("sync failed (%s); retrying in %.1fs", why or "error", delay)
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("sync recovered after %d failures", failures)
            failures = 0
            self.synced_once = True
            if self._on_sync is not None:
                try:
                    await self._on_sync(resp)
                except Exception as err:
                    log.error("handling a sync failed: %s", _where(err))
            try:
                await self._keys()
            except (ClientError, TimeoutError, ConnectionError) as err:
                log.warning("key maintenance failed: %s", err.__class__.__name__)
            except Exception as err:
                log.error("key maintenance failed: %s", _where(err))
            if not self.ready.is_set():
                self.ready.set()
                log.info("first sync done; %d rooms joined", len(self._client.rooms))
