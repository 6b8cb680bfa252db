"""The dispatch bot under faults, on a real Synapse (issue 3's test list).

SIGKILL mid fan-out, the homeserver away across an instant, strict rate limits,
an encrypted room, refusals (commands, invites, power), the late policy for
instants missed while the bot was down, and commands given while it was down.
Every count of what a room holds is by events carrying ``org.blossom.dispatch``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from matrix_helpers import (
    ClientPool,
    collect_messages,
    content_of,
    create_room,
    join,
    room_messages,
    send_text,
    sync_until,
    with_content_key,
)
from nio import AsyncClient, RoomCreateResponse, RoomMemberEvent, RoomMessageText

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver


# -- helpers ---------------------------------------------------------------------------


def scenario(
    sid: str,
    rooms: Sequence[str],
    start: datetime,
    stages: list[dict[str, Any]],
    *,
    place: bool = False,
) -> dict[str, Any]:
    city: dict[str, Any] = {
        "id": "town",
        "name": "Town",
        "timezone": "Europe/Berlin",
        "rooms": list(rooms),
    }
    if place:
        city["places"] = {"spot": {"name": "the old fountain", "geo": "52.52,13.40"}}
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(start),
        "cities": [city],
        "stages": stages,
    }


def query(env: BotEnv, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read the bot's database read-only (it may be running, or killed)."""
    db = sqlite3.connect(f"file:{env.storage_dir / 'blossom.db'}?mode=ro", uri=True, timeout=5)
    try:
        return list(db.execute(sql, params))
    finally:
        db.close()


def ledger_counts(env: BotEnv) -> Counter[str]:
    return Counter(dict(query(env, "SELECT state, COUNT(*) FROM deliveries GROUP BY state")))


async def dispatch_tags(client: AsyncClient, room_id: str) -> list[tuple[str, str]]:
    """(stage, part) of every event in the room carrying the dispatch key, in order."""
    events = with_content_key(await room_messages(client, room_id), DISPATCH_KEY)
    return [
        (content_of(e)[DISPATCH_KEY]["stage"], content_of(e)[DISPATCH_KEY]["part"]) for e in events
    ]


async def bot_membership(client: AsyncClient, room_id: str, bot_id: str) -> list[str]:
    """The bot's membership changes in a room, oldest first (as ``client`` sees them)."""
    return [
        e.membership
        for e in await room_messages(client, room_id)
        if isinstance(e, RoomMemberEvent) and e.state_key == bot_id
    ]


async def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(interval)


async def sleep_until(instant: datetime) -> None:
    delay = (instant - seconds_ahead(0)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


# -- 5. refusals -------------------------------------------------------------------------


async def test_non_core_command_is_refused_and_nothing_is_armed(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "refuse") as env:
        room = await create_room(env.org, name="city")
        env.write_scenario(
            scenario("refused", [room], seconds_ahead(600), [{"id": "go", "at": "0s", "text": "x"}])
        )
        await env.start()
        stranger = await clients.participant(await homeserver.register(f"s-{tmp_path.name[-8:]}"))
        await env.org.room_invite(env.control_room, stranger.user_id)
        await join(stranger, env.control_room)

        await sync_until(stranger, lambda: True)
        event_id = await send_text(stranger, env.control_room, "!arm refused")
        msgs = await collect_messages(
            stranger,
            env.control_room,
            until=lambda ms: any(
                (content_of(m).get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id")
                == event_id
                for m in ms
            ),
            timeout=20,
        )
        reply = next(
            m
            for m in msgs
            if (content_of(m).get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id")
            == event_id
        )
        assert reply.sender == env.bot_user.user_id
        assert "core group" in content_of(reply)["body"]
        assert query(env, "SELECT COUNT(*) FROM runs") == [(0,)]
        audit = query(env, "SELECT sender, command, result FROM audit")
        assert (stranger.user_id, "!arm", "refused: not core group") in audit, audit


async def test_invite_from_a_stranger_to_an_unlisted_room_is_declined(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "stranger") as env:
        await env.start()
        stranger = await clients.participant(await homeserver.register(f"x-{tmp_path.name[-8:]}"))
        room = await create_room(stranger, name="unlisted", invite=[env.bot_user.user_id])
        await wait_for(
            lambda: (
                query(env, "SELECT membership FROM rooms WHERE room_id = ?", (room,))
                == [("declined",)]
            ),
            20,
            "the invite was not handled",
        )
        changes = await bot_membership(stranger, room, env.bot_user.user_id)
        assert changes == ["invite", "leave"], changes  # rejected; never joined


async def test_listed_room_invited_by_a_member_without_power_is_not_joined(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """A creates the room and lets B (power 10) invite (invite level 0). The room is
    listed by a scenario, but B's invite does not opt the room in: the bot may look at
    the power levels, then leaves, and tells the control room why."""
    async with bot_env(homeserver, tmp_path, clients, "weak") as env:
        tag = tmp_path.name[-8:]
        a = await clients.participant(await homeserver.register(f"a-{tag}"))
        b = await clients.participant(await homeserver.register(f"b-{tag}"))
        resp = await a.room_create(
            name="weak invite",
            invite=[b.user_id],
            power_level_override={"users": {b.user_id: 10}, "invite": 0},
        )
        assert isinstance(resp, RoomCreateResponse), resp
        room = resp.room_id
        await join(b, room)
        env.write_scenario(
            scenario("weak", [room], seconds_ahead(600), [{"id": "go", "at": "0s", "text": "x"}])
        )
        await env.start()
        await b.room_invite(room, env.bot_user.user_id)
        notices = await env.control_notices(f"Did not opt in room {room}", timeout=30)
        why = next(n for n in notices if room in n)
        assert b.user_id in why and "power 10" in why, why
        changes = await bot_membership(a, room, env.bot_user.user_id)
        assert changes and changes[-1] != "join", changes
        assert changes[0] == "invite", changes
        assert query(env, "SELECT membership FROM rooms WHERE room_id = ?", (room,)) == [
            ("declined",)
        ]


# -- 6. instants missed while the bot was down: the late policy ---------------------------


async def test_missed_instants_follow_the_late_policy(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """Both instants pass while the bot is stopped. On restart the stage with
    ``skip_after: 2s`` is skipped and reported; the one with the default ``send``
    goes out late, once, and the control room hears it was late."""
    async with bot_env(homeserver, tmp_path, clients, "late") as env:
        room = await create_room(env.org, name="late city")
        start = seconds_ahead(6)
        env.write_scenario(
            scenario(
                "late",
                [room],
                start,
                [
                    {"id": "brief", "at": "0s", "text": "brief", "late": {"skip_after": "2s"}},
                    {"id": "go", "at": "+1s", "text": "go now"},
                ],
            )
        )
        await env.start()
        await env.opt_in(env.org, room)
        assert "Armed late" in await env.command("!arm late")
        await env.stop()
        await sleep_until(start + timedelta(seconds=7))  # go is 6 s late: reported
        await env.start()
        notices = await env.control_notices(["skipped", "stage go delivered"], timeout=30)
        skipped = next(n for n in notices if "skipped" in n)
        assert "brief" in skipped and "skip_after" in skipped, skipped
        delivered = next(n for n in notices if "stage go delivered" in n)
        assert "delivered to 1 of 1" in delivered and "Released late" in delivered, delivered
        assert await dispatch_tags(env.org, room) == [("go", "text")]
        states = dict(query(env, "SELECT stage_id, state FROM dispatches"))
        assert states == {"brief": "skipped", "go": "released"}


# -- 7. commands given while the bot was down; old commands on a first sync ---------------


async def test_command_sent_while_down_is_acted_on_after_restart(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "down") as env:
        room = await create_room(env.org, name="down city")
        start = seconds_ahead(9)
        env.write_scenario(
            scenario("down", [room], start, [{"id": "go", "at": "0s", "text": "never"}])
        )
        await env.start()
        await env.opt_in(env.org, room)
        assert "Armed down" in await env.command("!arm down")
        await env.stop()
        await sync_until(env.org, lambda: True)
        disarm = await send_text(env.org, env.control_room, "!disarm down")
        await env.start()
        msgs = await collect_messages(
            env.org,
            env.control_room,
            until=lambda ms: any(
                (content_of(m).get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id")
                == disarm
                for m in ms
            ),
            timeout=20,
        )
        assert any("Disarmed down" in str(content_of(m).get("body")) for m in msgs)
        assert query(env, "SELECT state FROM runs") == [("disarmed",)]
        await sleep_until(start + timedelta(seconds=2))
        assert await dispatch_tags(env.org, room) == []


async def answered_help(env: BotEnv, timeout: float = 30) -> None:
    """Send !help until the bot answers: a new bot ignores what came before its first
    sync, and nothing tells the test when that sync is done."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert "Commands" in await env.command("!help", timeout=3)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


async def test_old_commands_are_not_taken_by_a_new_bot(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """Commands already in the control room when a bot first starts are history, not
    orders: neither when the account was invited and has yet to join, nor when it
    is already joined but the bot's storage is new."""
    async with bot_env(homeserver, tmp_path, clients, "first") as env:
        room = await create_room(env.org, name="first city")
        env.write_scenario(
            scenario("old", [room], seconds_ahead(600), [{"id": "go", "at": "0s", "text": "x"}])
        )
        # The bot is invited (bot_env did that) but has never run.
        await sync_until(env.org, lambda: True)
        old_arm = await send_text(env.org, env.control_room, "!arm old")
        await env.start()
        # The inbox works in order: by the time !help is answered, an old !arm would
        # have been answered too.
        assert "Commands" in await env.command("!help")
        assert query(env, "SELECT COUNT(*) FROM runs") == [(0,)]
        assert query(env, "SELECT COUNT(*) FROM audit WHERE command LIKE '!arm%'") == [(0,)]

        # Joined already, storage wiped: the first sync holds the old command.
        await env.stop()
        old_arm_2 = await send_text(env.org, env.control_room, "!arm old")
        for path in sorted(env.storage_dir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        await env.start()  # returns at once: the account is still joined
        await answered_help(env)
        assert query(env, "SELECT COUNT(*) FROM runs") == [(0,)]
        replies = [
            m
            for m in await room_messages(env.org, env.control_room)
            if isinstance(m, RoomMessageText)
            and (content_of(m).get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id")
            in (old_arm, old_arm_2)
        ]
        assert replies == []


# -- 2. the homeserver away across a stage's instant -------------------------------------


async def test_homeserver_down_across_the_instant(fresh_homeserver: Any, tmp_path: Path) -> None:
    """Synapse is stopped before the instant and started 7 s after it: the stage
    arrives once it is back, exactly once, and the control room hears it was late."""
    hs: EmbeddedHomeserver = await fresh_homeserver()
    async with (
        ClientPool(hs, tmp_path / "stores") as pool,
        bot_env(hs, tmp_path / "env", pool, "hsdown") as env,
    ):
        rooms = [await create_room(env.org, name=f"hs city {i}") for i in range(2)]
        stages = [{"id": "go", "at": "0s", "text": "go", "place": "spot"}]
        env.write_scenario(scenario("hsdown", rooms, seconds_ahead(3600), stages, place=True))
        await env.start()
        for room in rooms:
            await env.opt_in(env.org, room)
        # The real instant: armed at once, the homeserver stopped 2 s before it.
        start = seconds_ahead(5)
        env.write_scenario(scenario("hsdown", rooms, start, stages, place=True))
        assert "Armed hsdown" in await env.command("!arm hsdown")
        await sleep_until(start - timedelta(seconds=2))
        await hs.stop()
        await sleep_until(start + timedelta(seconds=7))
        await hs.start()
        notices = await env.control_notices("stage go delivered", timeout=45)
        report = next(n for n in notices if "stage go delivered" in n)
        assert "delivered to 2 of 2" in report, report
        assert "Released late" in report, report
        for room in rooms:
            assert await dispatch_tags(env.org, room) == [("go", "text"), ("go", "location")]
        first_sent = query(env, "SELECT MIN(sent_at) FROM deliveries")[0][0]
        assert datetime.fromisoformat(first_sent) >= start + timedelta(seconds=7)


# -- 3. strict rate limits, the bot not exempted -----------------------------------------


async def test_strict_rate_limits_every_room_every_stage_in_order(
    fresh_homeserver: Any, tmp_path: Path
) -> None:
    hs: EmbeddedHomeserver = await fresh_homeserver(rate_limits="strict")
    async with (
        ClientPool(hs, tmp_path / "stores") as pool,
        bot_env(hs, tmp_path / "env", pool, "strict", exempt=False) as env,
    ):
        rooms = [await create_room(env.org, name=f"strict city {i}") for i in range(3)]
        await env.start()
        for room in rooms:
            await env.opt_in(env.org, room)
        start = seconds_ahead(5)
        env.write_scenario(
            scenario(
                "strict",
                rooms,
                start,
                [
                    {"id": "one", "at": "0s", "text": "one"},
                    {"id": "two", "at": "+1s", "text": "two"},
                ],
            )
        )
        assert "Armed strict" in await env.command("!arm strict", timeout=40)
        notices = await env.control_notices(["stage one delivered", "stage two delivered"], 90)
        for stage in ("one", "two"):
            report = next(n for n in notices if f"stage {stage} delivered" in n)
            assert "delivered to 3 of 3" in report, report
        for room in rooms:
            assert await dispatch_tags(env.org, room) == [("one", "text"), ("two", "text")]
        # The limits were met (else this test proves nothing): some send was retried.
        retried = query(env, "SELECT COUNT(*) FROM deliveries WHERE attempts > 1")[0][0]
        assert retried > 0


# -- 4. an encrypted city room ------------------------------------------------------------


async def test_encrypted_room_participant_decrypts(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "e2e") as env:
        tag = tmp_path.name[-8:]
        mod = await clients.participant(await homeserver.register(f"m-{tag}"))
        alice = await clients.participant(await homeserver.register(f"p-{tag}"))
        room = await create_room(mod, name="secret city", encrypted=True, invite=[alice.user_id])
        await join(alice, room)
        stages = [{"id": "go", "at": "0s", "text": "Meet at {spot}", "place": "spot"}]
        env.write_scenario(scenario("e2e", [room], seconds_ahead(3600), stages, place=True))
        await env.start()
        await env.opt_in(mod, room)
        env.write_scenario(scenario("e2e", [room], seconds_ahead(4), stages, place=True))
        assert "Armed e2e" in await env.command("!arm e2e")
        msgs = await collect_messages(
            alice,
            room,
            until=lambda ms: sum(DISPATCH_KEY in content_of(m) for m in ms) >= 2,
            timeout=30,
        )
        ours = [m for m in msgs if DISPATCH_KEY in content_of(m)]
        assert [m.sender for m in ours] == [env.bot_user.user_id] * 2
        assert all(m.decrypted for m in ours)  # it really was encrypted
        assert content_of(ours[0])["body"] == "Meet at the old fountain"
        assert content_of(ours[1])["msgtype"] == "m.location"
        assert content_of(ours[1])["geo_uri"] == "geo:52.52,13.4"


# -- 1. SIGKILL in the middle of a fan-out to 50 rooms -----------------------------------


async def test_sigkill_mid_fanout_then_restart_exactly_once(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """`python -m bot run` is killed with SIGKILL while the ledger shows some of a
    stage's deliveries sent and not others; started again, it finishes the fan-out:
    every room holds each dispatch exactly once, and the control room gets the report."""
    n_rooms = 50
    # Few requests in flight, so the fan-out lasts long enough to be cut in the middle.
    async with bot_env(homeserver, tmp_path, clients, "kill", {"max_in_flight": 4}) as env:
        mod = await clients.participant(await homeserver.register(f"mod-{tmp_path.name[-8:]}"))
        sem = asyncio.Semaphore(8)

        async def new_room(i: int) -> str:
            async with sem:
                resp = await mod.room_create(name=f"kill {i}")
            assert isinstance(resp, RoomCreateResponse), resp
            return str(resp.room_id)

        rooms = list(await asyncio.gather(*(new_room(i) for i in range(n_rooms))))
        stages = [{"id": "go", "at": "0s", "text": "Go to {spot}", "place": "spot"}]
        env.write_scenario(scenario("kill", rooms, seconds_ahead(3600), stages, place=True))
        env.spawn()
        await env.wait_joined(env.control_room)

        async def invite(room: str) -> None:
            async with sem:
                await mod.room_invite(room, env.bot_user.user_id)

        await asyncio.gather(*(invite(r) for r in rooms))
        await wait_for(
            lambda: (
                query(env, "SELECT COUNT(*) FROM rooms WHERE membership = 'joined'")[0][0]
                >= n_rooms + 1
            ),
            60,
            "the bot did not opt in every room",
        )
        start = seconds_ahead(4)
        env.write_scenario(scenario("kill", rooms, start, stages, place=True))
        assert "Armed kill" in await env.command("!arm kill")

        total = 2 * n_rooms
        deadline = time.monotonic() + 30
        while True:
            counts = ledger_counts(env)
            if 20 <= counts["sent"] < total:
                env.kill()
                break
            assert counts["sent"] < total, f"the fan-out finished before the kill: {counts}"
            assert time.monotonic() < deadline, f"no fan-out seen: {counts}"
            await asyncio.sleep(0.005)
        at_kill = ledger_counts(env)
        print(f"\nSIGKILL at {dict(at_kill)} of {total} deliveries")
        assert 0 < at_kill["sent"] < total

        first_log = env.log_path
        env.spawn()
        notices = await env.control_notices("stage go delivered", timeout=60)
        report = next(n for n in notices if "stage go delivered" in n)
        assert f"delivered to {n_rooms} of {n_rooms}" in report, report
        assert ledger_counts(env) == Counter({"sent": total})

        counted: Counter[tuple[str, str]] = Counter()
        held: set[str] = set()
        for room in rooms:
            events = with_content_key(await room_messages(mod, room), DISPATCH_KEY)
            tags = [
                (content_of(e)[DISPATCH_KEY]["stage"], content_of(e)[DISPATCH_KEY]["part"])
                for e in events
            ]
            assert tags == [("go", "text"), ("go", "location")], (room, tags)
            counted.update(tags)
            held.update(e.event_id for e in events)
        assert counted == {("go", "text"): n_rooms, ("go", "location"): n_rooms}
        # The events the ledger recorded are exactly the ones the rooms hold.
        assert {e for (e,) in query(env, "SELECT event_id FROM deliveries")} == held
        assert env.terminate() == 0
        # Logs carry ids, never content, even at DEBUG: not the text, not the place.
        for log in (first_log, env.log_path):
            text = log.read_text(errors="replace")
            assert "sent kill/town/go" in text or log == first_log
            assert "Go to" not in text and "old fountain" not in text and "52.52" not in text
