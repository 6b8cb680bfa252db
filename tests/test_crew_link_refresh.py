"""CrewLink.refresh (bot/crew/link.py): the waves of one release that all find
the member ahead looking down ask at once; the control rooms are read once,
and every caller returns only after that read. Fakes, milliseconds."""

from __future__ import annotations

import asyncio

from bot.crew.link import CrewLink


class CountingRoster:
    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()

    async def refresh(self) -> None:
        self.reads += 1
        await self.gate.wait()


async def test_waves_asking_at_once_share_one_read_and_wait_for_it() -> None:
    roster = CountingRoster()
    link = CrewLink(roster=roster, matrix=object())  # type: ignore[arg-type]
    asks = [asyncio.ensure_future(link.refresh()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert roster.reads == 1
    assert not any(a.done() for a in asks), "none goes on with the stale view"
    roster.gate.set()
    await asyncio.gather(*asks)
    assert roster.reads == 1
    await asyncio.sleep(1.05)
    await link.refresh()
    assert roster.reads == 2, "a second later the rooms are read again"
