"""Per-pod and per-role gates and role texts to private participants on a real
homeserver (issue 14): check-ins with ``!here`` in pod rooms (each counted for
its room's pod and role), private participants choosing a role with ``!role``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from matrix_helpers import (
    ClientPool,
    collect_messages,
    join,
    send_text,
    sync_until,
)
from nio import AsyncClient, RoomCreateResponse
from test_pods_live import bot_events, units

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver

# Check-ins counted for their room's pod and role, and !role, are the participant
# side (bot/control/roles.py and its check-ins); these tests wait for it to be on
# the branch (they passed on this branch merged with it).
pytest.importorskip("bot.control.roles", reason="the participant side (!role) is not here yet")


def gated(sid: str, rooms: dict[str, Any], start: datetime, gate: dict[str, Any] | None,
          *, direct: bool = False) -> dict[str, Any]:
    return {
        "version": 1, "id": sid, "title": sid, "start": iso_z(start),
        "roles": [{"id": "front", "name": "Front"}, {"id": "support", "name": "Support"}],
        "cities": [{
            "id": "hk", "name": "Hong Kong", "timezone": "Asia/Hong_Kong", "direct": direct,
            "pods": [{"id": p, "rooms": [r],
                      "places": {"spot": {"name": f"Spot {p}", "geo": "22.3,114.1"}}}
                     for p, r in rooms.items()],
        }],
        "stages": [
            {"id": "call", "at": "0s", "text": "Check in with !here"},
            {"id": "go", "at": "+6s", "place": "spot", **({"require": gate} if gate else {}),
             "text": {"default": "Go to {spot}", "front": "FRONT go to {spot}",
                      "support": "SUPPORT near {spot}"}},
        ],
    }


async def people_in(env: BotEnv, clients: ClientPool, hs: EmbeddedHomeserver, mod: AsyncClient,
                    room: str, n: int, tag: str) -> list[AsyncClient]:
    out = []
    for i in range(n):
        p = await clients.participant(await hs.register(f"{tag}{i}-{env.dir.name[-6:]}"))
        await mod.room_invite(room, p.user_id)
        await join(p, room)
        out.append(p)
    return out


async def say_and_wait(env: BotEnv, person: AsyncClient, room: str, said: str) -> None:
    """Send ``said`` and wait for the bot's answer."""
    await send_text(person, room, said)

    def answered(ms: list[Any]) -> bool:
        return any(m.sender == env.bot_user.user_id for m in ms)

    await collect_messages(person, room, until=answered, timeout=20)


async def test_gate_per_pod_holds_the_pod_below_quorum_only(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "podgate") as env:
        mod = await clients.participant(await homeserver.register(f"mod-pg-{tmp_path.name[-6:]}"))
        rooms = {p: await env.city_room(mod, name=f"pg {p}") for p in ("mk", "cw")}
        gate = {"checkins": 2, "per": "pod", "else": "hold"}
        env.write_scenario(gated("pg", rooms, seconds_ahead(3600), gate))
        await env.start()
        for room in rooms.values():
            await env.opt_in(mod, room)
        mk = await people_in(env, clients, homeserver, mod, rooms["mk"], 2, "pgm")
        cw = await people_in(env, clients, homeserver, mod, rooms["cw"], 1, "pgc")
        env.write_scenario(gated("pg", rooms, seconds_ahead(4), gate))
        assert "Armed pg" in await env.command("!arm pg")
        await env.control_notices("stage call delivered", timeout=30)
        for p in mk:
            await send_text(p, rooms["mk"], "!here")
        await send_text(cw[0], rooms["cw"], "!here")
        notices = await env.control_notices(["held in hk/cw", "stage go delivered"], timeout=40)
        assert any("stage go delivered to 1 of 1 rooms (hk/mk 1/1)" in n for n in notices), notices
        assert any("held in hk/cw" in n and "1/2" in n for n in notices), notices
        assert units(await bot_events(mod, rooms["cw"])) == ["call"]


async def test_gate_per_role_counts_only_that_roles_check_ins(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "rolegate") as env:
        mod = await clients.participant(await homeserver.register(f"mod-rg-{tmp_path.name[-6:]}"))
        front = await env.city_room(mod, name="rg front")
        support = await env.city_room(mod, name="rg support")

        def data(start: datetime) -> dict[str, Any]:
            d = gated("rg", {"mk": front, "cw": support}, start,
                      {"checkins": 2, "role": "front", "else": "skip"})
            d["cities"][0]["pods"][0]["rooms"] = [{"room": front, "role": "front"}]
            d["cities"][0]["pods"][1]["rooms"] = [{"room": support, "role": "support"}]
            return d

        env.write_scenario(data(seconds_ahead(3600)))
        await env.start()
        await env.opt_in(mod, front)
        await env.opt_in(mod, support)
        f = await people_in(env, clients, homeserver, mod, front, 1, "rgf")
        s = await people_in(env, clients, homeserver, mod, support, 2, "rgs")
        env.write_scenario(data(seconds_ahead(4)))
        assert "Armed rg" in await env.command("!arm rg")
        await env.control_notices("stage call delivered", timeout=30)
        await send_text(f[0], front, "!here")
        for p in s:
            await send_text(p, support, "!here")
        # Three check-ins, but one of them front: the gate (front, 2) is not met.
        notices = await env.control_notices(["skipped in hk/mk", "skipped in hk/cw"], timeout=40)
        assert any("1/2" in n for n in notices if "skipped in hk/mk" in n), notices
        assert units(await bot_events(mod, front)) == ["call"]


async def test_role_texts_reach_private_participants(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "rolepriv") as env:
        mod = await clients.participant(await homeserver.register(f"mod-rp-{tmp_path.name[-6:]}"))
        room = await env.city_room(mod, name="rp mk")

        def data(start: datetime) -> dict[str, Any]:
            return gated("rp", {"mk": room}, start, None, direct=True)

        env.write_scenario(data(seconds_ahead(3600)))
        await env.start()
        await env.opt_in(mod, room)
        dms: dict[str | None, tuple[AsyncClient, str]] = {}
        for role in ("front", "support", None):
            person = await clients.participant(
                await homeserver.register(f"rp{role}-{tmp_path.name[-6:]}"))
            resp = await person.room_create(is_direct=True, invite=[env.bot_user.user_id])
            assert isinstance(resp, RoomCreateResponse), resp
            await env.wait_joined(resp.room_id, by=person)
            await sync_until(person, lambda p=person, r=resp.room_id: r in p.rooms)
            for said in ["!join rp hk", *([f"!role {role}"] if role else [])]:
                await say_and_wait(env, person, resp.room_id, said)
            dms[role] = (person, resp.room_id)
        env.write_scenario(data(seconds_ahead(4)))
        assert "Armed rp" in await env.command("!arm rp")
        await env.control_notices(["stage go@front", "stage go@support", "stage go@default"],
                                  timeout=40)
        for role, (person, dm) in dms.items():
            events = await bot_events(person, dm)
            body = next(e["body"] for e in events if e[DISPATCH_KEY]["stage"].startswith("go"))
            want = {"front": "FRONT go to", "support": "SUPPORT near", None: "Go to"}[role]
            assert want in body, (role, body)
