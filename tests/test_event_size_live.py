"""The largest stage validation accepts is delivered in an encrypted room and read.

The text mixes every character that JSON, nio's ``ensure_ascii`` or the HTML form
expand, and the pin's note is as long as validation allows: on the old 40,000-byte
rule the same search found texts the homeserver refused.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from bot_harness import bot_env, iso_z, seconds_ahead
from matrix_helpers import ClientPool, collect_messages, content_of

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.scenario import ScenarioError, load_scenario_text

pytestmark = pytest.mark.homeserver

UNIT = 'ж🌸\\"<>&\n x'


def scenario(room: str, start: datetime, text: str, note: str) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "size-" + "s" * 59,
        "title": "Largest stage",
        "start": iso_z(start),
        "cities": [
            {
                "id": "c" * 64,
                "name": "Ж" * 40,
                "timezone": "Europe/Berlin",
                "rooms": [room],
                "places": {"hall": {"name": "Town Hall", "geo": "52.52,13.405", "note": note}},
            }
        ],
        "stages": [{"id": "t" * 64, "at": "0s", "text": text, "place": "hall"}],
    }


def _accepted(data: dict[str, Any]) -> bool:
    try:
        load_scenario_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    except ScenarioError:
        return False
    return True


def _largest(make: Any, limit: int = 70_000) -> int:
    """The largest n for which ``make(n)`` is accepted (make(0) must be)."""
    low, high = 0, limit
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _accepted(make(mid)) else (low, mid)
    return low


def largest_stage(room: str, start: datetime) -> tuple[str, str]:
    """The largest text (UNIT repeated, then letters) and pin note validation accepts."""
    units = _largest(lambda n: scenario(room, start, "Go " + UNIT * n, "n"))
    base = "Go " + UNIT * units
    letters = _largest(lambda n: scenario(room, start, base + "x" * n, "n"), 200)
    text = base + "x" * letters
    note_length = _largest(lambda n: scenario(room, start, text, "n" + "ж" * n))
    return text, "n" + "ж" * note_length


async def test_largest_accepted_stage_is_delivered_encrypted(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "size") as env:
        moderator = await clients.participant(
            await homeserver.register(f"sizemod-{tmp_path.name[-6:]}")
        )
        room = await env.city_room(moderator, name="encrypted city", encrypted=True)
        env.write_scenario(scenario(room, seconds_ahead(3600), "placeholder", "n"))
        await env.start()
        await env.opt_in(moderator, room)

        # The search for the largest stage takes seconds under load: the instant is
        # set after it (same-length timestamp, same size), so !arm is never late.
        text, note = largest_stage(room, seconds_ahead(3600))
        start = seconds_ahead(6)
        assert not _accepted(scenario(room, start, text + "x", note))  # the very largest
        data = scenario(room, start, text, note)
        env.write_scenario(data)
        reply = await env.command(f"!arm {data['id']}")
        assert f"Armed {data['id']}" in reply, reply

        def both(ms: list[Any]) -> bool:
            return any(content_of(m).get("body") == text for m in ms) and any(
                content_of(m).get("msgtype") == "m.location" for m in ms
            )

        msgs = await collect_messages(moderator, room, until=both, timeout=40)
        ours = [m for m in msgs if DISPATCH_KEY in content_of(m)]
        assert [m.sender for m in ours] == [env.bot_user.user_id] * 2
        assert all(getattr(m, "decrypted", False) for m in ours)  # sent encrypted
        (sent_text,) = [m for m in ours if content_of(m).get("msgtype") == "m.text"]
        (pin,) = [m for m in ours if content_of(m).get("msgtype") == "m.location"]
        assert content_of(sent_text)["body"] == text
        assert "&lt;&gt;&amp;" in content_of(sent_text)["formatted_body"]
        location = content_of(pin)["org.matrix.msc3488.location"]
        assert location["description"] == f"Town Hall — {note}"
        notices = await env.control_notices(f"stage {'t' * 64} delivered", timeout=20)
        assert any("delivered to 1 of 1" in n for n in notices), notices
