"""Notifier: reports to a control room the bot is not in yet wait, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from bot.clock import SystemClock
from bot.matrix.sender import SendFailed
from bot.notify import Notifier
from bot.retry import SendFailure


class Recorder:
    def __init__(self, joined: set[str]) -> None:
        self.joined = joined
        self.sent: list[tuple[str, str]] = []

    async def send(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str:
        if room_id not in self.joined:  # what nio's room_send does, as a 403
            raise SendFailed(SendFailure(403, errcode="M_FORBIDDEN"))
        self.sent.append((room_id, str(content["body"])))
        return f"$e{len(self.sent)}"

    async def prepare(self, room_id: str) -> None:
        return None

    async def find_dispatch(self, room_id: str, tag: Mapping[str, str]) -> str | None:
        return None


async def test_reports_wait_for_the_control_room_and_keep_their_order() -> None:
    sender = Recorder(joined=set())
    notifier = Notifier(
        sender, SystemClock(), ["!control"], in_room=lambda r: r in sender.joined,
        wait_in_room_s=5,
    )
    await notifier.report(None, "Joined !a")  # returns at once: not blocked
    await notifier.report("!control", "Joined !b")
    assert sender.sent == []
    sender.joined.add("!control")
    await notifier.report(None, "Joined !c")  # after the waiting ones, not before
    for _ in range(50):
        if len(sender.sent) == 3:
            break
        await asyncio.sleep(0.05)
    assert [body for _, body in sender.sent] == ["Joined !a", "Joined !b", "Joined !c"]
    await notifier.report(None, "direct now")
    assert sender.sent[-1] == ("!control", "direct now")
    await notifier.close()


async def test_a_room_never_joined_gives_up_within_the_bound() -> None:
    sender = Recorder(joined=set())
    notifier = Notifier(sender, SystemClock(), ["!control"], in_room=lambda r: False,
                        wait_in_room_s=0.3)
    await notifier.report(None, "lost")
    await asyncio.sleep(0.6)
    assert sender.sent == []
    assert not notifier._drains
    await notifier.close()
