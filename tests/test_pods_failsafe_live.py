"""The dead-man's switch with pods and roles, on a real Synapse with delayed
events (tests/conftest.py, ``delayed_homeserver``): the only bot SIGKILLed
before the instant and kept down, the homeserver sends each room its own pod's
and role's dispatches — never another pod's places — once."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bot_harness import bot_env, iso_z
from matrix_helpers import ClientPool, content_of
from test_failsafe_bot_live import AFTER_S, dispatches, pool, until_scheduled

from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver

__all__ = ["pool"]  # the fixture, imported for this module's tests

# Per room: (pod, the role it is listed with) and what the server must send it.
LAYOUT: dict[str, tuple[str, str | None]] = {
    "mk": ("mk", None), "medics": ("mk", "support"), "cw": ("cw", "front"), "tw": ("tw", None),
}
# Text only (no pins): the fixture's homeserver caps delayed events at 8 a user.
WANT = {
    "mk": [("gather@default", "text")],
    "medics": [("gather@support", "text"), ("spot", "text")],
    "cw": [("gather", "text"), ("spot", "text")],
    "tw": [("gather", "text")],
}

def pods_scenario(t0: datetime, rooms: dict[str, str], marks: dict[str, str]) -> dict[str, Any]:
    pods = []
    for i, pod in enumerate(("mk", "cw", "tw")):
        listed: list[Any] = []
        for name, (owner, role) in LAYOUT.items():
            if owner == pod:
                listed.append(rooms[name] if role is None else {"room": rooms[name], "role": role})
        places = {}
        for place in ("staging", "spot"):
            marks[f"{pod}.{place}"] = f"ZQ{pod}{place}{uuid.uuid4().hex[:8]}"
            places[place] = {"name": marks[f"{pod}.{place}"], "geo": f"22.{i}1,114.1{i}"}
        pods.append({"id": pod, "rooms": listed, "places": places})
    return {
        "version": 1, "id": "fsp", "title": "fsp", "start": iso_z(t0),
        "failsafe": {"server": True, "after": f"{AFTER_S:g}s"},
        "roles": [{"id": "front", "name": "Front"}, {"id": "support", "name": "Support"}],
        "cities": [{"id": "hk", "name": "Hong Kong", "timezone": "Asia/Hong_Kong",
                    "pods": pods}],
        "stages": [
            {"id": "gather", "at": "0s",
             "text": {"default": "Gather at {staging}", "support": "Set up by {staging}"}},
            {"id": "spot", "at": "+3s", "roles": ["front", "support"],
             "text": {"front": "Now {spot}", "support": "Edge of {spot}"}},
        ],
    }


async def test_the_server_sends_each_pod_room_only_its_own_when_the_bot_is_killed(
    delayed_homeserver: EmbeddedHomeserver, tmp_path: Path, pool: ClientPool
) -> None:
    hs = delayed_homeserver
    async with bot_env(hs, tmp_path, pool, "fspods") as env:
        env.spawn()
        await env.wait_joined(env.control_room, timeout=30)
        rooms = {}
        for name in LAYOUT:
            rooms[name] = await env.city_room(env.org, name=f"fsp {name}")
        marks: dict[str, str] = {}
        # Listed far ahead (so the invites are accepted), then armed near.
        env.write_scenario(pods_scenario(datetime.now(UTC) + timedelta(days=1), rooms, marks))
        for room in rooms.values():
            await env.opt_in(env.org, room)
        t0 = datetime.now(UTC) + timedelta(seconds=12)
        env.write_scenario(pods_scenario(t0, rooms, marks))
        reply = await env.command("!arm fsp", timeout=30)
        total = sum(len(w) for w in WANT.values())
        assert f"failsafe: {total} delayed events scheduled on the homeserver" in reply, reply
        await until_scheduled(env, total)
        assert datetime.now(UTC) < t0 - timedelta(seconds=1), "too slow to kill before the instant"
        env.kill()
        deadline = time.monotonic() + (t0 - datetime.now(UTC)).total_seconds() + AFTER_S + 20
        for name, room in rooms.items():
            while True:
                got = await dispatches(env.org, room)
                if len(got) >= len(WANT[name]) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            assert [(s, p) for s, p, _ in got] == WANT[name], (name, got)
            pod = LAYOUT[name][0]
            seen = {key.split(".")[0] for key, m in marks.items()
                    for _, _, e in got if m in str(content_of(e))}
            assert seen == {pod}, (name, seen)
            texts = " ".join(str(content_of(e).get("body")) for _, _, e in got)
            if name == "medics":
                assert "Set up by" in texts and "Edge of" in texts
            if name == "cw":
                assert re.search(r"Now ZQcwspot", texts), texts
        await asyncio.sleep(1.5)  # once: nothing more arrives
        for name, room in rooms.items():
            assert len(await dispatches(env.org, room)) == len(WANT[name]), name
