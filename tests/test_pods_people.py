"""The participant side of pods and roles, against the real store and fake Matrix
(no homeserver; milliseconds): ``!join`` assigns a pod, ``!role`` lists / sets /
clears / refuses, check-ins record their pod and role, ``!headcount`` splits by
pod and role. tests/test_pods_people_live.py shows the same on Synapse."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest_asyncio

from bot.clock import ManualClock
from bot.control.participants import Participants
from bot.i18n import Catalogs
from bot.i18n import messages as m
from bot.scenario import Scenario, load_scenario_text
from bot.store import Store

CATALOGS = Catalogs()
EN = CATALOGS.translator(None)
PODS = ("mongkok", "causeway", "shatin", "tsuenwan")
SCENARIO_TEXT = """\
version: 1
id: pods
title: pods
start: 2026-12-05T17:30:00Z
roles:
  - {id: front, name: In the action, about: At the spot itself.}
  - {id: support, name: Nearby support}
cities:
  - id: hk
    name: Hong Kong
    timezone: Asia/Hong_Kong
    direct: true
    places: {home: {name: home}}
    pods:
      - {id: mongkok, capacity: 10, rooms: ["!mk:x", {room: "!mk-med:x", role: support}],
         places: {staging: {name: a}}}
      - {id: causeway, capacity: 10, places: {staging: {name: b}}}
      - {id: shatin, capacity: 10, places: {staging: {name: c}}}
      - {id: tsuenwan, capacity: 10, places: {staging: {name: d}}}
  - {id: lon, name: London, timezone: Europe/London, rooms: ["!lon:x"], direct: true,
     places: {staging: {name: e}}}
stages:
  - {id: call, at: -1d, text: "{city}"}
  - id: gather
    at: -30m
    place: staging
    text: {default: "go {staging}", support: "near {staging}"}
  - {id: spot, at: 0m, roles: [front, support], text: "now"}
"""
SCENARIO = load_scenario_text(SCENARIO_TEXT)
NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


class FakeMatrix:
    user_id = "@bot:x"

    async def members(self, room_id: str) -> list[str] | None:
        count = 2 if room_id.startswith("!dm") else 3
        return [f"@u{i}:x" for i in range(count)]

    async def react(self, room_id: str, event_id: str, key: str) -> str | None:
        return "$reaction"

    async def leave(self, room_id: str, *, forget: bool = False) -> bool:
        return True


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, room_id: str, content: dict[str, Any], **_: Any) -> str:
        self.sent.append((room_id, content))
        return "$sent"


class FakeRuns:
    """No run armed, or one (``arm``): what Participants reads of the run manager."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.armed: dict[int, Any] = {}

    def arm(self, run_id: int) -> None:
        run = SimpleNamespace(
            run=SimpleNamespace(id=run_id),
            scenario=self.scenario,
            scenario_id=self.scenario.id,
            drill_room=None,
        )
        self.armed = {run_id: run}

    async def runs_of_room(self, room_id: str) -> list[tuple[Any, str]]:
        out = []
        for run in self.armed.values():
            for c in run.scenario.cities:
                rooms = {*c.rooms, *(r for p in c.all_pods for r in p.rooms)}
                if room_id in rooms:
                    out.append((run, c.id))
        return out


class Kit:
    def __init__(self, store: Store, scenario: Scenario = SCENARIO) -> None:
        self.store = store
        self.notifier = FakeNotifier()
        self.runs = FakeRuns(scenario)
        library = SimpleNamespace(all_valid=lambda: [SimpleNamespace(scenario=scenario)])
        dispatcher = SimpleNamespace(remember_room=lambda r: None, forget_room=lambda r: None)
        self.p = Participants(
            matrix=FakeMatrix(),  # type: ignore[arg-type]
            store=store,
            runs=self.runs,  # type: ignore[arg-type]
            library=library,  # type: ignore[arg-type]
            dispatcher=dispatcher,  # type: ignore[arg-type]
            notifier=self.notifier,  # type: ignore[arg-type]
            clock=ManualClock(NOW),
            catalogs=CATALOGS,
        )

    async def say(self, user: str, text: str, room: str | None = None) -> str:
        """``user`` says ``text`` in their direct chat (or ``room``); the reply's body."""
        room = room or f"!dm-{user.strip('@:x')}:x"
        before = len(self.notifier.sent)
        await self.p.on_message(room, "$ev", user, text)
        assert len(self.notifier.sent) == before + 1, f"no reply to {text!r}"
        return str(self.notifier.sent[-1][1]["body"])

    async def pod_of(self, user: str, city: str = "hk") -> str | None:
        member = await self.store.participants.direct_member("pods", city, user)
        return None if member is None else member.pod_id


@pytest_asyncio.fixture
async def kit(tmp_path: Path) -> AsyncIterator[Kit]:
    store = await Store.open(tmp_path / "blossom.db")
    try:
        yield Kit(store)
    finally:
        await store.close()


FULL = m.city_full(EN, city_name="Hong Kong").body
JOINED = m.joined(EN, city_name="Hong Kong", pod=True).body


# -- !join assigns a pod -----------------------------------------------------------------


async def test_forty_join_balanced_over_four_pods_then_the_city_is_full(kit: Kit) -> None:
    for n in range(40):
        assert await kit.say(f"@u{n}:x", "!join pods hk") == JOINED
        sizes = Counter(await kit.store.participants.pod_sizes("pods", "hk"))
        assert max(sizes.values()) - min(sizes[p] for p in PODS) <= 1, sizes
    assert await kit.store.participants.pod_sizes("pods", "hk") == dict.fromkeys(PODS, 10)
    assert await kit.say("@late:x", "!join pods hk") == FULL
    assert await kit.store.participants.direct_member("pods", "hk", "@late:x") is None
    # Someone already in is not refused: joining again keeps their pod.
    pod = await kit.pod_of("@u7:x")
    assert await kit.say("@u7:x", "!join pods hk") == JOINED
    assert await kit.pod_of("@u7:x") == pod
    assert len(await kit.store.participants.direct_members("pods", "hk")) == 40


async def test_stop_then_join_lands_in_the_same_pod(kit: Kit) -> None:
    for n in range(13):
        await kit.say(f"@u{n}:x", "!join pods hk")
    for n in (0, 5, 12):
        pod = await kit.pod_of(f"@u{n}:x")
        assert pod in PODS
        assert await kit.say(f"@u{n}:x", "!stop") == m.stopped(EN).body
        assert await kit.pod_of(f"@u{n}:x") is None  # forgotten: no list of who left
        assert await kit.say(f"@u{n}:x", "!join pods hk") == JOINED
        assert await kit.pod_of(f"@u{n}:x") == pod


async def test_the_key_is_kept_per_scenario_so_a_restart_assigns_alike(
    kit: Kit, tmp_path: Path
) -> None:
    await kit.say("@a:x", "!join pods hk")
    key = await kit.store.participants.pod_key("pods", b"x" * 32, now=NOW)
    assert key != b"x" * 32  # made at the first join, not replaced later
    again = Kit(kit.store)  # a restarted bot on the same store
    await again.say("@b:x", "!join pods hk")
    assert await kit.store.participants.pod_key("pods", b"y" * 32, now=NOW) == key


async def test_a_city_without_pods_joins_as_before(kit: Kit) -> None:
    body = await kit.say("@a:x", "!join pods lon")
    assert body == m.joined(EN, city_name="London").body
    assert await kit.pod_of("@a:x", "lon") is None
    assert await kit.store.participants.pod_key("pods", b"z" * 32, now=NOW) == b"z" * 32
