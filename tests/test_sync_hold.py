"""The sync loop's hold during a fan-out, and the control watch that runs during
it (pure asyncio; the live behaviour is in test_abort_during_fanout_live.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bot.matrix.sync import SyncLoop


class _Client:
    """Just what SyncLoop reads before the first request."""

    loaded_sync_token = "s1"
    next_batch = "s42"


def _loop(watch: Callable[[str], Awaitable[None]], max_hold_s: float = 5.0) -> SyncLoop:
    """Built whole by its constructor, as the bot builds it."""
    return SyncLoop(
        _Client(),  # type: ignore[arg-type]
        max_hold_s=max_hold_s,
        while_held=watch,
        watch_after_s=0.01,
    )


async def test_short_hold_starts_no_watch() -> None:
    started: list[str] = []

    async def watch(since: str) -> None:
        started.append(since)

    async def hold() -> None:
        return None

    loop = _loop(watch)
    await loop._held(hold)
    assert started == []


async def test_watch_runs_from_last_token_and_is_cancelled_when_hold_ends() -> None:
    quiet = asyncio.Event()
    seen: list[str] = []
    cancelled = asyncio.Event()

    async def watch(since: str) -> None:
        seen.append(since)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = _loop(watch)
    held = asyncio.ensure_future(loop._held(quiet.wait))
    await asyncio.sleep(0.05)
    assert seen == ["s42"] and not held.done()
    quiet.set()
    await asyncio.wait_for(held, 1)
    assert cancelled.is_set()


async def test_watch_returning_ends_the_hold_at_once() -> None:
    """E.g. an undecryptable command: only a sync brings its key."""

    async def watch(since: str) -> None:
        await asyncio.sleep(0.02)

    never = asyncio.Event()
    loop = _loop(watch, max_hold_s=30)
    await asyncio.wait_for(loop._held(never.wait), 1)


async def test_hold_is_bounded_and_cancels_the_watch() -> None:
    state: dict[str, Any] = {}

    async def watch(since: str) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    never = asyncio.Event()
    loop = _loop(watch, max_hold_s=0.1)
    await asyncio.wait_for(loop._held(never.wait), 1)
    assert state == {"cancelled": True}


async def test_a_failing_watch_does_not_break_the_hold() -> None:

    async def watch(since: str) -> None:
        raise RuntimeError("boom")

    never = asyncio.Event()
    loop = _loop(watch, max_hold_s=0.2)
    # The watch "returned" (with an error): the hold ends, nothing propagates.
    await asyncio.wait_for(loop._held(never.wait), 1)
