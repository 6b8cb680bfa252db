"""Hostile users against a live bot: a non-core member trying every control command,
power games and lookalike rooms, a participant flooding a city room while a stage is
due, and someone impersonating the bot."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from figures import record
from matrix_helpers import (
    ClientPool,
    content_of,
    join,
    room_messages,
    send_text,
    sync_until,
    with_content_key,
)
from nio import (
    AsyncClient,
    RoomCreateResponse,
    RoomPutStateResponse,
    RoomSendResponse,
)

from bot import DISPATCH_KEY
from bot.control.catalog import CONTROL_COMMANDS as CONTROL_DEFS
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver

CONTROL_COMMANDS = sorted(CONTROL_DEFS)


def scenario(sid: str, rooms: list[str], start: datetime, stages: list[dict[str, Any]]
             ) -> dict[str, Any]:
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(start),
        "cities": [{
            "id": "alpha",
            "name": "Alpha",
            "timezone": "Europe/Berlin",
            "rooms": rooms,
            "places": {"spot": {"name": "Old Mill", "geo": "52.5,13.4"}},
        }],
        "stages": stages,
    }


def db(env: BotEnv) -> sqlite3.Connection:
    return sqlite3.connect(env.storage_dir / "blossom.db")


async def membership(env: BotEnv, client: AsyncClient, room: str) -> str | None:
    resp = await client.room_get_state_event(room, "m.room.member", env.bot_user.user_id)
    content = getattr(resp, "content", None)
    return content.get("membership") if isinstance(content, dict) else None


async def wait_membership(env: BotEnv, client: AsyncClient, room: str, *, not_: str,
                          timeout: float = 20) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        state = await membership(env, client, room)
        if state != not_ or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.2)


# --- a non-core member, power games, lookalike rooms ------------------------------------


def every_command(sid: str) -> list[str]:
    """One well-formed use of each control command (a core member's would work)."""
    examples = {
        "help": "!help",
        "arm": f"!arm {sid}",
        "disarm": f"!disarm {sid}",
        "status": f"!status {sid}",
        "hold": f"!hold {sid} alpha",
        "resume": f"!resume {sid} alpha",
        "delay": f"!delay {sid} 10m",
        "release": f"!release {sid} go alpha",
        "redirect": f"!redirect {sid} alpha spot Trap Street 52.1,13.1",
        "abort": f"!abort {sid} alpha Everyone go home",
        "headcount": f"!headcount {sid}",
        "drill": f"!drill {sid} 60",
        "purge": f"!purge {sid} confirm",
    }
    assert set(examples) == set(CONTROL_COMMANDS), set(CONTROL_COMMANDS) ^ set(examples)
    return [examples[name] for name in CONTROL_COMMANDS]


async def test_non_core_member_power_games_and_lookalike_rooms(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "hostile") as env:
        sfx = tmp_path.name[-6:].lower().replace("_", "")
        mod = await clients.participant(await homeserver.register(f"mod-host-{sfx}"))
        city = await env.city_room(mod, name="hostile city")
        alias_local = f"blossom-control-{sfx}"
        await env.org.room_put_alias(f"#{alias_local}:localhost", env.control_room)
        env.write_scenario(scenario("hostile", [city], seconds_ahead(600), [
            {"id": "call", "at": "0m", "text": "Meet at {spot}", "place": "spot"},
            {"id": "go", "at": "+10m", "text": "Go"},
        ]))
        await env.start()
        await env.opt_in(mod, city)
        assert "Armed hostile" in await env.command("!arm hostile")

        stranger_user = await homeserver.register(f"stranger-{sfx}")
        stranger = await clients.participant(stranger_user)
        await env.org.room_invite(env.control_room, stranger.user_id)
        await join(stranger, env.control_room)

        # 1. Every control command from a member of the control room without power.
        sent: dict[str, str] = {}
        for text in every_command("hostile"):
            sent[await send_text(stranger, env.control_room, text)] = text
        notices = await env.control_notices(["Only the core group"] * 1, timeout=30)

        async def refusals() -> int:
            events = await room_messages(env.org, env.control_room)
            return sum(
                1 for e in events
                if e.sender == env.bot_user.user_id
                and ((content_of(e).get("m.relates_to") or {}).get("m.in_reply_to") or {})
                .get("event_id") in sent
                and "Only the core group" in str(content_of(e).get("body"))
            )

        for _ in range(100):
            if await refusals() == len(sent):
                break
            await asyncio.sleep(0.2)
        assert await refusals() == len(sent), notices

        # 2. Raising one's own power where one cannot: the homeserver says no.
        resp = await stranger.room_put_state(
            env.control_room, "m.room.power_levels",
            {"users": {stranger.user_id: 100}, "users_default": 100},
        )
        assert not isinstance(resp, RoomPutStateResponse), resp

        # 3. Where one can (one's own rooms): full power, a lookalike name and alias,
        #    and an invite to the bot. Not a control room, not listed: declined.
        lookalikes: list[str] = []
        for name, alias in (
            (f"control {'hostile'}", f"blossom-contro1-{sfx}"),        # digit one
            (f"control {'hostile'}", f"blossom-c\u043entrol-{sfx}"),   # Cyrillic o
            ("hostile city", f"hostile-clty-{sfx}"),                   # lookalike city
        ):
            created = await stranger.room_create(name=name, alias=alias)
            if not isinstance(created, RoomCreateResponse):
                created = await stranger.room_create(name=name)  # alias refused: no matter
            assert isinstance(created, RoomCreateResponse), created
            room = created.room_id
            raised = await stranger.room_put_state(
                room, "m.room.power_levels",
                {"users_default": 100, "events_default": 0, "state_default": 0},
            )
            assert isinstance(raised, RoomPutStateResponse), raised
            invited = await stranger.room_invite(room, env.bot_user.user_id)
            assert getattr(invited, "status_code", None) is None, invited
            lookalikes.append(room)
        for room in lookalikes:
            state = await wait_membership(env, stranger, room, not_="invite")
            assert state in ("leave", None), (room, state)
        # ...and with all that power elsewhere, still no command in the control room.
        last = await send_text(stranger, env.control_room, "!abort hostile")
        sent[last] = "!abort hostile"
        for _ in range(100):
            if await refusals() == len(sent):
                break
            await asyncio.sleep(0.2)
        assert await refusals() == len(sent)

        # Power is read afresh for every command: promoted, heard; demoted, refused.
        async def set_power(level: int) -> None:
            levels = await env.org.room_get_state_event(env.control_room, "m.room.power_levels")
            content = dict(levels.content)
            content["users"] = {**content.get("users", {}), stranger.user_id: level}
            put = await env.org.room_put_state(env.control_room, "m.room.power_levels", content)
            assert isinstance(put, RoomPutStateResponse), put

        await set_power(50)
        await sync_until(stranger, lambda: True)
        heard = await send_text(stranger, env.control_room, "!status hostile")
        for _ in range(100):
            events = await room_messages(env.org, env.control_room)
            answer = [e for e in events if e.sender == env.bot_user.user_id and (
                (content_of(e).get("m.relates_to") or {}).get("m.in_reply_to") or {}
            ).get("event_id") == heard]
            if answer:
                break
            await asyncio.sleep(0.2)
        assert answer and "alpha" in str(content_of(answer[0]).get("body")), answer
        await set_power(0)
        demoted = await send_text(stranger, env.control_room, "!status hostile")
        sent[demoted] = "!status hostile"
        for _ in range(100):
            if await refusals() == len(sent):
                break
            await asyncio.sleep(0.2)
        assert await refusals() == len(sent)

        # Nothing changed, and every refused attempt is in the audit table.
        conn = db(env)
        audit = conn.execute("SELECT sender, command, result FROM audit").fetchall()
        refused_commands = [c for s, c, r in audit
                            if s == stranger.user_id and r == "refused: not core group"]
        assert sorted(refused_commands) == sorted(
            "!" + t.split()[0][1:] for t in sent.values()), refused_commands
        declined = [row for row in audit if row[0] == stranger.user_id
                    and row[1].startswith("(invite)")]
        assert len(declined) == len(lookalikes), audit
        assert all(r.startswith("refused") for _, _, r in declined), declined
        runs = conn.execute("SELECT scenario_id, state, drill_room FROM runs").fetchall()
        assert runs == [("hostile", "armed", None)], runs
        for table in ("holds", "delays", "redirects", "checkins"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
        states = {s for (s,) in conn.execute("SELECT state FROM dispatches")}
        assert states == {"scheduled"}, states
        rooms = dict(conn.execute("SELECT room_id, membership FROM rooms").fetchall())
        conn.close()
        assert all(rooms.get(r) != "joined" for r in lookalikes), rooms
        assert with_content_key(await room_messages(mod, city), DISPATCH_KEY) == []

        # The bot's part (the demoted !status is in sent); the power-level edit was
        # the homeserver's to refuse, and is counted apart.
        tried = len(sent) + len(lookalikes)
        record(
            "hostile/non-core-and-lookalikes",
            section="Hostile users",
            what="A non-core member of the control room: every control command, raising "
            "their power there, a command right after being demoted, and from rooms of "
            "their own with full power, invites "
            "from lookalike rooms (names, aliases with a digit 1 and a Cyrillic o): "
            "all refused and audited, nothing changed",
            tried=tried,
            unit="actions",
            command=".venv/bin/pytest -q tests/test_hostile.py -k non_core",
            homeserver={"power-level edit refused": 1},
            by_kind={
                "control commands (one after a demotion)": len(sent),
                "lookalike invites": len(lookalikes),
            },
        )


# --- a flood while a stage is due, and an impostor ----------------------------------------

FLOOD_EVENTS = 1000  # at least; the flood goes on until FLOOD_PAST_S after the instant
FLOOD_PAST_S = 1.0
GO_OFFSET_S = 12
LATENESS_BOUND_S = 2.0


async def test_flood_while_a_stage_is_due_and_impostor(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "flood") as env:
        sfx = tmp_path.name[-6:].lower().replace("_", "")
        mod = await clients.participant(await homeserver.register(f"mod-flood-{sfx}"))
        city = await env.city_room(mod, name="flood city")
        stages = [
            {"id": "call", "at": "0s", "text": "React or say !here"},
            {"id": "go", "at": f"+{GO_OFFSET_S}s", "text": "Go to {spot}", "place": "spot"},
        ]
        # Listed (so the opt-in is accepted) now; its instants are set just before !arm.
        env.write_scenario(scenario("flood", [city], seconds_ahead(3600), stages))
        await env.start()
        await env.opt_in(mod, city)
        flooder = await clients.participant(await homeserver.register(f"flooder-{sfx}"))
        await homeserver.exempt_from_rate_limits(flooder.user_id)
        people = [await clients.participant(await homeserver.register(f"p{i}-{sfx}"))
                  for i in range(3)]
        # Bait: people whose only act is a reaction to the forged stage.
        baited = [await clients.participant(await homeserver.register(f"bait{i}-{sfx}"))
                  for i in range(2)]
        impostor = await clients.participant(await homeserver.register(f"imp-{sfx}"))
        for client in (flooder, *people, *baited, impostor):
            await mod.room_invite(city, client.user_id)
            await join(client, city)

        start = seconds_ahead(4)
        env.write_scenario(scenario("flood", [city], start, stages))
        assert "Armed flood" in await env.command("!arm flood")
        await env.control_notices("stage call delivered", timeout=30)
        call = with_content_key(await room_messages(mod, city), DISPATCH_KEY)[0].event_id

        # The impostor takes the bot's display name and posts a forged stage, tag and all.
        await impostor.set_displayname(env.bot_user.localpart)
        forged = await impostor.room_send(city, "m.room.message", {
            "msgtype": "m.text", "body": "Change of plan: go to the harbour",
            "format": "org.matrix.custom.html",
            "formatted_body": "Change of plan: go to the harbour",
            DISPATCH_KEY: {"scenario": "flood", "city": "alpha", "stage": "go",
                           "part": "text"},
        })
        assert isinstance(forged, RoomSendResponse), forged
        # Reacting to the forged message is no check-in. These come before the three
        # check-ins below in the room's timeline, which the bot reads in order: once
        # those are counted, the bot has seen these too.
        for b in baited:
            resp = await b.room_send(city, "m.reaction", {"m.relates_to": {
                "rel_type": "m.annotation", "event_id": forged.event_id, "key": "👍"}})
            assert isinstance(resp, RoomSendResponse), resp

        # 1,000 events from one participant: chatter, !here over and over, reactions to
        # the stage (each with its own key, as the homeserver refuses repeats), and
        # reactions to the forged message; three others check in once, mid-flood. The
        # flood goes on until past the go stage's instant, however fast the machine.
        go_instant = start.timestamp() + GO_OFFSET_S
        flood_ids: list[str] = []  # in the order the homeserver answered

        async def one(i: int) -> None:
            if i % 4 == 0:
                content: dict[str, Any] = {"m.relates_to": {
                    "rel_type": "m.annotation", "event_id": call, "key": f"k{i}"}}
                resp = await flooder.room_send(city, "m.reaction", content)
            elif i % 4 == 1:
                resp = await flooder.room_send(city, "m.room.message",
                                               {"msgtype": "m.text", "body": "!here"})
            elif i % 20 == 2:
                content = {"m.relates_to": {"rel_type": "m.annotation",
                                            "event_id": forged.event_id, "key": f"f{i}"}}
                resp = await flooder.room_send(city, "m.reaction", content)
            else:
                resp = await flooder.room_send(city, "m.room.message",
                                               {"msgtype": "m.text", "body": f"spam {i} " * 20})
            assert isinstance(resp, RoomSendResponse), resp
            flood_ids.append(resp.event_id)

        numbers = itertools.count()

        async def worker() -> None:  # 16 of them: 16 requests in flight
            while (i := next(numbers)) < FLOOD_EVENTS or time.time() < go_instant + FLOOD_PAST_S:
                await one(i)

        flood_started = time.monotonic()
        flood = asyncio.gather(*(worker() for _ in range(16)))
        await asyncio.sleep(0.5)
        for p in people:
            await send_text(p, city, "!here")
        for p in people:  # impostor-bait: reacting to the forged message is no check-in
            await p.room_send(city, "m.reaction", {"m.relates_to": {
                "rel_type": "m.annotation", "event_id": forged.event_id, "key": "👍"}})
        # The core group is heard mid-flood: a command's reply does not queue behind it.
        await asyncio.sleep(2)
        asked = time.monotonic()
        assert "flood" in await env.command("!status flood", timeout=40)
        command_latency = time.monotonic() - asked
        await flood
        flood_seconds = time.monotonic() - flood_started
        await env.control_notices("stage go delivered", timeout=40)

        # On time despite the flood (origin_server_ts: the homeserver's clock, this
        # machine's).
        ours = [e for e in with_content_key(await room_messages(mod, city), DISPATCH_KEY)
                if e.sender == env.bot_user.user_id]
        go = [e for e in ours if content_of(e)[DISPATCH_KEY]["stage"] == "go"
              and content_of(e)[DISPATCH_KEY]["part"] == "text"]
        assert len(go) == 1, [content_of(e)[DISPATCH_KEY] for e in ours]
        lateness = go[0].server_timestamp / 1000 - (start.timestamp() + GO_OFFSET_S)
        print(f"flood: {FLOOD_EVENTS} events in {flood_seconds:.1f} s; stage go "
              f"released {lateness * 1000:.0f} ms after its instant; !status answered "
              f"in {command_latency:.2f} s mid-flood")
        assert -0.05 <= lateness < LATENESS_BOUND_S, lateness
        assert flood_seconds > GO_OFFSET_S - 4, "the stage was not due during the flood"
        # The flood demonstrably overlaps the instant, by the homeserver's own stamps.
        stamps = []
        for event_id in (flood_ids[0], flood_ids[-1]):
            got = await mod.room_get_event(city, event_id)
            stamps.append(got.event.server_timestamp / 1000)
        assert stamps[0] < go_instant < stamps[1], (stamps, go_instant)
        flood_events = len(flood_ids)
        assert flood_events >= FLOOD_EVENTS

        # Check-ins: once per person per stage, the three mid-flood ones included.
        def rows() -> list[tuple[str, str]]:
            conn = db(env)
            try:
                return [(u, s) for u, s in conn.execute("SELECT user_id, stage_id FROM checkins")]
            finally:
                conn.close()

        for _ in range(150):
            if {p.user_id for p in people} <= {u for u, _ in rows()}:
                break
            await asyncio.sleep(0.2)
        found = rows()
        per_user = Counter(u for u, _ in found)
        assert len(found) == len(set(found)), found
        for p in people:
            assert per_user[p.user_id] == 1, found
        assert 1 <= per_user[flooder.user_id] <= 2, found  # call, and go once released
        assert impostor.user_id not in per_user and mod.user_id not in per_user, found
        for b in baited:  # a bot that counted any reaction would have them
            assert b.user_id not in per_user, found

        # The bot's own messages carry the dispatch key and come from its user id; the
        # impostor's forged one carries the key too, but not the bot's id.
        assert all(DISPATCH_KEY in content_of(e) for e in ours)
        tagged = with_content_key(await room_messages(mod, city), DISPATCH_KEY)
        senders = Counter(e.sender for e in tagged)
        assert senders[impostor.user_id] == 1, senders
        assert set(senders) == {env.bot_user.user_id, impostor.user_id}, senders
        profile = await mod.get_displayname(impostor.user_id)
        assert getattr(profile, "displayname", None) == env.bot_user.localpart
        record(
            "hostile/flood",
            section="Hostile users",
            what=f"A participant flooding a city room with {flood_events} messages and "
            "reactions, from before a stage's instant until after it: the stage released "
            "on time, check-ins once per person",
            tried=flood_events,
            unit="events",
            command=".venv/bin/pytest -q -s tests/test_hostile.py -k flood",
            measured={
                "stage lateness ms": round(lateness * 1000),
                "bound ms": int(LATENESS_BOUND_S * 1000),
                "flood seconds": round(flood_seconds, 1),
                "flood from s before the instant": round(go_instant - stamps[0], 1),
                "flood until s after": round(stamps[1] - go_instant, 1),
                "!status reply mid-flood s": round(command_latency, 2),
                "check-in rows": len(found),
            },
        )
        record(
            "hostile/impostor",
            section="Hostile users",
            what="An impostor with the bot's display name posting a forged stage with the "
            "dispatch key: reactions to it are no check-in (from people who never checked "
            "in, and from people who had)",
            tried=len(baited) + len(people),
            unit="reactions",
            command=".venv/bin/pytest -q -s tests/test_hostile.py -k flood",
            homeserver={"forged stage told apart by the sender the server set": 1},
            by_kind={"from people who never checked in": len(baited),
                     "from people already checked in": len(people)},
        )
        await sync_until(mod, lambda: True)
