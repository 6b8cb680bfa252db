"""The instant planner (bot/runs/instant.py): pure, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bot.dispatch import Message, Release
from bot.ledger import DispatchState, Part
from bot.policy import LateReason
from bot.runs.instant import Cause, InstantPlan, gate_count, plan_instant
from bot.scenario import Scenario, load_scenario_text
from bot.store import DispatchRow

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
TEXT = (Message(Part.TEXT, "m.room.message", {"body": "x"}),)

YAML = """
version: 1
id: plan
title: plan
start: "2030-06-01T12:00:00Z"
cities:
  - {id: a, name: A, timezone: Europe/Berlin, rooms: ["!a:x"]}
  - {id: b, name: B, timezone: Europe/Berlin, rooms: ["!b:x"]}
stages:
  - {id: call, at: 0s, text: call}
  - {id: gather, at: +5m, text: gather, late: {skip_after: 2m}}
  - {id: go, at: +10m, text: go, require: {checkins: 3, otherwise: OTHERWISE}}
"""


def scen(otherwise: str = "hold") -> Scenario:
    return load_scenario_text(YAML.replace("OTHERWISE", otherwise), "plan.yaml")


def due(stage: str) -> datetime:
    return T0 + {"call": timedelta(0), "gather": timedelta(minutes=5), "go": timedelta(minutes=10)}[
        stage
    ]


def row(city: str, stage: str, state: DispatchState = DispatchState.SCHEDULED) -> DispatchRow:
    index = ["call", "gather", "go"].index(stage)
    return DispatchRow(1, city, stage, index, due(stage), state, None, None, False)


def rel(city: str, stage: str) -> Release:
    index = ["call", "gather", "go"].index(stage)
    return Release(1, "plan", city, stage, due(stage), (f"!{city}:x",), TEXT, stage_index=index)


def plan(
    rows: list[DispatchRow], prepared: list[Release], *, now: datetime, **kw: Any
) -> InstantPlan:
    args: dict[str, Any] = {
        "scenario": scen(),
        "label": "plan",
        "rows": {(r.city_id, r.stage_id): r for r in rows},
        "prepared": prepared,
        "held_cities": set(),
        "checkins": {},
        "now": now,
        "armed_at": T0 - timedelta(hours=1),
        "drill": False,
    }
    args.update(kw)
    return plan_instant(**args)


def test_release_on_time_in_stage_order() -> None:
    p = plan(
        [row("a", "call"), row("b", "call"), row("a", "gather")],
        [rel("a", "gather"), rel("b", "call"), rel("a", "call")],
        now=due("gather"),
    )
    assert [(r.city_id, r.stage_id) for r in p.release] == [
        ("a", "call"),
        ("b", "call"),
        ("a", "gather"),
    ]
    assert set(p.releasing) == {("a", "call"), ("b", "call"), ("a", "gather")}
    assert p.verdicts == () and p.reports == ()


def test_late_past_skip_after_is_skipped_and_reported() -> None:
    p = plan([row("a", "gather")], [rel("a", "gather")], now=due("gather") + timedelta(minutes=3))
    assert p.release == () and p.verdicts[0].state is DispatchState.SKIPPED
    assert "past skip_after" in p.reports[0]


def test_held_city_holds_and_held_row_waits() -> None:
    p = plan([row("a", "call")], [rel("a", "call")], now=T0, held_cities={"a"})
    assert p.verdicts[0].state is DispatchState.HELD and "!release plan call a" in p.reports[0]
    p = plan([row("a", "call", DispatchState.HELD)], [rel("a", "call")], now=T0)
    assert p == InstantPlan()


def test_gate_counts_checkins_since_the_previous_stage() -> None:
    s = scen()
    assert gate_count(s, {("a", "gather"): 4, ("a", "call"): 9}, "a", "go") == 4
    assert gate_count(s, {("a", ""): 2}, "a", "call") == 2
    short = plan([row("a", "go")], [rel("a", "go")], now=due("go"), checkins={("a", "gather"): 2})
    assert short.verdicts[0].state is DispatchState.HELD and "2/3 check-ins" in short.reports[0]
    met = plan([row("a", "go")], [rel("a", "go")], now=due("go"), checkins={("a", "gather"): 3})
    assert met.releasing == (("a", "go"),)


def test_gate_abort_and_skip() -> None:
    for otherwise, expect in (("abort", ("a",)), ("skip", ())):
        p = plan([row("a", "go")], [rel("a", "go")], now=due("go"), scenario=scen(otherwise))
        assert p.abort_cities == expect and p.release == ()
    skip = plan([row("a", "go")], [rel("a", "go")], now=due("go"), scenario=scen("skip"))
    assert skip.verdicts[0].state is DispatchState.SKIPPED


def test_drill_ignores_gates_and_lateness() -> None:
    late = due("go") + timedelta(hours=1)
    p = plan([row("a", "go")], [rel("a", "go")], now=late, drill=True)
    assert p.releasing == (("a", "go"),)


def test_forced_release_overrides_hold_gate_and_delay() -> None:
    moved = DispatchRow(1, "a", "go", 2, due("go") + timedelta(minutes=5), DispatchState.HELD,
                        None, None, False)
    p = plan([moved], [rel("a", "go")], now=due("go"), cause=Cause.RELEASE, held_cities={"a"})
    assert p.releasing == (("a", "go"),)
    assert p.late_reason["go"] is LateReason.RELEASED_BY_HAND


def test_delayed_since_prepared_and_done_rows_are_left_alone() -> None:
    moved = DispatchRow(1, "a", "call", 0, T0 + timedelta(minutes=1), DispatchState.SCHEDULED,
                        None, None, False)
    assert plan([moved], [rel("a", "call")], now=T0) == InstantPlan()
    done = row("a", "call", DispatchState.RELEASED)
    assert plan([done], [rel("a", "call")], now=T0) == InstantPlan()
    assert plan([], [rel("a", "call")], now=T0) == InstantPlan()


def test_resumed_release_after_restart_is_not_decided_again() -> None:
    p = plan(
        [row("a", "gather", DispatchState.RELEASING)],
        [rel("a", "gather")],
        now=due("gather") + timedelta(minutes=30),  # past skip_after: already decided
    )
    assert [r.stage_id for r in p.release] == ["gather"] and p.releasing == ()
    assert p.late_by["gather"]["a"] == timedelta(minutes=30)
    assert p.late_reason["gather"] is LateReason.UNAVAILABLE


def test_late_reasons() -> None:
    later = due("call") + timedelta(seconds=30)
    armed_late = plan([row("a", "call")], [rel("a", "call")], now=later, armed_at=later)
    assert armed_late.late_reason["call"] is LateReason.PAST_AT_ARMING
    resumed = plan([row("a", "call")], [rel("a", "call")], now=later, cause=Cause.RESUME)
    assert resumed.late_reason["call"] is LateReason.RESUMED
    down = plan([row("a", "call")], [rel("a", "call")], now=later)
    assert down.late_reason["call"] is LateReason.UNAVAILABLE
