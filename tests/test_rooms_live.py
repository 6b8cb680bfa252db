"""Rooms as the bot meets them on a real Synapse: first start, upgrades.

Issue 17, defect 9: with invites already waiting at the first start, the bot
handled a city room before the control room and posted "Joined … opted in" to
a control room it was not yet in: 403, dropped. Defect 8: after a room upgrade
a room listed by alias silently dropped out of the stage report.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from bot_harness import BotEnv, bot_env, seconds_ahead
from matrix_helpers import ClientPool, content_of, create_room, room_messages
from nio import AsyncClient, RoomCreateResponse, RoomMessage
from test_faults_live import scenario
from test_faults_suite import (
    not_delivered,
    opt_in_all,
    stage_reports,
    summary_of,
    upgrade_room,
)

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


async def test_room_listed_by_alias_is_reported_after_an_upgrade_with_the_fix(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """Two rooms of one city, one listed by id and one by alias, are upgraded
    after arming; their moderator does not invite the bot to the new rooms.
    Synapse moves the alias to the new room. Both are counted in the stage
    report, both reported failed, each with the moderator action that fixes it."""
    async with bot_env(homeserver, tmp_path, clients, "alias") as env:
        await env.start()
        mod = await clients.participant(await homeserver.register(f"mod-{tmp_path.name[-8:]}"))
        local = f"upg-{uuid.uuid4().hex[:8]}"
        resp = await mod.room_create(name="by alias", alias=local)
        assert isinstance(resp, RoomCreateResponse), resp
        by_alias = str(resp.room_id)
        alias = f"#{local}:{homeserver.server_name}"
        by_id = await create_room(mod, name="by id")
        stages = [{"id": "go", "at": "0s", "text": "Go"}]
        env.write_scenario(scenario("alias", [by_id, alias], seconds_ahead(3600), stages))
        await opt_in_all(env, {mod: [by_id, by_alias]})
        env.write_scenario(scenario("alias", [by_id, alias], seconds_ahead(15), stages))
        assert "Armed alias" in await env.command("!arm alias")
        new_by_id = await upgrade_room(mod, by_id)
        new_by_alias = await upgrade_room(mod, by_alias)
        await wait_notices(
            env, [f"{by_id} was upgraded to {new_by_id}", f"{by_alias} was upgraded to"]
        )
        notices = await wait_notices(env, ["alias: stage go delivered"], timeout=40)
        summary = summary_of(notices, "alias", "go")
        assert stage_reports([summary], "alias", "go")[0] == {"town": (0, 2)}, summary
        failed = not_delivered(summary)
        assert set(failed) == {by_id, by_alias}, summary
        for old, new in ((by_id, new_by_id), (by_alias, new_by_alias)):
            assert f"upgraded to {new}" in failed[old], summary
            assert "invite the bot" in failed[old], summary
