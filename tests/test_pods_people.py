"""The participant side of pods and roles, against the real store and fake Matrix
(no homeserver; milliseconds): ``!join`` assigns a pod, ``!role`` lists / sets /
clears / refuses, check-ins record their pod and role, ``!headcount`` splits by
pod and role. tests/test_pods_people_live.py shows the same on Synapse."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from bot.clock import ManualClock
from bot.control.catalog import PARTICIPANT_COMMANDS
from bot.control.participants import Participants, help_reply
from bot.i18n import Catalogs
from bot.i18n import messages as m
from bot.ledger import DeliveryKey, DeliveryState, DispatchState, Part
from bot.scenario import Scenario, ScenarioError, load_scenario_text
from bot.scenario.timeline import build_timeline
from bot.store import PlannedDispatch, Store

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

    def __init__(self, scenario: Scenario, store: Store) -> None:
        self.scenario = scenario
        self.store = store
        self.armed: dict[int, Any] = {}
        self.extra_rooms: dict[str, set[str]] = {}  # city → rooms it serves by alias

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
                rooms |= set(await self.store.participants.direct_rooms(run.scenario_id, c.id))
                rooms |= self.extra_rooms.get(c.id, set())
                if room_id in rooms:
                    out.append((run, c.id))
        return out


class Kit:
    def __init__(self, store: Store, scenario: Scenario = SCENARIO, rooms: Any = None) -> None:
        self.store = store
        self.notifier = FakeNotifier()
        self.runs = FakeRuns(scenario, store)
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
            rooms=rooms,
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


# -- !role -------------------------------------------------------------------------------


async def arm(kit: Kit) -> int:
    """A live run of the scenario, every stage scheduled."""
    scenario = kit.runs.scenario
    run_id = await kit.store.runs.create(
        scenario_id="pods",
        source_path="pods.yaml",
        source_sha256="0" * 64,
        armed_by="@org:x",
        control_room="!control:x",
        now=NOW,
        # The rows as the run manager plans them: one per lane and unit
        # (hk/mongkok, gather@support: bot.scenario.timeline).
        dispatches=[
            PlannedDispatch(d.lane, d.unit, d.stage_index, d.at)
            for d in build_timeline(scenario)
        ],
    )
    kit.runs.arm(run_id)
    return run_id


async def release(kit: Kit, run_id: int, lane: str, stage_id: str) -> None:
    """Release every unit of ``stage_id`` in ``lane`` (a city: all its pods)."""
    for d in await kit.store.ledger.dispatches(run_id):
        if lane in (d.city_id, d.city_id.split("/")[0]) and d.stage_id.split("@")[0] == stage_id:
            for state in (DispatchState.RELEASING, DispatchState.RELEASED):
                await kit.store.ledger.set_dispatch_state(run_id, d.city_id, d.stage_id, state)


ROLES = [
    m.RoleLine("front", "In the action", "At the spot itself."),
    m.RoleLine("support", "Nearby support"),
]


async def role_of(kit: Kit, user: str, city: str = "hk") -> str | None:
    member = await kit.store.participants.direct_member("pods", city, user)
    assert member is not None
    return member.role_id


async def test_role_lists_sets_clears_and_refuses_unknown_ids(kit: Kit) -> None:
    assert await kit.say("@a:x", "!role") == m.role_needs_join(EN).body
    await kit.say("@a:x", "!join pods hk")
    assert await kit.say("@a:x", "!role") == m.role_list(EN, roles=ROLES).body
    assert "!role [role]" in await kit.say("@a:x", "!help")
    # An id as the list shows it (lowercase, like every id the parser takes).
    assert await kit.say("@a:x", "!role Support") == (
        "role must be an id (lowercase letters, digits and inner hyphens). Usage: !role [role]"
    )
    assert await role_of(kit, "@a:x") is None
    chosen = m.role_chosen(EN, role_name="Nearby support").body
    assert await kit.say("@a:x", "!role support") == chosen
    assert await role_of(kit, "@a:x") == "support"
    listed = await kit.say("@a:x", "!role")
    assert listed == m.role_list(EN, roles=ROLES, current="Nearby support").body
    assert "Your role now: Nearby support." in listed and "!role none" in listed
    unknown = await kit.say("@a:x", "!role medic")
    assert unknown == m.role_unknown(EN, role_id="medic", ids=("front", "support")).body
    assert "front, support" in unknown
    assert await role_of(kit, "@a:x") == "support"  # a bad id changes nothing
    assert await kit.say("@a:x", "!role none") == m.role_cleared(EN).body
    assert await role_of(kit, "@a:x") is None
    # Someone else's role is their own: one person's !role never touches another's.
    await kit.say("@b:x", "!join pods hk")
    await kit.say("@b:x", "!role front")
    assert (await role_of(kit, "@a:x"), await role_of(kit, "@b:x")) == (None, "front")


async def test_role_changes_until_the_stage_that_needs_it_then_refuses(kit: Kit) -> None:
    await kit.say("@a:x", "!join pods hk")
    await kit.say("@l:x", "!join pods lon")
    run_id = await arm(kit)
    await release(kit, run_id, "hk", "call")  # the same text for everyone: no lock
    assert await kit.say("@a:x", "!role front") == m.role_chosen(EN, role_name="In the action").body
    await release(kit, run_id, "hk", "gather")  # its text has a support entry
    assert await kit.say("@a:x", "!role support") == m.role_locked(EN).body
    assert "!stop always works" in m.role_locked(EN).body
    assert await kit.say("@a:x", "!role none") == m.role_locked(EN).body
    assert await role_of(kit, "@a:x") == "front"
    locked_list = m.role_list(EN, roles=ROLES, current="In the action", locked=True).body
    assert await kit.say("@a:x", "!role") == locked_list
    assert "change your mind" not in locked_list and "!stop always works" in locked_list
    # Another city's stage went out, not London's: London may still change.
    assert await kit.say("@l:x", "!role support") == m.role_chosen(
        EN, role_name="Nearby support"
    ).body
    # !stop always works.
    assert await kit.say("@a:x", "!stop") == m.stopped(EN).body


async def test_a_drill_never_locks_a_role(kit: Kit) -> None:
    await kit.say("@a:x", "!join pods hk")
    run_id = await arm(kit)
    kit.runs.armed[run_id].drill_room = "!drill:x"  # a drill sends nothing to private chats
    await release(kit, run_id, "hk", "gather")
    assert await kit.say("@a:x", "!role front") == m.role_chosen(EN, role_name="In the action").body


async def test_an_action_without_roles_says_so_and_help_reads_as_before(tmp_path: Path) -> None:
    plain = load_scenario_text(
        SCENARIO_TEXT.split("roles:")[0]
        + "cities:\n  - {id: lon, name: London, timezone: Europe/London, rooms: ['!lon:x'],"
        " direct: true}\nstages:\n  - {id: call, at: 0m, text: hi}\n"
    )
    store = await Store.open(tmp_path / "plain.db")
    try:
        kit = Kit(store, plain)
        assert await kit.say("@a:x", "!help") == help_reply(EN, PARTICIPANT_COMMANDS).body
        await kit.say("@a:x", "!join pods lon")
        assert await kit.say("@a:x", "!role front") == m.no_roles(EN).body
        assert await kit.say("@a:x", "!help") == help_reply(EN, PARTICIPANT_COMMANDS).body
        assert "!role" not in help_reply(EN, PARTICIPANT_COMMANDS).body
    finally:
        await store.close()


async def test_role_in_a_room_is_not_answered(kit: Kit) -> None:
    before = len(kit.notifier.sent)
    await kit.p.on_message("!mk:x", "$ev", "@a:x", "!role front")
    assert len(kit.notifier.sent) == before


def test_no_scenario_may_name_a_role_none() -> None:
    with pytest.raises(ScenarioError, match="'none' is reserved"):
        load_scenario_text(SCENARIO_TEXT.replace("id: support", "id: none"))


# -- check-ins count for a pod and a role ----------------------------------------------


async def lanes_of_checkins(kit: Kit, run_id: int) -> dict[str, tuple[str, str | None, str | None]]:
    rows = await kit.store.db.fetch(
        "SELECT user_id, stage_id, pod_id, role_id FROM checkins WHERE run_id = ?", (run_id,)
    )
    return {r["user_id"]: (r["stage_id"], r["pod_id"], r["role_id"]) for r in rows}


async def test_a_checkin_records_the_rooms_or_the_persons_pod_and_role(kit: Kit) -> None:
    for n in range(4):
        await kit.say(f"@p{n}:x", "!join pods hk")
    await kit.say("@p0:x", "!role support")
    run_id = await arm(kit)
    await release(kit, run_id, "hk", "call")
    await kit.p.on_message("!mk:x", "$1", "@room:x", "!here")
    await kit.p.on_message("!mk-med:x", "$2", "@medic:x", "!here")
    for n in range(4):
        await kit.p.on_message(f"!dm-p{n}:x", f"$p{n}", f"@p{n}:x", "!here")
    got = await lanes_of_checkins(kit, run_id)
    assert got["@room:x"] == ("call", "mongkok", None)
    assert got["@medic:x"] == ("call", "mongkok", "support")
    pods = {n: await kit.pod_of(f"@p{n}:x") for n in range(4)}
    assert sorted(pods.values()) == sorted(PODS)
    assert got["@p0:x"] == ("call", pods[0], "support")
    assert all(got[f"@p{n}:x"] == ("call", pods[n], None) for n in (1, 2, 3))
    # A pod held back at a stage counts its check-ins for that pod's own latest stage.
    await release(kit, run_id, "hk/causeway", "gather")
    await kit.p.on_message("!mk:x", "$3", "@late:x", "!here")
    assert (await lanes_of_checkins(kit, run_id))["@late:x"] == ("call", "mongkok", None)
    causeway = next(n for n, pod in pods.items() if pod == "causeway")
    await kit.p.on_message(f"!dm-p{causeway}:x", "$4", f"@p{causeway}:x", "!here")
    rows = await kit.store.participants.checkin_counts_by_lane(run_id)
    assert rows[("hk", "gather")] == {("causeway", "support" if causeway == 0 else None): 1}


async def test_a_city_without_pods_or_roles_checks_in_as_before(tmp_path: Path) -> None:
    plain = load_scenario_text(
        SCENARIO_TEXT.split("roles:")[0]
        + "cities:\n  - {id: lon, name: London, timezone: Europe/London, rooms: ['!lon:x'],"
        " direct: true}\nstages:\n  - {id: call, at: 0m, text: hi}\n"
    )
    store = await Store.open(tmp_path / "plain.db")
    try:
        kit = Kit(store, plain)
        run_id = await kit.store.runs.create(
            scenario_id="pods", source_path="p.yaml", source_sha256="0" * 64, armed_by="@o:x",
            control_room="!c:x", now=NOW, dispatches=[PlannedDispatch("lon", "call", 0, NOW)],
        )
        kit.runs.arm(run_id)
        await kit.p.on_message("!lon:x", "$1", "@a:x", "!here")
        assert await lanes_of_checkins(kit, run_id) == {"@a:x": ("", None, None)}
    finally:
        await store.close()


# -- !headcount per pod and role ---------------------------------------------------------


def test_headcount_splits_by_pod_and_role_with_ids_and_counts_only() -> None:
    from bot.control.status import ScenarioShape, split_tables

    by_lane = {
        ("hk", "call"): {("mongkok", None): 2, ("mongkok", "support"): 1, ("shatin", "front"): 4},
        ("lon", "call"): {(None, None): 3},
    }
    pods, roles = split_tables(SCENARIO, by_lane)
    assert pods.splitlines() == [
        "pod          stage  check-ins",
        "hk/mongkok   call   3",
        "hk/causeway  call   0",
        "hk/shatin    call   4",
        "hk/tsuenwan  call   0",
    ]
    assert roles.splitlines() == [
        "city  stage  role       check-ins",
        "hk    call   front      4",
        "hk    call   support    1",
        "hk    call   (no role)  2",
        "lon   call   front      0",
        "lon   call   support    0",
        "lon   call   (no role)  3",
    ]
    for place in ("Sai Yeung", "staging", "home", " a\n", " b\n"):
        assert place not in pods + roles
    # After the run, without the file: what was counted, no zeros for the unknown.
    pods, roles = split_tables(ScenarioShape(), by_lane)
    assert pods.splitlines()[1:] == ["hk/mongkok  call   3", "hk/shatin   call   4"]
    assert "front      4" in roles


def test_headcount_of_one_pod_shows_that_pod_only() -> None:
    from bot.control.status import split_tables

    by_lane = {("hk", "call"): {("mongkok", None): 2, ("shatin", "front"): 4}}
    pods, roles = split_tables(SCENARIO, {("hk", "call"): {("shatin", "front"): 4}}, "shatin")
    assert pods.splitlines()[1:] == ["hk/shatin  call   4"]
    assert "front    4" in roles and "(no role)" not in roles
    assert "mongkok" not in split_tables(SCENARIO, by_lane, "shatin")[0]


async def sent(kit: Kit, run_id: int, lane: str, unit: str, room: str, event_id: str) -> None:
    """A stage message of ``lane``/``unit`` in ``room``, as the dispatcher records it."""
    key = DeliveryKey(run_id, "pods", lane, unit, room, Part.TEXT)
    await kit.store.ledger.ensure_deliveries([key], NOW, NOW)
    await kit.store.ledger.transition(key, DeliveryState.SENDING, now=NOW)
    await kit.store.ledger.transition(key, DeliveryState.SENT, now=NOW, event_id=event_id)


async def test_a_reaction_counts_for_the_city_stage_pod_and_role_of_the_message(kit: Kit) -> None:
    await kit.say("@p:x", "!join pods hk")
    await kit.say("@p:x", "!role support")
    pod = await kit.pod_of("@p:x")
    run_id = await arm(kit)
    await release(kit, run_id, "hk", "gather")
    await sent(kit, run_id, "hk/mongkok", "gather@support", "!mk-med:x", "$med")
    await sent(kit, run_id, f"hk/{pod}", "gather@support", "!dm-p:x", "$dm")
    await kit.p.on_reaction("!mk-med:x", "@medic:x", "$med")
    await kit.p.on_reaction("!dm-p:x", "@p:x", "$dm")
    got = await lanes_of_checkins(kit, run_id)
    # The scenario's city and stage, never the ledger's lane or unit.
    assert got == {"@medic:x": ("gather", "mongkok", "support"), "@p:x": ("gather", pod, "support")}
    rows = await kit.store.db.fetch("SELECT DISTINCT city_id FROM checkins")
    assert [r["city_id"] for r in rows] == ["hk"]
    assert kit.notifier.sent[-1][1]["body"] == m.checked_in(EN, counted=True).body


class FakeRegistry:
    """The room registry's view: ``#mk:x`` resolves to ``!real-mk:x``."""

    async def served_rooms(self, listed: list[str], *, refresh: bool = False) -> list[str]:
        return ["!real-mk:x" if r == "#mk:x" else r for r in listed]


async def test_a_pod_room_listed_by_alias_counts_for_its_pod(tmp_path: Path) -> None:
    aliased = load_scenario_text(SCENARIO_TEXT.replace('"!mk:x"', '"#mk:x"'))
    store = await Store.open(tmp_path / "alias.db")
    try:
        kit = Kit(store, aliased, rooms=FakeRegistry())
        kit.runs.extra_rooms = {"hk": {"!real-mk:x"}}
        run_id = await arm(kit)
        await kit.p.on_message("!real-mk:x", "$1", "@a:x", "!here")
        assert (await lanes_of_checkins(kit, run_id))["@a:x"] == ("", "mongkok", None)
    finally:
        await store.close()


async def test_role_is_settled_once_the_stage_that_needs_it_is_being_prepared(kit: Kit) -> None:
    """The run decides who gets which text a few seconds before the instant (the
    dispatch's prepare lead, 3 s by default): a change then would be stored but
    not sent, so the person would read one role's text and hold another."""
    await kit.say("@a:x", "!join pods hk")
    run_id = await arm(kit)
    gather = next(d for d in await kit.store.ledger.dispatches(run_id) if "gather" in d.stage_id)
    assert isinstance(kit.p._clock, ManualClock)
    kit.p._clock.set(gather.due_at - timedelta(seconds=10))
    assert await kit.say("@a:x", "!role front") == m.role_chosen(EN, role_name="In the action").body
    kit.p._clock.set(gather.due_at - timedelta(seconds=2))  # being prepared, not yet out
    assert await kit.say("@a:x", "!role support") == m.role_locked(EN).body
    assert await role_of(kit, "@a:x") == "front"


async def test_a_pod_room_is_answered_in_its_citys_language(tmp_path: Path) -> None:
    zone = "timezone: Asia/Hong_Kong"
    spoken = load_scenario_text(SCENARIO_TEXT.replace(zone, f"{zone}\n    language: zh-Hant"))
    store = await Store.open(tmp_path / "lang.db")
    try:
        kit = Kit(store, spoken)  # not armed: the file says which city the room is
        zh = CATALOGS.translator("zh-Hant")
        said = await kit.say("@a:x", "!join pods hk", room="!mk:x")
        assert said == m.join_in_direct_chat(zh).body
    finally:
        await store.close()
