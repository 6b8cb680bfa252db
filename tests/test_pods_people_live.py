"""Live (issue 14), the participant side of pods and roles on a real Synapse with
real nio clients: 40 private participants assigned evenly over four pods of 10
and "full" past them; the same pod after ``!stop`` + ``!join``; ``!role``
before and after the stage that needs it; ``!headcount`` per pod and role.

Expected replies come from bot.i18n itself (the wiring is tested here, the
wording in tests/test_i18n*.py). tests/test_pods_people.py has the rules
against fakes, in milliseconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from matrix_helpers import ClientPool, content_of, room_messages, send_text, with_content_key
from nio import AsyncClient, LoginResponse, RoomCreateResponse

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.i18n import Catalogs
from bot.i18n import messages as m

pytestmark = pytest.mark.homeserver

EN = Catalogs().translator(None)
PODS = ("mongkok", "causeway", "shatin", "tsuenwan")
CITY = "Hong Kong"


def pods_city(
    capacity: int | None = None, rooms: dict[str, list[Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": "hk",
        "name": CITY,
        "timezone": "Asia/Hong_Kong",
        "direct": True,
        "places": {"home": {"name": "home"}},
        "pods": [
            {
                "id": pod,
                **({"capacity": capacity} if capacity else {}),
                **({"rooms": rooms[pod]} if rooms and pod in rooms else {}),
                "places": {"staging": {"name": f"S-{pod}"}},
            }
            for pod in PODS
        ],
    }


ROLES = [
    {"id": "front", "name": "In the action", "about": "At the spot itself."},
    {"id": "support", "name": "Nearby support", "about": "Close by, with water."},
]


def scenario(sid: str, start: datetime, city: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(start),
        "cities": [city],
        "stages": [{"id": "call", "at": "0s", "place": "staging", "text": "Go to {staging}."}],
        **extra,
    }


# -- people ------------------------------------------------------------------------------


class People:
    """Light nio clients (no encryption: the direct chats are plain) in direct
    chats with the bot, closed together."""

    def __init__(self, env: BotEnv, hs: EmbeddedHomeserver) -> None:
        self.env, self.hs = env, hs
        self.clients: list[AsyncClient] = []

    async def _one(self, name: str) -> tuple[AsyncClient, str]:
        user = await self.hs.register(f"{name}-{uuid.uuid4().hex[:6]}")
        client = AsyncClient(self.hs.url, user.user_id)
        self.clients.append(client)
        assert isinstance(await client.login(user.password), LoginResponse)
        resp = await client.room_create(is_direct=True, invite=[self.env.bot_user.user_id])
        assert isinstance(resp, RoomCreateResponse), resp
        return client, resp.room_id

    async def many(self, prefix: str, n: int) -> list[tuple[AsyncClient, str]]:
        """``n`` people, each in a direct chat the bot has joined."""
        out = list(await asyncio.gather(*(self._one(f"{prefix}{i}") for i in range(n))))
        # One look per chat per round (not a poller per chat): the homeserver is shared.
        pending = dict(out)
        deadline = time.monotonic() + 60
        while pending:
            for client, room in list(pending.items()):
                resp = await client.joined_members(room)
                if any(u.user_id == self.env.bot_user.user_id for u in resp.members):
                    del pending[client]
            assert time.monotonic() < deadline, f"the bot did not join {len(pending)} chats"
            await asyncio.sleep(0.3)
        return out

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


@asynccontextmanager
async def people(env: BotEnv, hs: EmbeddedHomeserver) -> AsyncIterator[People]:
    found = People(env, hs)
    try:
        yield found
    finally:
        await found.aclose()


async def ask(client: AsyncClient, room: str, text: str, timeout: float = 20) -> str:
    """Say ``text`` in ``room``; the body of the bot's reply to it."""
    event_id = await send_text(client, room, text)
    deadline = time.monotonic() + timeout
    while True:
        for event in await room_messages(client, room, page_size=50):
            rel = content_of(event).get("m.relates_to") or {}
            if (rel.get("m.in_reply_to") or {}).get("event_id") == event_id:
                return str(content_of(event).get("body", ""))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply to {text!r} in {room}")
        await asyncio.sleep(0.1)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def db(env: BotEnv) -> sqlite3.Connection:
    return sqlite3.connect(env.storage_dir / "blossom.db")


def pods_of(env: BotEnv, sid: str) -> dict[str, str | None]:
    """user → pod, as the bot stored it."""
    with db(env) as conn:
        rows = conn.execute(
            "SELECT user_id, pod_id FROM direct_participants WHERE scenario_id = ?", (sid,)
        ).fetchall()
    return dict(rows)


def sizes(env: BotEnv, sid: str) -> list[int]:
    found = pods_of(env, sid).values()
    return sorted(sum(1 for p in found if p == pod) for pod in PODS)


JOINED = m.joined(EN, city_name=CITY, pod=True).body
FULL = m.city_full(EN, city_name=CITY).body


# -- assignment ----------------------------------------------------------------------------


async def test_forty_join_evenly_then_the_city_is_full_and_returners_keep_their_pod(
    homeserver: EmbeddedHomeserver, tmp_path: Any, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "podjoin") as env:
        sid = "podjoin"
        env.write_scenario(scenario(sid, seconds_ahead(3600), pods_city(capacity=10)))
        await env.start()
        async with people(env, homeserver) as crowd:
            everyone = await crowd.many("p", 41)
            # In waves of ten at once: the bot takes one !join at a time, so every
            # wave leaves the pods within one of each other.
            for wave in range(4):
                joined = everyone[wave * 10 : wave * 10 + 10]
                replies = await asyncio.gather(*(ask(c, r, f"!join {sid} hk") for c, r in joined))
                assert replies == [JOINED] * 10
                got = sizes(env, sid)
                assert got[-1] - got[0] <= 1, got
            assert sizes(env, sid) == [10, 10, 10, 10]
            late, late_dm = everyone[40]
            assert await ask(late, late_dm, f"!join {sid} hk") == FULL
            assert late.user_id not in pods_of(env, sid)  # nothing stored
            # Joining again keeps the pod, full or not.
            before = pods_of(env, sid)
            client, dm = everyone[3]
            assert await ask(client, dm, f"!join {sid} hk") == JOINED
            assert pods_of(env, sid) == before
            # !stop forgets (no list of who left); joining again lands in the same pod.
            for client, dm in (everyone[0], everyone[17], everyone[39]):
                pod = before[client.user_id]
                assert await ask(client, dm, "!stop") == m.stopped(EN).body
                assert client.user_id not in pods_of(env, sid)
                assert await ask(client, dm, f"!join {sid} hk") == JOINED
                assert pods_of(env, sid)[client.user_id] == pod
            assert pods_of(env, sid) == before
            with db(env) as conn:
                assert conn.execute("SELECT COUNT(*) FROM pod_keys").fetchone() == (1,)


# -- roles -------------------------------------------------------------------------------


async def dm_stage(client: AsyncClient, room: str, stage: str) -> bool:
    events = with_content_key(await room_messages(client, room), DISPATCH_KEY)
    return any(content_of(e)[DISPATCH_KEY].get("stage", "").split("@")[0] == stage for e in events)


async def test_role_changes_until_the_stage_that_needs_it_then_refuses(
    homeserver: EmbeddedHomeserver, tmp_path: Any, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "podrole") as env:
        sid = "podrole"
        start = seconds_ahead(3600)
        data = scenario(sid, start, pods_city(), roles=ROLES)
        env.write_scenario(data)
        await env.start()
        async with people(env, homeserver) as crowd:
            (person, dm), (other, other_dm) = await crowd.many("r", 2)
            assert await ask(person, dm, "!role") == m.role_needs_join(EN).body
            assert await ask(person, dm, f"!join {sid} hk") == JOINED
            listed = await ask(person, dm, "!role")
            lines = [m.RoleLine(r["id"], r["name"], r["about"]) for r in ROLES]
            assert listed == m.role_list(EN, roles=lines).body
            assert "front — In the action: At the spot itself." in listed
            assert await ask(person, dm, "!role medic") == m.role_unknown(
                EN, role_id="medic", ids=("front", "support")
            ).body
            assert await ask(person, dm, "!role front") == m.role_chosen(
                EN, role_name="In the action"
            ).body
            assert await ask(other, other_dm, f"!join {sid} hk") == JOINED
            # Armed, a plain first stage, then one whose text depends on the role.
            start = seconds_ahead(6)
            data = scenario(sid, start, pods_city(), roles=ROLES)
            data["stages"] = [
                {"id": "call", "at": "0s", "text": "Tonight."},
                {
                    "id": "gather",
                    "at": "+8s",  # well after the prepare lead + margin (3 s here)
                    "place": "staging",
                    "text": {"default": "Go to {staging}.", "support": "Near {staging}."},
                },
                {"id": "bye", "at": "+1h", "text": "Bye."},
            ]
            env.write_scenario(data)
            assert f"Armed {sid}" in await env.command(f"!arm {sid}")
            assert await eventually(lambda: dm_stage(person, dm, "call"), 30)
            # Released, but the same for every role: still free to change.
            assert await ask(person, dm, "!role support") == m.role_chosen(
                EN, role_name="Nearby support"
            ).body
            assert await eventually(lambda: dm_stage(person, dm, "gather"), 30)
            assert await ask(person, dm, "!role front") == m.role_locked(EN).body
            assert await ask(other, other_dm, "!role none") == m.role_locked(EN).body
            with db(env) as conn:
                roles = dict(conn.execute("SELECT user_id, role_id FROM direct_participants"))
            assert roles == {person.user_id: "support", other.user_id: None}
            # The support text went to the person with that role, the default to the other.
            body = [
                str(content_of(e).get("body"))
                for e in with_content_key(await room_messages(person, dm), DISPATCH_KEY)
            ]
            assert any(b.startswith("Near S-") for b in body), body
            assert await ask(person, dm, "!stop") == m.stopped(EN).body
            await env.command(f"!disarm {sid}")


# -- headcount -----------------------------------------------------------------------------


async def test_headcount_per_pod_and_role(
    homeserver: EmbeddedHomeserver, tmp_path: Any, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "podhead") as env:
        sid = "podhead"
        mod = await clients.participant(await homeserver.register(f"mod-{uuid.uuid4().hex[:6]}"))
        medics = await env.city_room(mod, name="medics", members=[env.organiser.user_id])
        city = pods_city(rooms={"mongkok": [{"room": medics, "role": "support"}]})
        env.write_scenario(scenario(sid, seconds_ahead(3600), city, roles=ROLES))
        await env.start()
        await env.opt_in(mod, medics)
        async with people(env, homeserver) as crowd:
            four = await crowd.many("h", 4)
            for client, dm in four:
                assert await ask(client, dm, f"!join {sid} hk") == JOINED
            assert sizes(env, sid) == [1, 1, 1, 1]
            first, first_dm = four[0]
            await ask(first, first_dm, "!role front")
            assert f"Armed {sid}" in await env.command(f"!arm {sid}")
            for client, dm in four:
                await send_text(client, dm, "!here")
            await send_text(mod, medics, "!here")
            pods = pods_of(env, sid)

            async def counted() -> str:
                head = await env.command(f"!headcount {sid}")
                return head if "5 check-ins" in head else ""

            head = await eventually(counted)
            assert head, await env.command(f"!headcount {sid}")
            lines = [" ".join(line.split()) for line in head.splitlines()]
            for pod in PODS:
                n = sum(1 for p in pods.values() if p == pod) + (pod == "mongkok")
                assert f"hk/{pod} (before the first stage) {n}" in lines, head
            assert "hk (before the first stage) front 1" in lines, head
            assert "hk (before the first stage) support 1" in lines, head
            assert "hk (before the first stage) (no role) 3" in lines, head
            for pod in PODS:
                assert f"S-{pod}" not in head  # ids and counts, never a place
            one = await env.command(f"!headcount {sid} hk/{pods[first.user_id]}")
            assert f"hk/{pods[first.user_id]}" in one and "front" in one
            others = [p for p in PODS if p != pods[first.user_id]]
            assert not any(f"hk/{p} " in one for p in others), one
            await env.command(f"!disarm {sid}")
