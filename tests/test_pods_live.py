"""Pods and roles on a real homeserver (issue 14): four pods, each room reading only
its own pod's places (unique markers, searched for the way tests/test_leaks.py
does); role rooms reading their role's text; steering one pod (hold, resume,
redirect, abort) while the others go on. Real Synapse, real nio clients, the
bot in-process."""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from matrix_helpers import (
    ClientPool,
    collect_messages,
    content_of,
    room_messages,
    send_text,
    sync_until,
    with_content_key,
)
from nio import AsyncClient, RoomCreateResponse

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver

PODS = ("mk", "cw", "st", "tw")
# The role each pod's room is listed with (mk has a second room, for support).
ROOM_ROLE: dict[str, str | None] = {"mk": None, "cw": "front", "st": None, "tw": "remote"}
LEAD_S = 5  # from writing the real start to the first instant (arm, prepare, margin)


def _m(kind: str) -> str:
    return f"ZQ{kind}{uuid.uuid4().hex[:10]}"


def pods_scenario(
    sid: str,
    rooms: dict[str, str],
    medics: str,
    start: datetime,
    marks: dict[str, str],
    gap: int = 4,
) -> dict[str, Any]:
    """One city, four pods, three roles, stages ``gap`` seconds apart. ``marks``
    (pod.place → marker) is filled once and kept across rewrites."""
    pods = []
    for i, pod in enumerate(PODS):
        places = {}
        for place in ("staging", "spot"):
            marks.setdefault(f"{pod}.{place}", _m(f"{pod.upper()}{place.upper()}"))
            places[place] = {"name": marks[f"{pod}.{place}"], "geo": f"22.{i}1,114.1{i}"}
        role = ROOM_ROLE[pod]
        listed: list[Any] = [rooms[pod] if role is None else {"room": rooms[pod], "role": role}]
        if pod == "mk":
            listed.append({"room": medics, "role": "support"})
        pods.append({"id": pod, "rooms": listed, "places": places})
    marks.setdefault("city.home", _m("CITYHOME"))
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(start),
        "abort_text": "STOP. Leave {staging} now.",
        "roles": [
            {"id": "front", "name": "In the action"},
            {"id": "support", "name": "Nearby support"},
            {"id": "remote", "name": "From home"},
        ],
        "cities": [
            {
                "id": "hk",
                "name": "Hong Kong",
                "timezone": "Asia/Hong_Kong",
                "places": {"home": {"name": marks["city.home"]}},
                "pods": pods,
            }
        ],
        "stages": [
            {
                "id": "gather",
                "at": "0s",
                "place": "staging",
                "text": {
                    "default": "TDEFAULT Gather at {staging}.",
                    "support": "TSUPPORT Set up near {staging}.",
                    "remote": "TREMOTE Stay home tonight.",
                },
            },
            {
                "id": "spot",
                "at": f"+{gap}s",
                "place": "spot",
                "roles": ["front", "support"],
                "text": {"front": "TFRONT Now: {spot}.", "support": "TSUPPORT2 Edge of {spot}."},
            },
            {"id": "bye", "at": f"+{2 * gap}s", "text": "TBYE Leave by {home}."},
        ],
    }


async def bot_events(client: AsyncClient, room: str) -> list[dict[str, Any]]:
    events = with_content_key(await room_messages(client, room), DISPATCH_KEY)
    return [content_of(e) for e in events]


def text_of(content: dict[str, Any]) -> str:
    """Everything a participant can read in an event: body, HTML, pin."""
    return " ".join(
        str(content.get(k, ""))
        for k in ("body", "formatted_body", "geo_uri", "org.matrix.msc1767.text")
    ) + str(content.get("org.matrix.msc3488.location", ""))


def pods_in(texts: list[str], marks: dict[str, str]) -> set[str]:
    found = set()
    for key, marker in marks.items():
        if any(marker in t for t in texts):
            found.add(key.split(".")[0])
    return found


def units(events: list[dict[str, Any]]) -> list[str]:
    return [e[DISPATCH_KEY]["stage"] for e in events if e[DISPATCH_KEY]["part"] == "text"]


async def four_pods(
    env: BotEnv, clients: ClientPool, hs: EmbeddedHomeserver, tag: str
) -> tuple[AsyncClient, dict[str, str], str]:
    mod = await clients.participant(await hs.register(f"mod-{tag}-{env.dir.name[-6:]}"))
    rooms = {p: await env.city_room(mod, name=f"{tag} {p}") for p in PODS}
    medics = await env.city_room(mod, name=f"{tag} mk medics")
    return mod, rooms, medics


async def test_four_pods_each_room_reads_only_its_own_places_and_role(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "pods") as env:
        mod, rooms, medics = await four_pods(env, clients, homeserver, "pods")
        marks: dict[str, str] = {}
        # Listed now (so the opt-ins are accepted); the real instants are set before !arm.
        env.write_scenario(pods_scenario("podx", rooms, medics, seconds_ahead(3600), marks))
        await env.start()
        for room in (*rooms.values(), medics):
            await env.opt_in(mod, room)
        env.write_scenario(pods_scenario("podx", rooms, medics, seconds_ahead(LEAD_S), marks))
        armed = await env.command("!arm podx")
        assert "Armed podx" in armed, armed
        status = await env.command("!status podx")
        assert "hk/mk" in status and "hk/tw" in status, status
        notices = await env.control_notices(["stage bye delivered"], timeout=60)
        # Each room: only its own pod's places (and the city's shared one).
        for pod, room in [*rooms.items(), ("mk", medics)]:
            texts = [text_of(c) for c in await bot_events(mod, room)]
            assert pods_in(texts, marks) == {pod, "city"}, (pod, room)
        # Each room: its role's text, and only the stages meant for it. (A lane
        # whose rooms all read one text has one dispatch: no variant in its unit.)
        plain = await bot_events(mod, rooms["mk"])
        assert units(plain) == ["gather@default", "bye"]
        assert "TDEFAULT" in plain[0]["body"] and marks["mk.staging"] in plain[0]["body"]
        support = await bot_events(mod, medics)
        assert units(support) == ["gather@support", "spot", "bye"]
        assert any("TSUPPORT2" in c["body"] and marks["mk.spot"] in c["body"] for c in support)
        front = await bot_events(mod, rooms["cw"])
        assert units(front) == ["gather", "spot", "bye"]
        assert any("TFRONT" in c["body"] and marks["cw.spot"] in c["body"] for c in front)
        remote = await bot_events(mod, rooms["tw"])
        assert units(remote) == ["gather", "bye"]
        assert "TREMOTE" in remote[0]["body"]
        assert not any("TFRONT" in text_of(c) or "TSUPPORT" in text_of(c) for c in remote)
        assert units(await bot_events(mod, rooms["st"])) == ["gather", "bye"]
        # The control room: pods by id and counts, never a place.
        control = "\n".join([*notices, armed, status])
        assert not any(m in control for m in marks.values()), control
        assert "stage gather@default delivered to 1 of 1 rooms (hk/mk 1/1)" in control, control


async def test_steering_one_pod_hold_redirect_abort(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "podsteer") as env:
        mod, rooms, medics = await four_pods(env, clients, homeserver, "podsteer")
        marks: dict[str, str] = {}
        env.write_scenario(pods_scenario("pst", rooms, medics, seconds_ahead(3600), marks, 12))
        await env.start()
        for room in (*rooms.values(), medics):
            await env.opt_in(mod, room)
        env.write_scenario(
            pods_scenario("pst", rooms, medics, seconds_ahead(LEAD_S + 2), marks, 12)
        )
        assert "Armed pst" in await env.command("!arm pst")
        reply = await env.command("!hold pst hk/mk")
        assert "Holding pst in hk/mk" in reply, reply
        assert "no pod nowhere in hk" in await env.command("!hold pst hk/nowhere")
        await env.control_notices("stage gather delivered", timeout=40)
        # mongkok held: neither of its rooms heard anything; the others did.
        assert await bot_events(mod, rooms["mk"]) == [] and await bot_events(mod, medics) == []
        assert units(await bot_events(mod, rooms["cw"])) == ["gather"]
        # Redirect causeway's staging after its reveal: a correction there only.
        new = _m("NEWCW")
        reply = await env.command(f"!redirect pst hk/cw staging {new} 22.28,114.18")
        assert "already revealed by gather" in reply, reply
        await env.control_notices("stage !fix-staging-1 delivered", timeout=30)
        cw = [text_of(c) for c in await bot_events(mod, rooms["cw"])]
        assert any("Correction" in t and new in t for t in cw), cw
        for room in (rooms["st"], rooms["tw"]):
            assert not any(new in text_of(c) for c in await bot_events(mod, room))
        # Abort Tsuen Wan alone: its stop message names its own staging point.
        reply = await env.command("!abort pst hk/tw")
        assert "Aborting pst in hk/tw" in reply, reply
        await env.control_notices("stage !abort delivered", timeout=30)
        tw = await bot_events(mod, rooms["tw"])
        assert units(tw)[-1] == "!abort" and marks["tw.staging"] in tw[-1]["body"]
        # Lift mongkok's hold: its stage goes out now, with its own places.
        reply = await env.command("!resume pst hk/mk")
        assert "Resumed pst in hk/mk" in reply, reply
        await env.control_notices("stage bye delivered", timeout=60)
        mk = [text_of(c) for c in await bot_events(mod, rooms["mk"])]
        assert pods_in(mk, marks) == {"mk", "city"}
        assert units(await bot_events(mod, rooms["tw"])) == ["gather", "!abort"]
        assert "spot" in units(await bot_events(mod, rooms["cw"]))
        for pod, room in [*rooms.items(), ("mk", medics)]:
            texts = [text_of(c) for c in await bot_events(mod, room)]
            assert pods_in(texts, marks) <= {pod, "city"}, (pod, room)


async def test_private_participants_read_only_their_assigned_pods_places(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """Eight people join privately through the real ``!join``; the bot assigns
    each a pod (two per pod), and each direct chat gets only that pod's places,
    next to the pods' rooms."""
    async with bot_env(homeserver, tmp_path, clients, "poddm") as env:
        mod, rooms, medics = await four_pods(env, clients, homeserver, "poddm")
        marks: dict[str, str] = {}

        def data(start: datetime) -> dict[str, Any]:
            d = pods_scenario("pdm", rooms, medics, start, marks)
            d["cities"][0]["direct"] = True
            return d

        env.write_scenario(data(seconds_ahead(3600)))
        await env.start()
        for room in (*rooms.values(), medics):
            await env.opt_in(mod, room)
        people: list[tuple[AsyncClient, str]] = []
        for n in range(8):
            person = await clients.participant(
                await homeserver.register(f"pdm{n}-{tmp_path.name[-6:]}")
            )
            resp = await person.room_create(is_direct=True, invite=[env.bot_user.user_id])
            assert isinstance(resp, RoomCreateResponse), resp
            await env.wait_joined(resp.room_id, by=person)
            await sync_until(person, lambda p=person, r=resp.room_id: r in p.rooms)
            event_id = await send_text(person, resp.room_id, "!join pdm hk")
            await collect_messages(
                person,
                resp.room_id,
                until=lambda ms, e=event_id: any(
                    m.sender == env.bot_user.user_id for m in ms
                ),
                timeout=20,
            )
            people.append((person, resp.room_id))
        db = sqlite3.connect(f"file:{env.storage_dir / 'blossom.db'}?mode=ro", uri=True)
        pod_of = dict(db.execute("SELECT room_id, pod_id FROM direct_participants").fetchall())
        db.close()
        assert sorted(Counter(pod_of.values()).values()) == [2, 2, 2, 2], pod_of
        env.write_scenario(data(seconds_ahead(LEAD_S)))
        assert "Armed pdm" in await env.command("!arm pdm")
        await env.control_notices(["stage bye delivered"], timeout=60)
        for person, dm in people:
            events = await bot_events(person, dm)
            # No role: gather's text for everyone, never the role-limited spot.
            assert units(events) == ["gather@default", "bye"], (dm, units(events))
            texts = [text_of(c) for c in events]
            assert pods_in(texts, marks) == {pod_of[dm], "city"}, (dm, pod_of[dm])
        for pod, room in rooms.items():
            texts = [text_of(c) for c in await bot_events(mod, room)]
            assert pods_in(texts, marks) == {pod, "city"}, pod
