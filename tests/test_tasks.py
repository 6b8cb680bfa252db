"""bot.tasks.cancel_and_wait: helpers end, the caller's own cancellation is kept."""

from __future__ import annotations

import asyncio

import pytest

from bot.tasks import cancel_and_wait


async def test_caller_cancelled_while_waiting_stays_cancelled() -> None:
    """The shape of issue 17's defect 4: a loop ends a helper task in a
    ``finally`` and is cancelled (shutdown) while it waits for the helper."""
    helper_may_end = asyncio.Event()
    went_on = False

    async def slow_helper() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await helper_may_end.wait()  # ends its cancellation slowly

    async def loop() -> None:
        nonlocal went_on
        helper = asyncio.ensure_future(slow_helper())
        await asyncio.sleep(0)
        try:
            pass
        finally:
            await cancel_and_wait(helper)
        went_on = True

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()
    helper_may_end.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not went_on


async def test_errors_are_read_and_stragglers_returned() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # ignores the first cancellation until released

    failing = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    straggler = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait(failing, None, straggler, within_s=0.05) == {straggler}
    assert failing.done()
    release.set()
    await straggler
    assert await cancel_and_wait() == set()
