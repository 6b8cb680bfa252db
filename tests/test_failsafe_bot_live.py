"""The dead-man's switch in the running bot (issue 13), on a real Synapse with
``max_event_delay_duration`` set (tests/conftest.py, ``delayed_homeserver``):

- the only bot SIGKILLed before the instant and kept down: every room gets
  every stage from the homeserver at instant + after, once, with the text, the
  pin and the tag; a participant in an encrypted room decrypts it; the bot
  back after that sends nothing again;
- the bot alive: each room gets the stage at the instant and nothing at
  instant + after; the server's list of delayed events is emptied as each
  stage goes out;
- ``!hold`` and ``!abort`` before the instant, then the bot killed: the server
  sends nothing (the stop message is the bot's own);
- a homeserver without the feature: ``!arm`` refuses, nothing is scheduled or
  sent;
- over the per-user cap: ``!arm`` counts what it needs and refuses;
- the admin rate-limit override lifts Synapse's limit on cancelling them;
- in a crew, each member schedules only the rooms it is on duty for.

The bot runs as ``python -m bot run`` (tests/bot_harness.py). ``after`` is the
scenario's minimum, 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from bot_harness import BotEnv, bot_env, iso_z
from conftest import DELAYED_CAP, FreshHomeserver
from crew_harness import crew_env
from figures import pytest_command, record
from matrix_helpers import ClientPool, content_of, join, room_messages, sync_until
from nio import AsyncClient

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.failsafe.plan import PART_STAGGER
from bot.ids import ABORT_STAGE
from bot.matrix.delayed import DELAYED_EVENTS_PATH, DelayedEvents, DelayedRequestFailed

pytestmark = pytest.mark.homeserver

AFTER_S = 10.0
# The server fires within about a second of the due time (its own timer), and
# each later part in a room is due a second after the one before.
FIRE_WITHIN_S = 4.0


@pytest_asyncio.fixture
async def pool(delayed_homeserver: EmbeddedHomeserver, tmp_path: Path) -> AsyncIterator[ClientPool]:
    async with ClientPool(delayed_homeserver, tmp_path / "stores") as clients:
        yield clients


def scenario(sid: str, start: datetime, cities: dict[str, str], stages: list[dict[str, Any]],
             *, failsafe: bool = True) -> dict[str, Any]:
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(start),
        "failsafe": {"server": failsafe, "after": f"{AFTER_S:g}s"},
        "cities": [
            {
                "id": cid,
                "name": cid.title(),
                "timezone": "Europe/Berlin",
                "rooms": [room],
                "places": {"sq": {"name": f"Square of {cid}", "geo": "52.52,13.405"}},
            }
            for cid, room in cities.items()
        ],
        "stages": stages,
    }


def db_rows(env: BotEnv, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(env.storage_dir / "blossom.db")) as db:
        return db.execute(sql, params).fetchall()


async def until_scheduled(env: BotEnv, n: int, timeout: float = 20) -> None:
    """Until the bot's table holds ``n`` delayed events the server has taken."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(sqlite3.OperationalError):  # the table mid-write
            rows = db_rows(env, "SELECT state FROM delayed_events")
            if sum(state == "scheduled" for (state,) in rows) == n:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {n} delayed events scheduled: {rows}")
        await asyncio.sleep(0.2)


async def settled(env: BotEnv, n: int, timeout: float = 30) -> None:
    """Until the bot's ledger holds ``n`` deliveries, none pending or sending."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(sqlite3.OperationalError):
            rows = db_rows(env, "SELECT state FROM deliveries")
            if len(rows) == n and all(s not in ("pending", "sending") for (s,) in rows):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"deliveries not settled: {rows}")
        await asyncio.sleep(0.3)


async def dispatches(client: AsyncClient, room: str) -> list[tuple[str, str, Any]]:
    """(stage, part, event) of every dispatch in the room, oldest first."""
    await sync_until(client, lambda: True)
    out = []
    for e in await room_messages(client, room):
        tag = content_of(e).get(DISPATCH_KEY)
        if isinstance(tag, dict):
            out.append((str(tag["stage"]), str(tag["part"]), e))
    return out


async def server_list(bot_view: AsyncClient) -> list[str]:
    """Room ids of the bot account's delayed events on the server (every device)."""
    return [e.room_id for e in await DelayedEvents(bot_view).scheduled()]


async def rooms_with_participant(
    env: BotEnv, pool: ClientPool, hs: EmbeddedHomeserver, names: dict[str, bool]
) -> tuple[AsyncClient, dict[str, str]]:
    """One room per name (encrypted or not), opted in by the organiser, with the
    participant alice joined and known to the bot before anything is armed."""
    alice = await pool.participant(await hs.register(f"alice-{env.dir.name[-8:]}"))
    rooms = {}
    for name, encrypted in names.items():
        room = await env.city_room(env.org, name=name, encrypted=encrypted,
                                   members=[alice.user_id])
        await join(alice, room)
        await env.opt_in(env.org, room)
        rooms[name] = room
    return alice, rooms


async def test_the_server_sends_every_stage_when_the_only_bot_is_killed_once(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    hs = delayed_homeserver
    async with bot_env(hs, tmp_path, pool, "fskill") as env:
        env.spawn()
        await env.wait_joined(env.control_room, timeout=30)
        alice, rooms = await rooms_with_participant(
            env, pool, hs, {"north": False, "south": True}
        )
        t0 = datetime.now(UTC) + timedelta(seconds=12)
        env.write_scenario(scenario("fsk", t0, rooms, [
            {"id": "go", "at": "0s", "text": "Go to {sq} in {city}", "place": "sq"},
            {"id": "two", "at": "+3s", "text": "Two in {city}"},
        ]))
        reply = await env.command("!arm fsk", timeout=30)
        assert "Armed fsk" in reply, reply
        # Per room: go's text and pin, two's text; counted before arming.
        assert "failsafe: needs 6 delayed events (6 at once)" in reply, reply
        assert "failsafe: 6 delayed events scheduled on the homeserver" in reply, reply
        await until_scheduled(env, 6)
        assert datetime.now(UTC) < t0 - timedelta(seconds=1), "too slow to kill before the instant"
        env.kill()
        # Nothing early: the bot is gone and the server holds everything until t0 + after.
        await asyncio.sleep(max(0.0, (t0 - datetime.now(UTC)).total_seconds() + 1))
        for room in rooms.values():
            assert await dispatches(alice, room) == []
        deadline = time.monotonic() + (t0 - datetime.now(UTC)).total_seconds() + AFTER_S + 3 + 15
        want = [("go", "text"), ("go", "location"), ("two", "text")]
        lateness: list[float] = []
        for city, room in rooms.items():
            while True:
                got = await dispatches(alice, room)
                if len(got) >= 3 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            assert [(s, p) for s, p, _ in got] == want, (city, got)
            for stage, part, event in got:
                instant = t0 + timedelta(seconds=3 if stage == "two" else 0)
                # A later part in a room at one instant is due a second later (the
                # server fires by due time only; bot.failsafe.plan.PART_STAGGER).
                stagger = PART_STAGGER if part == "location" else timedelta(0)
                due = instant + timedelta(seconds=AFTER_S) + stagger
                sent = datetime.fromtimestamp(event.server_timestamp / 1000, UTC)
                assert sent >= due - timedelta(milliseconds=5), (city, stage, part)
                assert sent <= due + timedelta(seconds=FIRE_WITHIN_S), (city, stage, part)
                lateness.append((sent - due).total_seconds())
                assert event.sender == env.bot_user.user_id
                content = content_of(event)
                tag = content[DISPATCH_KEY]
                assert (tag["city"], tag["stage"], tag["part"]) == (city, stage, part)
                assert tag["run"] == db_rows(env, "SELECT run_key FROM runs")[0][0]
                if part == "location":
                    assert content["msgtype"] == "m.location"
                    assert content["geo_uri"].startswith("geo:52.52,13.405")
                elif stage == "go":
                    assert content["body"] == f"Go to Square of {city} in {city.title()}"
                else:
                    assert content["body"] == f"Two in {city.title()}"
                if city == "south":  # encrypted: alice decrypted what the server sent
                    assert event.source.get("type") == "m.room.message"
                    assert getattr(event, "decrypted", False), event
        # Once: nothing more arrives, and the server's list is empty.
        await asyncio.sleep(1.5)
        for room in rooms.values():
            assert len(await dispatches(alice, room)) == 3
        bot_view = await pool.participant(env.bot_user)
        assert await server_list(bot_view) == []
        # The bot back after the server sent (late policy: send anyway): it cancels
        # first, finds each event gone, and sends nothing again.
        env.spawn()
        await settled(env, 6)
        for room in rooms.values():
            assert len(await dispatches(alice, room)) == 3
        assert {r for (r,) in db_rows(env, "SELECT last_error FROM deliveries")} == {
            "delivered by the homeserver (failsafe)"
        }
        record(
            "failsafe/only-bot-killed",
            section="Dead-man's switch",
            what=(
                "The only bot SIGKILLed before the instant and kept down (failsafe after "
                f"{AFTER_S:g} s): the homeserver sends every stage to every room at "
                "instant + after, once, one room encrypted and decrypted by a participant"
            ),
            tried=1,
            unit="kills",
            command=pytest_command(
                "tests/test_failsafe_bot_live.py::"
                "test_the_server_sends_every_stage_when_the_only_bot_is_killed_once"
            ),
            by_kind={"bot SIGKILLed": 1},
            measured={
                "deliveries released by the server": len(lateness),
                "worst lateness against instant + after (s)": round(max(lateness), 2),
                "early releases": 0,
                "duplicates": 0,
            },
        )


async def test_the_bot_alive_sends_at_the_instant_and_the_server_sends_nothing(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    hs = delayed_homeserver
    async with bot_env(hs, tmp_path, pool, "fsalive") as env:
        env.spawn()
        await env.wait_joined(env.control_room, timeout=30)
        alice, rooms = await rooms_with_participant(env, pool, hs, {"north": False, "south": True})
        bot_view = await pool.participant(env.bot_user)
        t0 = datetime.now(UTC) + timedelta(seconds=10)
        env.write_scenario(scenario("fsa", t0, rooms, [
            {"id": "one", "at": "0s", "text": "One in {city}"},
            {"id": "two", "at": "+5s", "text": "Two in {city}"},
        ]))
        reply = await env.command("!arm fsa", timeout=30)
        assert "failsafe: 4 delayed events scheduled" in reply, reply
        assert sorted(await server_list(bot_view)) == sorted([*rooms.values()] * 2)
        status = await env.command("!status fsa")
        assert "Failsafe, delayed events on this bot's homeserver: fsa: 4" in status, status
        assert "north/one 1" in status and "south/two 1" in status, status
        for n, stage in enumerate(("one", "two")):
            instant = t0 + timedelta(seconds=5 * n)
            for room in rooms.values():
                deadline = time.monotonic() + 20
                while not any(s == stage for s, _, _ in await dispatches(alice, room)):
                    assert time.monotonic() < deadline, f"{stage} did not arrive"
                    await asyncio.sleep(0.2)
                (event,) = [e for s, _, e in await dispatches(alice, room) if s == stage]
                sent = datetime.fromtimestamp(event.server_timestamp / 1000, UTC)
                assert sent < instant + timedelta(seconds=3), (stage, sent, instant)
            # Every delayed event of the stage is cancelled once it is in the rooms.
            deadline = time.monotonic() + 5
            left = len(rooms) * (1 - n)
            while len(await server_list(bot_view)) != left:
                assert time.monotonic() < deadline, await server_list(bot_view)
                await asyncio.sleep(0.2)
        # Past instant + after for both stages: still one copy of each, nothing from the server.
        wait = (t0 + timedelta(seconds=5 + AFTER_S + 2) - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(0.0, wait))
        for room in rooms.values():
            assert [s for s, _, _ in await dispatches(alice, room)] == ["one", "two"]
        assert await server_list(bot_view) == []
        states = {s for (s,) in db_rows(env, "SELECT state FROM delayed_events")}
        assert states == {"cancelled"}
        assert db_rows(env, "SELECT COUNT(*) FROM delayed_events WHERE delay_id IS NOT NULL") == [
            (0,)
        ]
        # No delay id in the bot's log or replies (the ids are gone; the log had them never).
        assert "syd_" not in env.log_path.read_text(errors="replace")
        assert "syd_" not in reply + status


async def test_hold_and_abort_before_the_instant_then_the_bot_killed_nothing_from_the_server(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    hs = delayed_homeserver
    async with bot_env(hs, tmp_path, pool, "fssteer") as env:
        env.spawn()
        await env.wait_joined(env.control_room, timeout=30)
        alice, rooms = await rooms_with_participant(
            env, pool, hs, {"north": False, "south": False}
        )
        bot_view = await pool.participant(env.bot_user)
        t0 = datetime.now(UTC) + timedelta(seconds=10)
        env.write_scenario(scenario("fss", t0, rooms, [
            {"id": "go", "at": "0s", "text": "Go in {city}"},
        ]))
        assert "failsafe: 2 delayed events scheduled" in await env.command("!arm fss", timeout=30)
        assert len(await server_list(bot_view)) == 2
        assert "Holding fss in north" in await env.command("!hold fss north")
        # Cancelled before the reply: the held city's event is gone from the server.
        assert await server_list(bot_view) == [rooms["south"]]
        assert "Aborting fss in south" in await env.command("!abort fss south")
        assert await server_list(bot_view) == []
        # The stop message reaches south (the bot's own), then the bot is killed.
        deadline = time.monotonic() + 15
        while not await dispatches(alice, rooms["south"]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        env.kill()
        await asyncio.sleep(max(0.0, (t0 - datetime.now(UTC)).total_seconds() + AFTER_S + 3))
        assert await dispatches(alice, rooms["north"]) == []
        assert [s for s, _, _ in await dispatches(alice, rooms["south"])] == [ABORT_STAGE]
        assert await server_list(bot_view) == []
        record(
            "failsafe/hold-abort-then-killed",
            section="Dead-man's switch",
            what=(
                "!hold of one city and !abort of the other before the instant, then the "
                "only bot SIGKILLed and kept down: the homeserver sends nothing (the "
                "delayed events were cancelled before each command's reply)"
            ),
            tried=1,
            unit="kills",
            command=pytest_command(
                "tests/test_failsafe_bot_live.py::"
                "test_hold_and_abort_before_the_instant_then_the_bot_killed_nothing_from_the_server"
            ),
            by_kind={"bot SIGKILLed": 1},
            measured={"stages released by the server": 0, "early releases": 0},
        )


async def test_a_homeserver_without_the_feature_refuses_at_arm(
    homeserver: EmbeddedHomeserver, tmp_path: Path
) -> None:
    async with ClientPool(homeserver, tmp_path / "stores") as plain, bot_env(
        homeserver, tmp_path, plain, "fsoff"
    ) as env:
        await env.start()
        alice, rooms = await rooms_with_participant(env, plain, homeserver, {"north": False})
        t0 = datetime.now(UTC) + timedelta(seconds=4)
        env.write_scenario(scenario("fso", t0, rooms, [
            {"id": "go", "at": "0s", "text": "Go in {city}"},
        ]))
        reply = await env.command("!arm fso")
        assert "failsafe refused: the homeserver does not advertise delayed events" in reply
        assert "Nothing was armed" in reply, reply
        assert "Nothing is armed" in await env.command("!status")
        db = env.storage_dir / "blossom.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
            assert conn.execute("SELECT COUNT(*) FROM delayed_events").fetchone() == (0,)
        await asyncio.sleep(max(0.0, (t0 - datetime.now(UTC)).total_seconds() + 1))
        assert await dispatches(alice, rooms["north"]) == []


async def test_arm_counts_what_it_needs_and_refuses_over_the_cap(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    hs = delayed_homeserver
    async with bot_env(hs, tmp_path, pool, "fscap") as env:
        await env.start()
        _alice, rooms = await rooms_with_participant(
            env, pool, hs, {"north": False, "south": False}
        )
        t0 = datetime.now(UTC) + timedelta(minutes=10)
        stages = [{"id": f"s{n}", "at": f"+{n}m", "text": "Go"} for n in range(5)]
        env.write_scenario(scenario("fsc", t0, rooms, stages))
        reply = await env.command("!arm fsc")
        need = 2 * 5
        assert (
            f"failsafe: needs {need} delayed events ({need} at once); this server allows "
            f"{DELAYED_CAP} per user"
        ) in reply, reply
        assert f"{need} delayed events at once is over the cap of {DELAYED_CAP}" in reply, reply
        assert "Nothing was armed" in reply, reply
        bot_view = await pool.participant(env.bot_user)
        assert await server_list(bot_view) == []


async def raw_list(bot_view: AsyncClient) -> list[dict[str, Any]]:
    """The server's list as it stands (content included: these rooms are plain)."""
    await sync_until(bot_view, lambda: True)
    url = f"{bot_view.homeserver}{DELAYED_EVENTS_PATH}"
    headers = {"Authorization": f"Bearer {bot_view.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    return list(body["delayed_events"])


def due_s(entry: dict[str, Any]) -> float:
    return (entry["delayed_since_ts"] + entry["delay_ms"]) / 1000


async def test_delay_redirect_resume_and_disarm_replace_or_cancel_first(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    hs = delayed_homeserver
    async with bot_env(hs, tmp_path, pool, "fsmove") as env:
        await env.start()
        _alice, rooms = await rooms_with_participant(
            env, pool, hs, {"north": False, "south": False}
        )
        bot_view = await pool.participant(env.bot_user)
        t0 = datetime.now(UTC) + timedelta(minutes=5)
        env.write_scenario(scenario("fsm", t0, rooms, [
            {"id": "go", "at": "0s", "text": "Go to {sq}"},
        ]))
        assert "failsafe: 2 delayed events scheduled" in await env.command("!arm fsm")
        due = t0.timestamp() + AFTER_S
        assert [round(due_s(e) - due) for e in await raw_list(bot_view)] == [0, 0]
        # !delay: the old ones cancelled, new ones due 2 min later.
        assert "Delayed fsm by 2m00s in north" in await env.command("!delay fsm +2m north")
        listed = {e["room_id"]: e for e in await raw_list(bot_view)}
        assert sorted(listed) == sorted(rooms.values())
        assert round(due_s(listed[rooms["north"]]) - due) == 120
        assert round(due_s(listed[rooms["south"]]) - due) == 0
        # !redirect: north's event now carries the new place, due as before.
        reply = await env.command("!redirect fsm north sq Harbour Gate 52.0,13.0")
        assert "Redirected sq in north" in reply, reply
        listed = {e["room_id"]: e for e in await raw_list(bot_view)}
        north = listed[rooms["north"]]
        assert north["content"]["body"] == "Go to Harbour Gate"
        assert round(due_s(north) - due) == 120
        assert listed[rooms["south"]]["content"]["body"] == "Go to Square of south"
        # !hold cancels, !resume schedules them again.
        await env.command("!hold fsm south")
        assert [e["room_id"] for e in await raw_list(bot_view)] == [rooms["north"]]
        assert "Resumed fsm in south" in await env.command("!resume fsm south")
        assert sorted(e["room_id"] for e in await raw_list(bot_view)) == sorted(rooms.values())
        # !disarm cancels everything; !purge deletes the rows.
        assert "Disarmed fsm" in await env.command("!disarm fsm")
        assert await raw_list(bot_view) == []
        assert "confirm" in await env.command("!purge fsm")
        assert "Purged fsm" in await env.command("!purge fsm confirm")
        assert db_rows(env, "SELECT COUNT(*) FROM delayed_events") == [(0,)]


async def test_the_rate_limit_override_covers_cancelling_delayed_events(
    fresh_homeserver: FreshHomeserver, tmp_path: Path
) -> None:
    """Synapse's default rc_delayed_event_mgmt (1 a second, a burst of 5) throttles
    a bot cancelling a stage's delayed events room after room; the admin
    override docs/operators.md asks for (messages_per_second 0) lifts it too."""
    hs = await fresh_homeserver(
        rate_limits="default", enable_delayed_events=True, max_event_delay="1h"
    )
    n = 6  # one over the burst
    async with ClientPool(hs, tmp_path / "stores") as clients:
        refused = {}
        for exempt in (False, True):
            user = await hs.register(f"bot-{'exempt' if exempt else 'plain'}")
            if exempt:
                await hs.exempt_from_rate_limits(user.user_id)
            client = await clients.participant(user)
            resp = await client.room_create(name="r")
            room = resp.room_id  # type: ignore[union-attr]
            delayed = DelayedEvents(client)
            ids = [
                await delayed.schedule(room, "m.room.message", {"body": "x", "msgtype": "m.text"},
                                       txn_id=f"t{i}", delay_ms=600_000)
                for i in range(n)
            ]
            refused[exempt] = 0
            for delay_id in ids:
                try:
                    assert await delayed.cancel(delay_id)
                except DelayedRequestFailed as err:
                    assert err.failure.http_status == 429
                    refused[exempt] += 1
        assert refused[False] >= 1  # the default limit bites without the override
        assert refused[True] == 0


async def test_a_crew_member_schedules_only_the_rooms_it_is_on_duty_for(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    """Two members on one homeserver, each first for its own city: each holds
    delayed events only for its own city's room, cancels them once it has sent,
    and neither room gets a copy from the server."""
    hs = delayed_homeserver
    async with crew_env([hs, hs], tmp_path, pool, "fscrew") as crew:
        await crew.start()
        a, b = crew.bots
        alice = await pool.participant(await hs.register(f"alice-fscrew-{tmp_path.name[-6:]}"))
        rooms = {}
        for city in ("north", "south"):
            room = await a.city_room(crew.org, name=city, members=[alice.user_id])
            await join(alice, room)
            for bot in (a, b):
                await bot.opt_in(crew.org, room)
            rooms[city] = room
        t0 = datetime.now(UTC) + timedelta(seconds=12)
        data = scenario("fcw", t0, rooms, [{"id": "go", "at": "0s", "text": "Go in {city}"}])
        data["failover"] = {"grace": "2s"}
        data["cities"][0]["crew"] = crew.ids
        data["cities"][1]["crew"] = crew.ids[::-1]
        for bot in (a, b):
            bot.write_scenario(data)
        replies = await crew.replies("!arm fcw", wait=30, until=1)
        assert replies and "Armed fcw" in replies[0][1], replies
        views = {bot.bot_user.user_id: await pool.participant(bot.bot_user) for bot in (a, b)}
        for bot, city in ((a, "north"), (b, "south")):
            await until_scheduled(bot, 1)
            assert db_rows(bot, "SELECT room_id FROM delayed_events") == [(rooms[city],)]
            assert await server_list(views[bot.bot_user.user_id]) == [rooms[city]]
        # !crew (from the speaker, a) counts its own, never ids.
        listing = await crew.replies("!crew", wait=10, until=1)
        assert listing and listing[0][0] == a.bot_user.user_id, listing
        assert "Failsafe, delayed events on this bot's homeserver: fcw: 1 (north/go 1)" in (
            listing[0][1]
        ), listing
        assert "syd_" not in listing[0][1]
        # Still there just before the instant (nothing cancelled them early).
        await asyncio.sleep(max(0.0, (t0 - datetime.now(UTC)).total_seconds() - 1.5))
        for bot, city in ((a, "north"), (b, "south")):
            assert await server_list(views[bot.bot_user.user_id]) == [rooms[city]]
        for room in rooms.values():
            deadline = time.monotonic() + 20
            while not await dispatches(alice, room):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, (t0 - datetime.now(UTC)).total_seconds() + AFTER_S + 2))
        for bot, city in ((a, "north"), (b, "south")):
            assert await server_list(views[bot.bot_user.user_id]) == []
            (event,) = [e for _, _, e in await dispatches(alice, rooms[city])]
            assert event.sender == bot.bot_user.user_id


async def test_a_second_copy_from_the_bot_itself_is_redacted_and_told(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    """Synapse may send a delayed event twice after its own crash, and the
    homeserver's copy may race the bot's late send: the room then holds two
    copies from the bot's own account. Played here by sending the copy again
    with the bot's token; the bot alone (no crew) redacts the later one and
    tells the control room (ids and counts only)."""
    hs = delayed_homeserver
    async with bot_env(hs, tmp_path, pool, "fsdouble") as env:
        env.spawn()
        await env.wait_joined(env.control_room, timeout=30)
        alice, rooms = await rooms_with_participant(env, pool, hs, {"north": False})
        room = rooms["north"]
        bot_view = await pool.participant(env.bot_user)
        t0 = datetime.now(UTC) + timedelta(seconds=8)
        env.write_scenario(scenario("fsd", t0, rooms, [
            {"id": "one", "at": "0s", "text": "One in {city}"},
        ]))
        reply = await env.command("!arm fsd", timeout=30)
        assert "failsafe: 1 delayed events scheduled" in reply, reply
        deadline = time.monotonic() + 20
        while not await dispatches(alice, room):
            assert time.monotonic() < deadline, "one did not arrive"
            await asyncio.sleep(0.2)
        ((_, _, first),) = await dispatches(alice, room)
        await sync_until(bot_view, lambda: room in bot_view.rooms)
        resp = await bot_view.room_send(room, "m.room.message", content_of(first))
        second = resp.event_id  # type: ignore[union-attr]
        notices = await env.control_notices("Duplicate in", timeout=20)
        told = next(n for n in notices if "Duplicate in" in n)
        assert second in told and first.event_id in told and "1 later" in told, told
        assert "One in" not in told  # ids and counts, never the text
        deadline = time.monotonic() + 10
        while [e.event_id for _, _, e in await dispatches(alice, room)] != [first.event_id]:
            assert time.monotonic() < deadline, await dispatches(alice, room)
            await asyncio.sleep(0.2)
