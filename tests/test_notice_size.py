"""A notice too large for one Matrix event is cut to fit, keeping its head and its
tail. Synapse refuses an event over 64 KiB (413 M_TOO_LARGE) and the reply is lost:
seen for a crew's !arm at 1,000 rooms (the scale-out benchmark got no reply)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bot.clock import SystemClock
from bot.content import NOTICE_MAX_BYTES, fit_notice
from bot.notify import Notifier

EVENT_LIMIT = 65_536


class Sized:
    def __init__(self) -> None:
        self.sent: list[Mapping[str, Any]] = []

    async def send(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str:
        # Synapse's limit is on the whole event; the content is most of it.
        if len(json.dumps(content).encode()) > EVENT_LIMIT - 1_000:
            raise AssertionError("413 M_TOO_LARGE")
        self.sent.append(content)
        return "$e"


def _rooms(n: int) -> list[str]:
    return [f"!{i:04d}aMo7xwDr_CpCeJVXxJvDSaKUtwNKT:hs-{i % 2}.example.org" for i in range(n)]


async def test_an_arm_preview_listing_a_thousand_rooms_still_arrives() -> None:
    text = "\n".join(
        ["Preview of crew-sharded-0 (run 7): 1000 rooms in 10 cities.", "Problems:"]
        + [f"- {r}: not joined by @crew-a:hs-0 <&> (another serves it)" for r in _rooms(1000)]
        + ["To arm it as it is, send !arm crew-sharded-0 confirm within 60 seconds."]
    )
    assert len(text.encode()) > EVENT_LIMIT  # the reply that was lost
    sender = Sized()
    notifier = Notifier(sender, SystemClock(), ["!control"])
    await notifier.reply("!control", "$cmd", text)
    (content,) = sender.sent
    body = str(content["body"])
    assert body.startswith("Preview of crew-sharded-0")
    assert body.endswith("send !arm crew-sharded-0 confirm within 60 seconds.")
    assert "line(s) cut here: a Matrix message holds at most 64 KiB." in body
    assert "confirm within 60 seconds." in str(content["formatted_body"])


def test_what_fits_is_unchanged_and_one_long_line_is_shortened() -> None:
    assert fit_notice("short", "| a | b |") == ("short", "| a | b |")
    one = "Rooms: " + ", ".join(_rooms(1000))
    text, table = fit_notice(one, None)
    assert table is None and len(text.encode()) <= NOTICE_MAX_BYTES
    assert text.startswith("Rooms: !0000") and "long lines cut" in text


def test_a_long_table_is_cut_before_the_text() -> None:
    table = "\n".join(f"| {r} | 1 |" for r in _rooms(1000))
    text, cut = fit_notice("Status of the run", table)
    assert text == "Status of the run"
    assert cut is not None and len(cut.encode()) <= NOTICE_MAX_BYTES
    assert cut.startswith("| !0000") and cut.endswith("| 1 |")
