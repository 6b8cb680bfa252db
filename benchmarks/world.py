"""The benchmark's homeserver, users and rooms, created once and reused by every
measurement (same server, same rooms, same message)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.raw import RawClient, bounded
from bot import DISPATCH_KEY
from bot.content import stage_messages
from bot.devtools.homeserver import EmbeddedHomeserver, RegisteredUser
from bot.scenario import load_scenario_text, render_stage

STAGE_ID = "go"
STAGE_TEXT = "Walk to the fountain in {city} now. Stop when you hear the bell."
CREATE_CONCURRENCY = 8
JOIN_CONCURRENCY = 16


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def iso_z(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def city_ids(cities: int) -> list[str]:
    return [f"city{c:02d}" for c in range(cities)]


def city_of(index: int, cities: int) -> str:
    """Room ``index`` belongs to city ``index % cities``: every prefix of the room
    list is spread evenly over the cities."""
    return city_ids(cities)[index % cities]


def scenario_data(
    scenario_id: str,
    rooms: Sequence[str],
    cities: int,
    instant: datetime,
    *,
    direct: bool = False,
) -> dict[str, Any]:
    """One stage, due at ``instant`` in every city (text only: one message per room).
    ``direct``: the cities also take private participants (direct chats)."""
    by_city: dict[str, list[str]] = {c: [] for c in city_ids(cities)}
    for i, room in enumerate(rooms):
        by_city[city_of(i, cities)].append(room)
    return {
        "version": 1,
        "id": scenario_id,
        "title": "Fan-out benchmark",
        "start": iso_z(instant),
        "cities": [
            {
                "id": cid,
                "name": f"City {cid[-2:]}",
                "timezone": "Europe/London",
                "rooms": city_rooms,
                **({"direct": True} if direct else {}),
            }
            for cid, city_rooms in by_city.items()
            if city_rooms
        ],
        "stages": [{"id": STAGE_ID, "at": "0s", "text": STAGE_TEXT}],
    }


def write_scenario(directory: Path, data: Mapping[str, Any]) -> Path:
    path = directory / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


class StageContent:
    """The exact content Blossom sends for the benchmark stage, per city, so the
    baselines send the same bytes (same text, same dispatch tag shape)."""

    def __init__(self, scenario_id: str, cities: int) -> None:
        data = scenario_data(
            scenario_id,
            [f"!placeholder{i}:localhost" for i in range(cities)],
            cities,
            datetime.now(UTC),
        )
        scenario = load_scenario_text(yaml.safe_dump(data))
        self._by_city: dict[str, dict[str, Any]] = {}
        for city in scenario.cities:
            (text,) = stage_messages(render_stage(scenario, city.id, STAGE_ID))
            self._by_city[city.id] = {
                **text.content,
                DISPATCH_KEY: {
                    "scenario": scenario_id,
                    "city": city.id,
                    "stage": STAGE_ID,
                    "part": "text",
                },
            }
        self.cities = cities

    def __call__(self, index: int, room_id: str) -> dict[str, Any]:
        return self._by_city[city_of(index, self.cities)]


@dataclass
class BotAccount:
    user: RegisteredUser
    raw: RawClient
    control_room: str
    rooms: list[str] = field(default_factory=list)


@dataclass
class World:
    hs: EmbeddedHomeserver
    http: aiohttp.ClientSession
    organiser: RegisteredUser
    org: RawClient
    rooms: list[str]
    bots: dict[str, BotAccount]
    setup_seconds: dict[str, float]


async def register(hs: EmbeddedHomeserver, localpart: str) -> RegisteredUser:
    user = await hs.register(localpart)
    await hs.exempt_from_rate_limits(user.user_id)
    return user


async def build_world(
    hs: EmbeddedHomeserver,
    http: aiohttp.ClientSession,
    *,
    room_count: int,
    bot_rooms: Mapping[str, int],
    prefix: str = "bench",
    encrypted: bool = False,
    public: bool = False,
    invite_all: Sequence[str] = (),
) -> World:
    """Register an organiser and one bot account per entry of ``bot_rooms`` (name ->
    how many of the rooms it is in: always the first ones), create ``room_count``
    rooms (the organiser creates them and invites the bots), join the bots, and give
    each bot a control room where the organiser is the creator. ``public`` rooms
    can be joined without an invite; ``invite_all`` are invited to every room."""
    timings: dict[str, float] = {}
    organiser = await register(hs, f"{prefix}-organiser")
    org = await RawClient.login(http, hs.url, organiser.localpart, organiser.password)
    bots: dict[str, BotAccount] = {}
    for name in bot_rooms:
        user = await register(hs, f"{prefix}-{name}")
        raw = await RawClient.login(
            http, hs.url, user.localpart, user.password, device_id="BENCHRAW"
        )
        control = await org.create_room(f"control {name}", invite=[user.user_id])
        await raw.join(control)
        bots[name] = BotAccount(user, raw, control)

    t0 = time.monotonic()
    done = 0

    async def create(i: int) -> str:
        nonlocal done
        invite = [] if public else [b.user.user_id for n, b in bots.items() if i < bot_rooms[n]]
        invite += list(invite_all)
        room = await org.create_room(
            f"{prefix} room {i:04d}", invite=invite, encrypted=encrypted, public=public
        )
        done += 1
        if done % 500 == 0:
            log(f"  created {done}/{room_count} rooms")
        return room

    rooms: list[str] = await bounded(CREATE_CONCURRENCY, range(room_count), create)
    timings["create_rooms_s"] = time.monotonic() - t0
    log(f"created {room_count} rooms in {timings['create_rooms_s']:.1f} s")

    t0 = time.monotonic()
    joins = [(b, room) for n, b in bots.items() for room in rooms[: bot_rooms[n]]]

    async def join(pair: tuple[BotAccount, str]) -> None:
        await pair[0].raw.join(pair[1])

    await bounded(JOIN_CONCURRENCY, joins, join)
    for n, b in bots.items():
        b.rooms = rooms[: bot_rooms[n]]
    timings["join_rooms_s"] = time.monotonic() - t0
    log(f"joined the bots to their rooms ({len(joins)} joins) in {timings['join_rooms_s']:.1f} s")
    return World(hs, http, organiser, org, rooms, bots, timings)
