"""A crew of two bots sending on one real Synapse (the quick variant of issue 12's
tests): each room gets each stage once, from the member on duty; a member
SIGKILLed before an instant is covered by the other within grace; restarted, it
looks before sending and re-sends nothing, and is on duty again for the next
stage; an !abort with one member down reaches every room; a !hold with one
member down is kept by the survivor, and !resume releases the stage once.

Both bots run as ``python -m bot run`` processes (tests/bot_harness.py), with
``crew.heartbeat_seconds: 1`` (down 3 s after the last beat) and
``failover.grace: 2s``. Each control room gives both bots power 50, which they
need to write their heartbeats (docs/operators.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from bot_harness import BotEnv, iso_z
from figures import pytest_command, record
from matrix_helpers import ClientPool, content_of, create_room, room_messages, send_text

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.ids import ABORT_STAGE

pytestmark = pytest.mark.homeserver

GRACE_S = 2.0
HEARTBEAT_S = 1.0
# "Within grace plus a few seconds": the standby's look and send, on a busy machine.
COVER_WITHIN_S = GRACE_S + 4.0


@dataclass
class Pair:
    a: BotEnv
    b: BotEnv
    rooms: tuple[str, str]  # north (a first), south (b first)

    @property
    def org(self) -> Any:
        return self.a.org

    def write(self, data: dict[str, Any]) -> None:
        for env in (self.a, self.b):
            env.write_scenario(data)


def _config(hs: EmbeddedHomeserver, user: Any, control: str, crew: list[str]) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": hs.url, "user_id": user.user_id, "password": user.password},
        "storage": {"path": "data"},
        "control": {"rooms": [control], "min_power_level": 50},
        "scenarios": {"dir": "scenarios"},
        "dispatch": {"prepare_seconds": 1.0},
        "crew": {"members": crew, "heartbeat_seconds": HEARTBEAT_S},
    }


@contextlib.asynccontextmanager
async def crew_pair(
    hs: EmbeddedHomeserver, tmp: Path, pool: ClientPool, tag: str
) -> AsyncIterator[Pair]:
    """Two crew members (a first in the config), an organiser, a control room
    where both have power 50, and two city rooms made by the organiser."""
    suffix = uuid.uuid4().hex[:6]
    users = [await hs.register(f"crew{n}-{tag}-{suffix}") for n in ("a", "b")]
    organiser = await hs.register(f"org-{tag}-{suffix}")
    for u in users:
        await hs.exempt_from_rate_limits(u.user_id)
    org = await pool.participant(organiser)
    ids = [u.user_id for u in users]
    control = await create_room(
        org, name=f"control {tag}", invite=ids, power_users={i: 50 for i in ids}
    )
    envs = []
    for name, user in zip(("a", "b"), users, strict=True):
        d = tmp / name
        (d / "scenarios").mkdir(parents=True)
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(_config(hs, user, control, ids)))
        envs.append(BotEnv(hs, d, user, organiser, org, control, pool, path))
    rooms = (
        await create_room(org, name=f"north {tag}"),
        await create_room(org, name=f"south {tag}"),
    )
    pair = Pair(envs[0], envs[1], rooms)
    try:
        yield pair
    finally:
        for env in envs:
            env.kill()


def crew_scenario(pair: Pair, sid: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    a, b = pair.a.bot_user.user_id, pair.b.bot_user.user_id
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(datetime.now(UTC) + timedelta(days=1)),  # moved by !arm … at
        "failover": {"grace": f"{GRACE_S:g}s"},
        "cities": [
            {"id": "north", "name": "North", "timezone": "Europe/Berlin",
             "rooms": [pair.rooms[0]], "crew": [a, b]},
            {"id": "south", "name": "South", "timezone": "Europe/Berlin",
             "rooms": [pair.rooms[1]], "crew": [b, a]},
        ],
        "stages": stages,
    }


async def start_both(pair: Pair) -> None:
    for env in (pair.a, pair.b):
        env.spawn()
    for env in (pair.a, pair.b):
        await env.wait_joined(env.control_room, timeout=30)
    # The room's moderator invites one member; it invites the rest of the crew.
    for room in pair.rooms:
        await pair.a.opt_in(pair.org, room)
        await pair.b.wait_joined(room, timeout=30)


async def sightings(org: Any, room: str) -> list[tuple[str, str, float]]:
    """(stage, sender, origin_server_ts in s) of every dispatch text in the room."""
    found = []
    for e in await room_messages(org, room):
        tag = content_of(e).get(DISPATCH_KEY)
        if isinstance(tag, dict) and tag.get("part") == "text":
            found.append((str(tag["stage"]), str(e.sender), e.server_timestamp / 1000))
    return found


async def wait_for(org: Any, room: str, stage: str, timeout: float = 30) -> float:
    """When ``stage`` first appeared in ``room`` (origin_server_ts, in s)."""
    deadline = time.monotonic() + timeout
    while True:
        for s, _, ts in await sightings(org, room):
            if s == stage:
                return ts
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stage} did not reach {room} within {timeout:g} s")
        await asyncio.sleep(0.2)


async def settled(env: BotEnv, stage: str, timeout: float = 40) -> dict[str, tuple[str, str]]:
    """room -> (state, last error) of ``env``'s text deliveries of ``stage``, once
    none is pending or sending any more (read from its database)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(env.storage_dir / "blossom.db")) as db:
            rows = db.execute(
                "SELECT room_id, state, COALESCE(last_error, '') FROM deliveries "
                "WHERE stage_id = ? AND part = 'text'",
                (stage,),
            ).fetchall()
        if rows and all(state not in ("pending", "sending") for _, state, _ in rows):
            return {room: (state, error) for room, state, error in rows}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stage} not settled in {env.bot_user.user_id}'s ledger: {rows}")
        await asyncio.sleep(0.3)


def db_rows(env: BotEnv, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(env.storage_dir / "blossom.db")) as db:
        return db.execute(sql, params).fetchall()


async def event_ts(client: Any, room: str, event_id: str) -> float:
    """The origin_server_ts (in s) of ``event_id`` in ``room``."""
    for e in await room_messages(client, room):
        if getattr(e, "event_id", None) == event_id:
            return float(e.server_timestamp) / 1000
    raise AssertionError(f"{event_id} not in {room}")


def duplicates(seen: list[tuple[str, str, float]]) -> int:
    """Dispatch texts in a room beyond the first of each stage."""
    return len(seen) - len({s for s, _, _ in seen})


def record_crew(test: str, row: str, what: str, *, lost: dict[str, int],
                covered: int, last_covered_s: float, visible_duplicates: int) -> None:
    """A "Crew failover" row: what was lost (kills, outages, by kind), how many rooms
    another member covered, and how long after the instant the last covered room had
    it (from the events' origin_server_ts, the server's stamps)."""
    record(
        f"crew/{row}",
        section="Crew failover",
        what=what,
        tried=sum(lost.values()),
        unit="kills and outages",
        command=pytest_command(test),
        by_kind=lost,
        measured={
            "rooms covered by failover": covered,
            "instant to last covered room (s)": round(last_covered_s, 2),
            "duplicates left visible": visible_duplicates,
        },
    )


def log_of(env: BotEnv) -> str:
    return env.log_path.read_text(errors="replace") if env.log_path.exists() else ""


async def test_each_room_once_from_the_member_on_duty_and_failover_after_sigkill(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with crew_pair(homeserver, tmp_path, clients, "kill") as pair:
        north, south = pair.rooms
        a, b = pair.a.bot_user.user_id, pair.b.bot_user.user_id
        pair.write(crew_scenario(pair, "ck", [
            {"id": "one", "at": "0s", "text": "One"},
            {"id": "two", "at": "+8s", "text": "Two"},
            {"id": "three", "at": "+24s", "text": "Three"},
        ]))
        await start_both(pair)
        t0 = datetime.now(UTC) + timedelta(seconds=6)
        assert "Armed ck" in await pair.a.command(f"!arm ck at {iso_z(t0)}")
        # Both alive: each room once, from its member on duty (a north, b south),
        # and the standby's look at instant + grace sends nothing.
        for room in pair.rooms:
            await wait_for(pair.org, room, "one")
        await asyncio.sleep(GRACE_S + 1.5)
        assert [(s, who) for s, who, _ in await sightings(pair.org, north)] == [("one", a)]
        assert [(s, who) for s, who, _ in await sightings(pair.org, south)] == [("one", b)]
        # a dies 1.5 s before stage two: at the instant b still counts it up, so b
        # is the standby and covers north after its grace.
        two = t0 + timedelta(seconds=8)
        await asyncio.sleep(max(0.0, (two - datetime.now(UTC)).total_seconds() - 1.5))
        pair.a.kill()
        arrived = await wait_for(pair.org, north, "two", timeout=20)
        assert arrived - two.timestamp() <= COVER_WITHIN_S, arrived - two.timestamp()
        await wait_for(pair.org, south, "two")
        # a comes back: it looks before its late send and finds b's copies.
        pair.a.spawn()
        await pair.a.wait_joined(pair.a.control_room, timeout=30)
        # Its ledger: stage two was not sent again, each room found b's copy.
        assert await settled(pair.a, "two") == {
            north: ("skipped", f"delivered by {b}"), south: ("skipped", f"delivered by {b}")
        }
        for room in pair.rooms:
            await wait_for(pair.org, room, "three", timeout=40)
        await asyncio.sleep(GRACE_S + 1.5)
        assert [(s, who) for s, who, _ in await sightings(pair.org, north)] == [
            ("one", a), ("two", b), ("three", a)
        ], log_of(pair.a)[-3000:]
        assert [(s, who) for s, who, _ in await sightings(pair.org, south)] == [
            ("one", b), ("two", b), ("three", b)
        ]
        left = sum([duplicates(await sightings(pair.org, room)) for room in pair.rooms])
        record_crew(
            "tests/test_crew_send_live.py::"
            "test_each_room_once_from_the_member_on_duty_and_failover_after_sigkill",
            "sigkill-one-server",
            "Two members on one Synapse; the member on duty SIGKILLed 1.5 s before an "
            "instant (grace 2 s): the other covers its room, once; restarted, it looks "
            "first and re-sends nothing, and is on duty for the next stage",
            lost={"member SIGKILLed": 1}, covered=1, last_covered_s=arrived - two.timestamp(),
            visible_duplicates=left,
        )


async def test_abort_with_one_member_down_reaches_every_room(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with crew_pair(homeserver, tmp_path, clients, "abort") as pair:
        pair.write(crew_scenario(pair, "ca", [
            {"id": "one", "at": "0s", "text": "One"},
            {"id": "two", "at": "+10m", "text": "Two"},
        ]))
        await start_both(pair)
        t0 = datetime.now(UTC) + timedelta(seconds=5)
        assert "Armed ca" in await pair.b.command(f"!arm ca at {iso_z(t0)}")
        for room in pair.rooms:
            await wait_for(pair.org, room, "one")
        # a dies just before the abort: b still counts it up, so north's stop
        # message comes from b as the standby, after its grace.
        pair.a.kill()
        # No reply is awaited: a, the speaker, is gone and b does not count it
        # down (and speak) for another few seconds; b acts on the command at once.
        command = await send_text(pair.org, pair.b.control_room, "!abort ca")
        arrived = {}
        for room in pair.rooms:
            arrived[room] = await wait_for(pair.org, room, ABORT_STAGE, timeout=GRACE_S + 10)
        await asyncio.sleep(GRACE_S + 1)
        b = pair.b.bot_user.user_id
        for room in pair.rooms:
            stops = [who for s, who, _ in await sightings(pair.org, room) if s == ABORT_STAGE]
            assert stops == [b], (room, stops)
        # The stop message's "instant" is the command's, as the server stamped it.
        sent_at = await event_ts(pair.org, pair.b.control_room, command)
        record_crew(
            "tests/test_crew_send_live.py::test_abort_with_one_member_down_reaches_every_room",
            "abort-member-down",
            "Two members on one Synapse; one SIGKILLed just before !abort: the survivor "
            "acts on it and its stop message reaches every room once, the dead member's "
            "room as standby after grace (2 s), timed from the command",
            lost={"member SIGKILLed": 1}, covered=1,
            last_covered_s=arrived[pair.rooms[0]] - sent_at,
            visible_duplicates=sum(
                [duplicates(await sightings(pair.org, room)) for room in pair.rooms]
            ),
        )


async def test_hold_with_one_member_down_is_kept_and_resume_sends_once(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with crew_pair(homeserver, tmp_path, clients, "hold") as pair:
        north, south = pair.rooms
        a, b = pair.a.bot_user.user_id, pair.b.bot_user.user_id
        pair.write(crew_scenario(pair, "ch", [
            {"id": "one", "at": "0s", "text": "One"},
            {"id": "two", "at": "+10s", "text": "Two"},
            {"id": "three", "at": "+10m", "text": "Three"},  # keeps the run armed
        ]))
        await start_both(pair)
        t0 = datetime.now(UTC) + timedelta(seconds=5)
        assert "Armed ch" in await pair.b.command(f"!arm ch at {iso_z(t0)}")
        for room in pair.rooms:
            await wait_for(pair.org, room, "one")
        # a, on duty for north, dies; north's stage two is then b's to send, at
        # the instant or as standby after grace, unless b keeps the hold.
        pair.a.kill()
        await send_text(pair.org, pair.b.control_room, "!hold ch north")
        deadline = time.monotonic() + 10
        while db_rows(pair.b, "SELECT city_id FROM holds") != [("north",)]:
            assert time.monotonic() < deadline, "b did not record the hold"
            await asyncio.sleep(0.2)
        two = t0 + timedelta(seconds=10)
        assert datetime.now(UTC) < two - timedelta(seconds=1), "the hold came too late to test"
        # South is not held: stage two was due, and b was sending.
        await wait_for(pair.org, south, "two", timeout=20)
        await asyncio.sleep(max(0.0, (two - datetime.now(UTC)).total_seconds() + COVER_WITHIN_S))
        assert [(s, who) for s, who, _ in await sightings(pair.org, north)] == [("one", a)]
        assert db_rows(
            pair.b, "SELECT state FROM dispatches WHERE city_id = 'north' AND stage_id = 'two'"
        ) == [("held",)]
        assert db_rows(
            pair.b, "SELECT state FROM deliveries WHERE room_id = ? AND stage_id = 'two' "
            "AND state = 'sent'", (north,)
        ) == []
        # a has been down for longer than 3 heartbeats: b is the speaker and answers.
        assert "north" in (await pair.b.command("!resume ch north")).lower()
        arrived = await wait_for(pair.org, north, "two", timeout=20)
        await asyncio.sleep(GRACE_S + 1.5)
        assert [(s, who) for s, who, _ in await sightings(pair.org, north)] == [
            ("one", a), ("two", b)
        ], log_of(pair.b)[-3000:]
        assert [(s, who) for s, who, _ in await sightings(pair.org, south)] == [
            ("one", b), ("two", b)
        ]
        assert await settled(pair.b, "two") == {north: ("sent", ""), south: ("sent", "")}
        resumed = [e for e in await room_messages(pair.org, pair.b.control_room)
                   if content_of(e).get("body") == "!resume ch north"]
        record_crew(
            "tests/test_crew_send_live.py::"
            "test_hold_with_one_member_down_is_kept_and_resume_sends_once",
            "hold-member-down",
            "Two members on one Synapse; the member on duty for a city SIGKILLed, then "
            "!hold of that city: the survivor keeps it (the stage reaches none of its "
            "rooms, neither at the instant nor after grace); !resume sends it once, from "
            "the survivor, timed from the !resume",
            lost={"member SIGKILLed": 1}, covered=1,
            last_covered_s=arrived - resumed[-1].server_timestamp / 1000,
            visible_duplicates=sum(
                [duplicates(await sightings(pair.org, room)) for room in pair.rooms]
            ),
        )
