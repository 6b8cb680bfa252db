"""The slots one release's requests take, and its pilot (bot/dispatch.py)."""

from __future__ import annotations

import asyncio

# The longest the rest of a release waits for its first request's answer.
PILOT_WAIT = 0.05


class Lane:
    """The slots a release's requests take, and its pilot: the release's first
    request goes alone and the rest follow once it is answered (or after
    ``PILOT_WAIT``), so the first message is not queued in the homeserver
    behind a whole burst (measured: +5-10 ms alone vs +50-250 ms among 32-128
    concurrent requests on one Synapse)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots
        self.pilot_taken = False
        self.opened = asyncio.Event()
        self._timer = asyncio.get_running_loop().call_later(PILOT_WAIT, self.opened.set)

    def open(self) -> None:
        self.opened.set()
        self._timer.cancel()
