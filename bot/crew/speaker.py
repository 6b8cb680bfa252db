"""Waiting for the speaker question to be decided (docs/crew.md, "The start-up
rule"). The rule is pure (:meth:`bot.crew.duty.CrewView.speaks`); this is the
bounded wait a command read while it is undecided goes through before it is
answered, so it is answered once, by the member the rule names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bot.clock import Clock
from bot.crew.duty import CrewView

log = logging.getLogger(__name__)

_NOT_LISTENING_POLL_S = 0.2


async def decided(
    view: Callable[[], CrewView], clock: Clock, news: asyncio.Event, *, timeout_s: float
) -> str | None:
    """The speaker, once ``view()`` decides it: at once, when a heartbeat is
    taken (``news``, set by the roster) that decides it, or when the start-up
    window closes (by ``clock``). At most ``timeout_s`` real seconds (a roster
    not yet listening may stay undecided): then the rule without the window
    (:meth:`~bot.crew.duty.CrewView.first_up`)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                news.clear()
                current, now = view(), clock.now()
                if current.decided(now):
                    return current.speaker(now)
                await _news_or_window(current, clock, news)
    except TimeoutError:
        log.info("crew: the speaker is still undecided; the rule without the start-up window")
        current, now = view(), clock.now()
        return current.speaker(now) or current.first_up(now)


async def _news_or_window(view: CrewView, clock: Clock, news: asyncio.Event) -> None:
    waits: list[asyncio.Future[object]] = [asyncio.ensure_future(news.wait())]
    listening = view.listening
    if listening is not None and listening.since is not None:
        closes = listening.since + listening.window
        waits.append(asyncio.ensure_future(clock.sleep_until(closes)))
    else:  # not listening yet: its start sets no event, so look again now and then
        waits.append(asyncio.ensure_future(asyncio.sleep(_NOT_LISTENING_POLL_S)))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
