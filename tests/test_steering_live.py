"""Steering a live action on a real homeserver: commands, gates, abort, redirect,
check-ins, private opt-in, purge and drills."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from matrix_helpers import (
    ClientPool,
    content_of,
    join,
    room_messages,
    send_text,
    sync_until,
    with_content_key,
)
from nio import AsyncClient, RoomCreateResponse

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver

# Seconds from writing a scenario's real start to its first instant, for tests that arm
# at once: !arm is answered well within a second, and the harness prepares each stage
# 1 s ahead (dispatch.prepare_seconds), which leaves a few seconds' margin under load.
ARM_LEAD_S = 4


def scenario(
    sid: str,
    cities: list[tuple[str, list[str]]],
    start: datetime,
    stages: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(start),
        "cities": [
            {
                "id": cid,
                "name": cid.capitalize(),
                "timezone": "Europe/Berlin",
                "rooms": rooms,
                "places": {
                    "meet": {"name": f"Meeting point {cid}", "geo": "52.52,13.405"},
                    "spot": {"name": f"Secret spot {cid}", "geo": "52.5,13.4"},
                },
                **extra.pop("city_extra", {}),
            }
            for cid, rooms in cities
        ],
        "stages": stages,
        **extra,
    }


async def dispatches(client: AsyncClient, room: str) -> list[tuple[str, str]]:
    events = with_content_key(await room_messages(client, room), DISPATCH_KEY)
    return [(content_of(e)[DISPATCH_KEY]["stage"], content_of(e)[DISPATCH_KEY]["part"])
            for e in events]


async def notice_in_history(env: BotEnv, text: str, timeout: float = 30) -> None:
    """Wait until a bot message in the control room's whole history contains ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        events = await room_messages(env.org, env.control_room)
        if any(e.sender == env.bot_user.user_id and text in str(content_of(e).get("body"))
               for e in events):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no notice {text!r} within {timeout:g} s")
        await asyncio.sleep(0.2)


async def setup_rooms(
    env: BotEnv, clients: ClientPool, hs: EmbeddedHomeserver, n: int, tag: str
) -> tuple[AsyncClient, list[str]]:
    mod = await clients.participant(await hs.register(f"mod-{tag}-{env.dir.name[-6:]}"))
    rooms = [await env.city_room(mod, name=f"{tag} {i}") for i in range(n)]
    return mod, rooms


async def test_commands_usage_and_refusals(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "cmd") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 1, "cmd")
        start = seconds_ahead(600)
        env.write_scenario(scenario("cmdx", [("alpha", rooms)], start, [
            {"id": "call", "at": "0m", "text": "Hello {city}"},
            {"id": "go", "at": "+10m", "text": "Go to {meet}", "place": "meet"},
        ]))
        await env.start()
        await env.opt_in(mod, rooms[0])
        assert "!redirect" in await env.command("!help")
        assert "Nothing is armed" in await env.command("!status")
        assert "Armed cmdx" in await env.command("!arm cmdx")
        status = await env.command("!status cmdx")
        assert "call" in status and "alpha" in status and "Hello" not in status
        # Wrong arguments: a usage line, nothing changed.
        for bad in ("!hold", "!hold cmdx nowhere", "!delay cmdx soon", "!release cmdx nostage",
                    "!arm", "!frobnicate", "!redirect cmdx alpha", "!drill cmdx fast",
                    "!abort nothere"):
            reply = await env.command(bad)
            assert reply and "Traceback" not in reply, (bad, reply)
        assert "Holding cmdx in alpha" in await env.command("!hold cmdx alpha")
        assert "Resumed cmdx" in await env.command("!resume cmdx")
        reply = await env.command("!delay cmdx 5m")
        assert "Delayed cmdx by 5m" in reply, reply
        assert "into the past" in await env.command("!delay cmdx -30m")
        assert "0 check-ins" in await env.command("!headcount cmdx")
        # A non-core member of the control room is refused and audited.
        stranger_user = await homeserver.register(f"str-{tmp_path.name[-6:]}")
        stranger = await clients.participant(stranger_user)
        await env.org.room_invite(env.control_room, stranger_user.user_id)
        await join(stranger, env.control_room)
        await send_text(stranger, env.control_room, "!abort cmdx")
        notices = await env.control_notices("Only the core group")
        assert notices
        assert "Disarmed cmdx" in await env.command("!disarm cmdx")
        db = sqlite3.connect(env.storage_dir / "blossom.db")
        audit = db.execute("SELECT sender, command, result FROM audit").fetchall()
        assert (stranger_user.user_id, "!abort", "refused: not core group") in audit
        assert any(c == "!hold" and r.startswith("usage") for _, c, r in audit)
        # The stage never went out: no dispatch in the room.
        assert await dispatches(mod, rooms[0]) == []


async def test_gate_holds_then_release_and_gate_skips(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "gate") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 2, "gate")
        stages = [
            {"id": "call", "at": "0s", "text": "Check in at {meet}", "place": "meet"},
            {"id": "go", "at": "+3s", "text": "Go to {spot}", "place": "spot",
             "require": {"checkins": 2, "else": "hold"}},
            {"id": "end", "at": "+5s", "text": "Disperse",
             "require": {"checkins": 1, "else": "skip"}},
        ]
        cities = [("alpha", [rooms[0]]), ("beta", [rooms[1]])]
        # Listed now (so the opt-ins are accepted); the real instants are set before !arm.
        env.write_scenario(scenario("gated", cities, seconds_ahead(3600), stages))
        await env.start()
        await env.opt_in(mod, rooms[0])
        await env.opt_in(mod, rooms[1])
        p1 = await clients.participant(await homeserver.register(f"g1-{tmp_path.name[-6:]}"))
        await mod.room_invite(rooms[1], p1.user_id)
        await join(p1, rooms[1])
        env.write_scenario(scenario("gated", cities, seconds_ahead(ARM_LEAD_S), stages))
        assert "Armed gated" in await env.command("!arm gated")
        # beta: two people check in after the call (one twice: counts once).
        await env.control_notices("stage call delivered")
        await send_text(p1, rooms[1], "!here")
        await send_text(p1, rooms[1], "!here")
        await send_text(mod, rooms[1], "!here")
        notices = await env.control_notices("held in alpha", timeout=30)
        assert not any("held in beta" in n for n in notices), notices
        notices = await env.control_notices(
            ["stage end skipped in alpha", "skipped in beta"], timeout=30
        )
        assert any("stage go delivered to 1 of 1 rooms (beta 1/1)" in n for n in notices), notices
        assert any("skipped in beta" in n for n in notices)  # no check-in after "go"
        assert await dispatches(mod, rooms[0]) == [("call", "text"), ("call", "location")]
        head = await env.command("!headcount gated beta")
        assert "2 check-ins" in head, head
        reply = await env.command("!release gated go alpha")
        assert "Releasing gated stage go now in alpha" in reply, reply
        await env.control_notices("stage go delivered to 1 of 1 rooms (alpha 1/1)")
        assert await dispatches(mod, rooms[0]) == [
            ("call", "text"), ("call", "location"), ("go", "text"), ("go", "location")]


async def test_abort_three_cities_before_later_stage(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "abort") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 6, "abort")
        cities = [("alpha", rooms[0:2]), ("beta", rooms[2:4]), ("gamma", rooms[4:6])]
        plan = [
            {"id": "call", "at": "0s", "text": "Ready in {city}"},
            # Far enough after the call for the abort (sent once the call is out) to
            # be in well before this stage's prepare, even on a loaded machine.
            {"id": "go", "at": "+10s", "text": "Go to {spot}", "place": "spot"},
        ]
        env.write_scenario(scenario("stopme", cities, seconds_ahead(3600), plan,
                                    abort_text="ABORT in {city}: go home"))
        await env.start()
        for r in rooms:
            await env.opt_in(mod, r)
        start = seconds_ahead(ARM_LEAD_S)
        env.write_scenario(scenario("stopme", cities, start, plan,
                                    abort_text="ABORT in {city}: go home"))
        await env.command("!arm stopme")
        await env.control_notices("stage call delivered to 6 of 6")
        reply = await env.command("!abort stopme")
        assert "Aborting stopme in alpha, beta, gamma" in reply, reply
        await env.control_notices("stage !abort delivered to 6 of 6")
        for cid, city_rooms in cities:
            for r in city_rooms:
                events = with_content_key(await room_messages(mod, r), DISPATCH_KEY)
                stages = [content_of(e)[DISPATCH_KEY]["stage"] for e in events]
                assert stages == ["call", "!abort"], stages
                assert content_of(events[-1])["body"] == f"ABORT in {cid.capitalize()}: go home"
        await asyncio.sleep(max(0.0, (start.timestamp() + 11) - datetime.now().timestamp()))
        for r in rooms:
            assert [s for s, _ in await dispatches(mod, r)] == ["call", "!abort"]


async def test_redirect_before_and_after_reveal(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "redir") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 1, "redir")
        stages = [
            {"id": "call", "at": "0s", "text": "Meet at {meet}", "place": "meet"},
            {"id": "go", "at": "+4s", "text": "Now to {spot}", "place": "spot"},
        ]
        env.write_scenario(scenario("redir", [("alpha", rooms)], seconds_ahead(3600), stages))
        await env.start()
        await env.opt_in(mod, rooms[0])
        env.write_scenario(
            scenario("redir", [("alpha", rooms)], seconds_ahead(ARM_LEAD_S), stages))
        await env.command("!arm redir")
        reply = await env.command("!redirect redir alpha spot Town Hall 52.51,13.41")
        assert "before it was revealed" in reply, reply
        await env.control_notices("stage call delivered")
        reply = await env.command("!redirect redir alpha meet Old Bridge 52.53,13.39")
        assert "already revealed by call" in reply, reply
        notices = await env.control_notices("stage go delivered")
        events = await room_messages(mod, rooms[0])
        bodies = [content_of(e).get("body") for e in with_content_key(events, DISPATCH_KEY)
                  if content_of(e).get("msgtype") == "m.text"]
        assert "Now to Town Hall" in bodies, bodies
        assert any("Correction" in b and "Old Bridge" in b for b in bodies), bodies
        edits = [e for e in events
                 if (content_of(e).get("m.relates_to") or {}).get("rel_type") == "m.replace"]
        assert edits and content_of(edits[0])["m.new_content"]["body"] == "Meet at Old Bridge"
        # Secret until release: the control room never saw the go stage's text.
        assert not any("Now to" in n or "Town Hall" in n for n in notices)


async def test_checkins_by_reaction_and_here_count_once(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "chk") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 1, "chk")
        stages = [
            {"id": "call", "at": "0s", "text": "React to check in"},
            {"id": "later", "at": "+10m", "text": "Later"},
        ]
        env.write_scenario(scenario("chk", [("alpha", rooms)], seconds_ahead(3600), stages))
        await env.start()
        await env.opt_in(mod, rooms[0])
        env.write_scenario(scenario("chk", [("alpha", rooms)], seconds_ahead(ARM_LEAD_S), stages))
        await env.command("!arm chk")
        await env.control_notices("stage call delivered")
        people = []
        for i in range(2):
            p = await clients.participant(await homeserver.register(f"c{i}-{tmp_path.name[-6:]}"))
            await mod.room_invite(rooms[0], p.user_id)
            await join(p, rooms[0])
            people.append(p)
        call = with_content_key(await room_messages(mod, rooms[0]), DISPATCH_KEY)[0]
        for key in ("👍", "✅"):  # two reactions from one person: one check-in
            await people[0].room_send(rooms[0], "m.reaction", {"m.relates_to": {
                "rel_type": "m.annotation", "event_id": call.event_id, "key": key}})
        here = await send_text(people[1], rooms[0], "!here")
        await send_text(people[1], rooms[0], "!here")
        await send_text(people[0], rooms[0], "!here")  # already in by reaction

        async def acked() -> bool:
            events = await room_messages(people[1], rooms[0])
            return any((content_of(e).get("m.relates_to") or {}).get("event_id") == here
                       and e.sender == env.bot_user.user_id for e in events)

        for _ in range(50):
            if await acked():
                break
            await asyncio.sleep(0.2)
        assert await acked()
        for _ in range(50):
            head = await env.command("!headcount chk")
            if "2 check-ins" in head:
                break
            await asyncio.sleep(0.2)
        assert "2 check-ins" in head, head
        db = sqlite3.connect(env.storage_dir / "blossom.db")
        rows = db.execute("SELECT user_id, stage_id, via FROM checkins").fetchall()
        assert sorted(rows) == sorted([(people[0].user_id, "call", "reaction"),
                                       (people[1].user_id, "call", "here")])
        # The bot acknowledged with reactions only: no chatter in the city room.
        texts = [e for e in await room_messages(mod, rooms[0])
                 if e.sender == env.bot_user.user_id and DISPATCH_KEY not in content_of(e)
                 and content_of(e).get("msgtype")]
        assert texts == []
        await env.command("!disarm chk")


async def test_direct_participant_join_two_stages_stop(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "dm") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 1, "dm")

        def data(start: datetime) -> dict[str, Any]:
            return scenario("dmx", [("alpha", rooms)], start, [
                {"id": "one", "at": "0s", "text": "First for {city}"},
                {"id": "two", "at": "+3s", "text": "Second"},
                {"id": "three", "at": "+8s", "text": "Third"},
            ], city_extra={"direct": True, "direct_limit": 5})

        env.write_scenario(data(seconds_ahead(3600)))
        await env.start()
        await env.opt_in(mod, rooms[0])
        person_user = await homeserver.register(f"dm-{tmp_path.name[-6:]}")
        person = await clients.participant(person_user)
        resp = await person.room_create(is_direct=True, invite=[env.bot_user.user_id])
        assert isinstance(resp, RoomCreateResponse)
        dm = resp.room_id
        await env.wait_joined(dm, by=person)
        await sync_until(person, lambda: dm in person.rooms)
        # The !join must be in before stage one's prepare: a little more lead.
        env.write_scenario(data(seconds_ahead(ARM_LEAD_S + 1)))
        await env.command("!arm dmx")
        await send_text(person, dm, "!join dmx alpha")
        await env.control_notices("stage two delivered", timeout=40)
        assert [s for s, _ in await dispatches(person, dm)] == ["one", "two"]
        await send_text(person, dm, "!stop")
        await env.control_notices("stage three delivered", timeout=40)
        assert [s for s, _ in await dispatches(person, dm)] == ["one", "two"]
        assert [s for s, _ in await dispatches(mod, rooms[0])] == ["one", "two", "three"]
        db = sqlite3.connect(env.storage_dir / "blossom.db")
        assert db.execute("SELECT COUNT(*) FROM direct_participants").fetchone() == (0,)


async def test_purge_leaves_no_trace(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "purge") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 1, "purge")
        stages = [{"id": "only", "at": "0s", "text": "Only stage"}]
        # Listed now (so the opt-in is accepted); the real instant is set just before !arm.
        env.write_scenario(scenario("purgeme", [("alpha", rooms)], seconds_ahead(3600), stages))
        await env.start()
        await env.opt_in(mod, rooms[0])
        walker = await clients.participant(await homeserver.register(f"w-{tmp_path.name[-6:]}"))
        await mod.room_invite(rooms[0], walker.user_id)
        await join(walker, rooms[0])
        env.write_scenario(
            scenario("purgeme", [("alpha", rooms)], seconds_ahead(ARM_LEAD_S), stages))
        assert "Armed purgeme" in await env.command("!arm purgeme")
        # A check-in while the run is armed (one after it has ended would count for
        # nothing, and the check below would prove nothing): the participant's id is
        # stored, and must be gone after the purge.
        await send_text(walker, rooms[0], "!here")
        for _ in range(100):
            if "1 check-ins" in await env.command("!headcount purgeme"):
                break
            await asyncio.sleep(0.1)
        assert "1 check-ins" in await env.command("!headcount purgeme")
        # Read from the room's history: the commands above may have synced past it.
        await notice_in_history(env, "purgeme (run 1) is complete")
        db = sqlite3.connect(env.storage_dir / "blossom.db")
        assert db.execute("SELECT user_id FROM checkins").fetchall() == [(walker.user_id,)]
        db.close()
        assert "confirm" in await env.command("!purge purgeme")
        assert "Purged purgeme" in await env.command("!purge purgeme confirm")
        await env.stop()
        raw = b"".join(p.read_bytes() for p in env.storage_dir.glob("blossom.db*"))
        assert b"purgeme" not in raw.replace(b"!purge purgeme", b"")
        assert walker.user_id.encode() not in raw  # the participant's id is gone


async def test_drill_runs_whole_scenario_nothing_in_real_rooms(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "drill") as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 2, "drill")
        start = seconds_ahead(3 * 86400)
        env.write_scenario(scenario("drillme", [("alpha", [rooms[0]]), ("beta", [rooms[1]])],
                                    start, [
            {"id": "call", "at": "-1h", "text": "Call {city}"},
            {"id": "meet", "at": "0m", "text": "Meet at {meet}", "place": "meet",
             "require": {"checkins": 5}},
            {"id": "go", "at": "+15m", "text": "Go to {spot}", "place": "spot"},
            {"id": "end", "at": "+30m", "text": "Disperse"},
        ]))
        await env.start()
        for r in rooms:
            await env.opt_in(mod, r)
        reply = await env.command("!drill drillme 1200")
        assert "Drill of drillme" in reply, reply
        found = re.search(r"Drill room: (!\S+)", reply)
        assert found, reply
        drill_room = found.group(1)
        await join(env.org, drill_room)
        await env.control_notices("[drill] drillme (run 1) is complete", timeout=40)
        stages = await dispatches(env.org, drill_room)
        assert [s for s, p in stages if p == "text"] == ["call"] * 2 + ["meet"] * 2 + \
            ["go"] * 2 + ["end"] * 2
        texts = [content_of(e)["body"] for e in with_content_key(
            await room_messages(env.org, drill_room), DISPATCH_KEY)
            if content_of(e)["msgtype"] == "m.text"]
        assert all(t.startswith("[DRILL]") for t in texts)
        for r in rooms:
            assert await dispatches(mod, r) == []


async def test_arm_preflight_warns_when_fanout_cannot_fit(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(
        homeserver, tmp_path, clients, "pre",
        dispatch={"expected_msgs_per_second": 0.2, "rate_burst": 0},
    ) as env:
        mod, rooms = await setup_rooms(env, clients, homeserver, 2, "pre")
        env.write_scenario(scenario("tight", [("alpha", rooms)], seconds_ahead(3600), [
            {"id": "a", "at": "0s", "text": "A"},
            {"id": "b", "at": "+3s", "text": "B"},
        ]))
        await env.start()
        for r in rooms:
            await env.opt_in(mod, r)
        reply = await env.command("!arm tight")
        assert "Pre-flight" in reply and "2 messages take about 10s" in reply, reply
        await env.command("!disarm tight")
