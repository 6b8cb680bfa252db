"""A crew of two bots on two federating Synapses (tests/conftest.py's
``federated_pair``): one city on each server, each member first for its own
city. All alive, each room gets each stage once, from its member on duty. With
server b stopped across an instant, the member on a covers the room it shares
with b's city: participants on a read the stage at once, and when b returns its
participants see it once (b's member, retrying, looks first and finds the copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from bot_harness import BotEnv, iso_z
from matrix_helpers import create_room, participant, sync_until
from nio import AsyncClient
from test_crew_send_live import (
    COVER_WITHIN_S,
    GRACE_S,
    _config,
    duplicates,
    record_crew,
    settled,
    sightings,
    wait_for,
)

from bot.devtools.federation import FederatedPair

pytestmark = pytest.mark.homeserver


@contextlib.asynccontextmanager
async def federated_crew(
    pair: FederatedPair, tmp: Path
) -> AsyncIterator[tuple[BotEnv, BotEnv, dict[str, AsyncClient], tuple[str, str]]]:
    """Bot a on server a, bot b on server b; the control room on a (both bots
    power 50); north made on a by ``mod_a``, south on b by ``mod_b``, and
    ``pa`` on server a in south. Both bots opted in to both rooms."""
    suffix = uuid.uuid4().hex[:6]
    bots = [await hs.register(f"crew-{label}-{suffix}")
            for label, hs in zip("ab", pair.servers, strict=True)]
    for hs, bot in zip(pair.servers, bots, strict=True):
        await hs.exempt_from_rate_limits(bot.user_id)
    people: dict[str, AsyncClient] = {}
    envs: list[BotEnv] = []
    for name, hs in (("org", pair.a), ("mod_a", pair.a), ("mod_b", pair.b), ("pa", pair.a)):
        user = await hs.register(f"{name}-{suffix}")
        people[name] = await participant(hs, user, tmp / f"store-{name}")
    ids = [b.user_id for b in bots]
    try:
        control = await create_room(
            people["org"], name="fed control", invite=ids, power_users={i: 50 for i in ids}
        )
        north = await create_room(people["mod_a"], name="fed north")
        south = await create_room(people["mod_b"], name="fed south", invite=[people["pa"].user_id])
        pa = people["pa"]
        await sync_until(pa, lambda: south in pa.invited_rooms)
        resp = await pa.join(south)
        assert not hasattr(resp, "status_code") or resp.status_code is None, resp
        await sync_until(pa, lambda: south in pa.rooms)
        for label, hs, bot in zip(("a", "b"), pair.servers, bots, strict=True):
            d = tmp / label
            (d / "scenarios").mkdir(parents=True)
            path = d / "config.yaml"
            path.write_text(yaml.safe_dump(_config(hs, bot, control, ids)))
            org = people["org"]
            envs.append(BotEnv(hs, d, bot, bot, org, control, None, path))  # type: ignore[arg-type]
        yield envs[0], envs[1], people, (north, south)
    finally:
        for env in envs:
            env.kill()
        for client in people.values():
            await client.close()


def fed_scenario(a: str, b: str, rooms: tuple[str, str]) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "cf",
        "title": "cf",
        "start": iso_z(datetime.now(UTC) + timedelta(days=1)),
        "failover": {"grace": f"{GRACE_S:g}s"},
        "cities": [
            {"id": "north", "name": "North", "timezone": "Europe/Berlin",
             "rooms": [rooms[0]], "crew": [a, b]},
            {"id": "south", "name": "South", "timezone": "Europe/Berlin",
             "rooms": [rooms[1]], "crew": [b, a]},
        ],
        "stages": [
            {"id": "one", "at": "0s", "text": "One"},
            {"id": "two", "at": "+12s", "text": "Two"},
        ],
    }


async def test_federated_crew_covers_a_stopped_homeserver(
    federated_pair: FederatedPair, tmp_path: Path
) -> None:
    pair = federated_pair
    async with federated_crew(pair, tmp_path) as (env_a, env_b, people, rooms):
        north, south = rooms
        a, b = env_a.bot_user.user_id, env_b.bot_user.user_id
        data = fed_scenario(a, b, rooms)  # the same file for both (its digest decides)
        for env in (env_a, env_b):
            env.write_scenario(data)
            env.spawn()
        for env in (env_a, env_b):
            await env.wait_joined(env.control_room, timeout=40)
        # Each room's moderator invites its own server's member, which invites
        # the rest of the crew.
        for room, mod, first in ((north, people["mod_a"], env_a), (south, people["mod_b"], env_b)):
            await mod.room_invite(room, first.bot_user.user_id)
            for env in (env_a, env_b):
                await env.wait_joined(room, by=mod, timeout=40)
        # Arm only once a sees b up across the federation (so b is on duty for
        # south). Until b has heard a, b holds its replies (the start-up rule):
        # exactly one member answers each !crew.
        for _ in range(60):
            crew = await env_a.command("!crew", timeout=30)
            if b in crew and "ago" in crew and "(down)" not in crew:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"the members never saw each other up: {crew}")
        t0 = datetime.now(UTC) + timedelta(seconds=6)
        assert "Armed cf" in await env_a.command(f"!arm cf at {iso_z(t0)}", timeout=30)
        # All alive: once each, from the member on duty (a north, b south).
        await wait_for(people["mod_a"], north, "one")
        await wait_for(people["pa"], south, "one")
        await asyncio.sleep(GRACE_S + 2)
        assert [(s, w) for s, w, _ in await sightings(people["mod_a"], north)] == [("one", a)]
        assert [(s, w) for s, w, _ in await sightings(people["pa"], south)] == [("one", b)]
        # Server b goes down 1.5 s before stage two and stays down across it.
        two = t0 + timedelta(seconds=12)
        await asyncio.sleep(max(0.0, (two - datetime.now(UTC)).total_seconds() - 1.5))
        await pair.stop_server(pair.b)
        arrived = await wait_for(people["pa"], south, "two", timeout=20)
        assert arrived - two.timestamp() <= COVER_WITHIN_S, arrived - two.timestamp()
        assert [(s, w) for s, w, _ in await sightings(people["pa"], south)] == [
            ("one", b), ("two", a)
        ]
        await wait_for(people["mod_a"], north, "two")
        await asyncio.sleep(2)
        await pair.start_server(pair.b)
        # b's participants see the stage once; b's member, retrying, found a's copy.
        await wait_for(people["mod_b"], south, "two", timeout=30)
        assert await settled(env_b, "two") == {
            north: ("skipped", f"delivered by {a}"), south: ("skipped", f"delivered by {a}")
        }
        await asyncio.sleep(GRACE_S)
        for reader, room in ((people["mod_b"], south), (people["pa"], south),
                             (people["mod_a"], north)):
            got = [(s, w) for s, w, _ in await sightings(reader, room)]
            assert [s for s, _ in got] == ["one", "two"], (reader.user_id, room, got)
        assert [w for s, w, _ in await sightings(people["mod_a"], north)] == [a, a]
        left = 0
        for reader, room in ((people["mod_b"], south), (people["pa"], south),
                             (people["mod_a"], north)):
            left += duplicates(await sightings(reader, room))
        record_crew(
            "tests/test_crew_send_federated_live.py::"
            "test_federated_crew_covers_a_stopped_homeserver",
            "homeserver-stopped",
            "Two members on two federating Synapses; one homeserver stopped 1.5 s before "
            "an instant and across it (grace 2 s): the other member covers the room it "
            "shares with that server's city; once the server returns, its participants "
            "see the stage once",
            lost={"homeserver stopped": 1}, covered=1, last_covered_s=arrived - two.timestamp(),
            visible_duplicates=left,
        )
