"""Arming as organisers meet it, on a real Synapse (issue 17 defects 3, 5, 6;
issue 11 defect 4): re-arming sends no past stage again, `!arm … at` runs a
scenario again at a new time, late stages after downtime arrive in order, a
room listed twice is refused, and a warning is shown before anything is
scheduled."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from bot_harness import bot_env, iso_z, seconds_ahead
from matrix_helpers import ClientPool, content_of, create_room, room_messages, with_content_key
from test_faults_live import dispatch_tags, query, scenario, sleep_until

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver


async def wait_tags(env, room: str, n: int, timeout: float = 30) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        tags = await dispatch_tags(env.org, room)
        if len(tags) >= n or asyncio.get_running_loop().time() > deadline:
            return tags
        await asyncio.sleep(0.3)


async def test_rearm_does_not_resend_past_stages(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """After a run completes, `!arm` again sends nothing (and says how to run it
    again); `!disarm` + `!arm` mid-run does not send the first stage again."""
    async with bot_env(homeserver, tmp_path, clients, "rearm") as env:
        room = await create_room(env.org, name="rearm city")
        env.write_scenario(
            scenario("re", [room], seconds_ahead(600), [{"id": "a", "at": "0s", "text": "x"}])
        )
        await env.start()
        await env.opt_in(env.org, room)
        start = seconds_ahead(4)
        stages = [
            {"id": "one", "at": "0s", "text": "first"},
            {"id": "two", "at": "+2s", "text": "second"},
        ]
        env.write_scenario(scenario("re", [room], start, stages, place=False))
        assert "Armed re" in await env.command("!arm re")
        await env.control_notices("is complete", timeout=30)
        assert await dispatch_tags(env.org, room) == [("one", "text"), ("two", "text")]

        reply = await env.command("!arm re")
        assert "every stage of re is past" in reply and "!arm re at" in reply, reply
        await asyncio.sleep(1.5)
        assert await dispatch_tags(env.org, room) == [("one", "text"), ("two", "text")]

        # Mid-run: the first stage is out, the second not yet.
        start = seconds_ahead(3)
        stages = [
            {"id": "first", "at": "0s", "text": "first"},
            {"id": "later", "at": "+8s", "text": "later"},
        ]
        env.write_scenario(scenario("mid", [room], start, stages))
        assert "Armed mid" in await env.command("!arm mid")
        await sleep_until(start + timedelta(seconds=1))
        await wait_tags(env, room, 3)
        assert "Disarmed mid" in await env.command("!disarm mid")
        reply = await env.command("!arm mid")
        assert "Armed mid" in reply and "1 past dispatches already went out" in reply, reply
        await env.control_notices("stage later delivered", timeout=30)
        assert [s for s, _ in await dispatch_tags(env.org, room)] == [
            "one",
            "two",
            "first",
            "later",
        ]


async def test_arm_at_a_new_instant_and_confirm_before_anything_is_scheduled(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(
        homeserver,
        tmp_path,
        clients,
        "armat",
        dispatch={"expected_msgs_per_second": 0.2, "rate_burst": 0},
    ) as env:
        rooms = [await create_room(env.org, name=f"armat {i}") for i in range(2)]
        stages = [
            {"id": "a", "at": "0s", "text": "A"},
            {"id": "b", "at": "+3s", "text": "B"},
        ]
        env.write_scenario(scenario("at", rooms, seconds_ahead(-3600), stages))
        await env.start()
        for r in rooms:
            await env.opt_in(env.org, r)
        reply = await env.command("!arm at at 2001-01-01T00:00Z")
        assert "in the past" in reply and "nothing was armed" in reply, reply
        new = seconds_ahead(5)
        reply = await env.command(f"!arm at at {iso_z(new)}")
        # The pre-flight warning comes first; nothing is scheduled until confirm.
        assert "Not armed yet" in reply and "Pre-flight" in reply, reply
        assert f"!arm at at {iso_z(new)} confirm" in reply, reply
        assert query(env, "SELECT COUNT(*) FROM runs") == [(0,)]
        assert "Nothing is armed" in await env.command("!status")
        reply = await env.command(f"!arm at at {iso_z(new)} confirm")
        assert "Armed at" in reply, reply
        await env.control_notices("stage b delivered", timeout=40)
        for r in rooms:
            assert await dispatch_tags(env.org, r) == [("a", "text"), ("b", "text")]
        # Every event carries the run: the event id of the !arm that armed it.
        (key,) = query(env, "SELECT run_key FROM runs")[0]
        assert key.startswith("$")
        events = with_content_key(await room_messages(env.org, rooms[0]), DISPATCH_KEY)
        assert {content_of(e)[DISPATCH_KEY]["run"] for e in events} == {key}


async def test_room_listed_by_id_and_by_alias_in_two_cities_is_refused(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "dup") as env:
        alias_local = f"dup-{tmp_path.name[-10:]}".lower().replace("_", "-")
        resp = await env.org.room_create(name="dup city", alias=alias_local)
        room = str(resp.room_id)  # type: ignore[union-attr]
        alias = f"#{alias_local}:{env.organiser.user_id.split(':', 1)[1]}"
        data = scenario("dup", [room], seconds_ahead(600), [{"id": "go", "at": "0s", "text": "x"}])
        data["cities"].append(
            {**data["cities"][0], "id": "other", "name": "Other", "rooms": [alias]}
        )
        env.write_scenario(data)
        await env.start()
        await env.opt_in(env.org, room)
        reply = await env.command("!arm dup")
        assert room in reply and "town" in reply and "other" in reply and alias in reply, reply
        assert "twice" in reply and "Nothing was armed" in reply, reply
        assert query(env, "SELECT COUNT(*) FROM runs") == [(0,)]
        # A refusal is no question: there is nothing to confirm.
        reply = await env.command("!arm dup confirm")
        assert "nothing to confirm" in reply, reply
        assert query(env, "SELECT COUNT(*) FROM runs") == [(0,)]


async def aliased_room(env, name: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A room with a published alias: (room id, alias)."""
    local = f"{name}-{uuid.uuid4().hex[:8]}"
    resp = await env.org.room_create(name=name, alias=local)
    return str(resp.room_id), f"#{local}:{env.organiser.user_id.split(':', 1)[1]}"


async def test_late_stages_after_downtime_arrive_in_order(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """Six stages 2 s apart; the bot is SIGKILLed before the first and started
    after the last. On restart each room gets them in their order. The rooms are
    listed by alias, as real scenarios do: each stage's release resolved them
    over the network, and whichever answer came first used to go first."""
    async with bot_env(homeserver, tmp_path, clients, "order") as env:
        listed = [await aliased_room(env, f"order{i}") for i in range(2)]
        aliases = [alias for _, alias in listed]
        stages = [{"id": f"s{i}", "at": f"+{2 * i}s", "text": f"stage {i}"} for i in range(6)]
        env.write_scenario(scenario("order", aliases, seconds_ahead(600), stages))
        env.spawn()
        await env.wait_joined(env.control_room)
        for room, _ in listed:
            await env.opt_in(env.org, room)
        start = seconds_ahead(4)
        env.write_scenario(scenario("order", aliases, start, stages))
        assert "Armed order" in await env.command("!arm order")
        env.kill()  # SIGKILL, before the first instant
        await sleep_until(start + timedelta(seconds=11))
        env.spawn()
        await env.control_notices("is complete", timeout=60)
        for room, _ in listed:
            assert await dispatch_tags(env.org, room) == [(f"s{i}", "text") for i in range(6)]
        assert env.terminate() == 0


async def test_release_of_a_held_stage_reports_the_real_reason(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """A stage held past its instant and then released by hand is late because
    of the hold, not because the bot or the homeserver was unavailable."""
    async with bot_env(homeserver, tmp_path, clients, "why") as env:
        room = await create_room(env.org, name="why city")
        stages = [
            {"id": "go", "at": "0s", "text": "go"},
            {"id": "end", "at": "+10m", "text": "end"},
        ]
        env.write_scenario(scenario("why", [room], seconds_ahead(600), stages))
        await env.start()
        await env.opt_in(env.org, room)
        start = seconds_ahead(3)
        env.write_scenario(scenario("why", [room], start, stages))
        assert "Armed why" in await env.command("!arm why")
        assert "Holding why" in await env.command("!hold why town")
        await env.control_notices("stage go held in town", timeout=20)
        await sleep_until(start + timedelta(seconds=6))
        assert "Releasing why stage go" in await env.command("!release why go town")
        notices = await env.control_notices("stage go delivered", timeout=20)
        report = next(n for n in notices if "stage go delivered" in n)
        assert "Released late" in report and "until !release" in report, report
        assert "unavailable" not in report, report
        assert await dispatch_tags(env.org, room) == [("go", "text")]
