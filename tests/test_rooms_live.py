"""Rooms as the bot meets them on a real Synapse: first start, upgrades.

Issue 17, defect 9: with invites already waiting at the first start, the bot
handled a city room before the control room and posted "Joined … opted in" to
a control room it was not yet in: 403, dropped. Defect 8: after a room upgrade
a room listed by alias silently dropped out of the stage report.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from bot_harness import BotEnv, bot_env, seconds_ahead
from matrix_helpers import ClientPool, content_of, create_room, room_messages
from nio import AsyncClient, RoomMessage
from test_faults_live import scenario

from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver


async def bot_notices(env: BotEnv, client: AsyncClient | None = None) -> list[str]:
    events = await room_messages(client or env.org, env.control_room)
    return [
        str(content_of(e).get("body", ""))
        for e in events
        if isinstance(e, RoomMessage) and e.sender == env.bot_user.user_id
    ]


async def wait_notices(env: BotEnv, wanted: list[str], timeout: float = 30) -> list[str]:
    """The bot's notices in the control room, once each of ``wanted`` is in one."""
    deadline = time.monotonic() + timeout
    while True:
        notices = await bot_notices(env)
        if all(any(w in n for n in notices) for w in wanted):
            return notices
        if time.monotonic() > deadline:
            raise TimeoutError(f"missing {wanted} in {notices}")
        await asyncio.sleep(0.3)


async def test_opt_in_notices_of_invites_waiting_at_first_start_reach_the_control_room(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "first") as env:
        # The control room's invite is already waiting (bot_env); city rooms
        # invite the bot after it, before the bot has ever run.
        cities = [
            await create_room(env.org, name=f"first {i}", invite=[env.bot_user.user_id])
            for i in range(3)
        ]
        stages = [{"id": "go", "at": "0s", "text": "Go"}]
        env.write_scenario(scenario("first", cities, seconds_ahead(3600), stages))
        await env.start()
        for room in cities:
            await env.wait_joined(room)
        await wait_notices(env, [f"Joined {room}: opted in by" for room in cities])
