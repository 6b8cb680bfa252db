"""What happens at a stage's instant: one pure function.

The shell (bot/runs/release.py) reads the run's dispatch rows and check-ins
once, calls :func:`plan_instant`, writes the plan's state changes once, starts
the fan-out of its releases and then sends its reports. Nothing here does I/O,
so every rule (late policy, holds, gates, a forced ``!release``, a stage
delayed since it was prepared) is tested in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from bot.dispatch import Release
from bot.ledger import DISPATCH_DONE, DispatchState
from bot.policy import Action, LateReason, decide
from bot.runs import lanes
from bot.scenario import Scenario
from bot.scenario.gates import CheckinCounts, gate_verdicts
from bot.scenario.timeline import lane_id
from bot.store import DispatchRow


class Cause(StrEnum):
    """What brought the stages to a decision now."""

    TIMER = "timer"  # their instant (or a restart after it)
    RESUME = "resume"  # !resume lifted a hold
    RELEASE = "release"  # !release: the core group overrides holds, gates, lateness


@dataclass(frozen=True)
class Verdict:
    city_id: str
    stage_id: str
    state: DispatchState  # SKIPPED or HELD
    note: str


@dataclass(frozen=True)
class InstantPlan:
    # To send now, in stage order (a room gets a run's stages in their order).
    release: tuple[Release, ...] = ()
    # (city, stage) newly decided to release: RELEASING before any request leaves.
    releasing: tuple[tuple[str, str], ...] = ()
    # Skips and holds to write.
    verdicts: tuple[Verdict, ...] = ()
    # Cities whose gate says abort.
    abort_cities: tuple[str, ...] = ()
    # Control-room texts, sent once the fan-out has started.
    reports: tuple[str, ...] = ()
    # stage -> city -> how late the decision was; stage -> why.
    late_by: Mapping[str, Mapping[str, timedelta]] = field(default_factory=dict)
    late_reason: Mapping[str, LateReason] = field(default_factory=dict)


def stage_order(release: Release) -> tuple[datetime, int, str]:
    return (release.due_at, release.stage_index, release.city_id)


def counted_stage(scenario: Scenario, stage_id: str) -> str:
    """The stage a gate on ``stage_id`` counts check-ins against: the previous
    one ("" before the first). ``stage_id`` may be a unit (``spot@front``)."""
    ids = [s.id for s in scenario.stages]
    index = ids.index(lanes.stage_of(stage_id))
    return ids[index - 1] if index > 0 else ""


def gate_count(
    scenario: Scenario, checkins: Mapping[tuple[str, str], int], city_id: str, stage_id: str
) -> int:
    """Check-ins in a lane since the previous stage (the gate's count): those
    recorded against the previous stage ("" before the first). ``checkins`` is
    keyed by (lane, counted stage): :func:`lane_checkins` for pods and roles."""
    return checkins.get((city_id, counted_stage(scenario, stage_id)), 0)


def lane_checkins(
    scenario: Scenario, by_lane: Mapping[tuple[str, str], CheckinCounts]
) -> dict[tuple[str, str], int]:
    """What each lane's gate counts, keyed as :func:`gate_count` reads it:
    (lane, counted stage) → the count :func:`bot.scenario.gates.gate_verdicts`
    gives (per pod with ``per: pod``, only ``role``'s check-ins with ``role``,
    else the whole city). For a scenario without pods or roles this is exactly
    the city's count per stage."""
    counts: dict[tuple[str, str], int] = {}
    for stage in scenario.stages:
        if stage.require is None:
            continue
        previous = counted_stage(scenario, stage.id)
        for city in scenario.cities:
            verdicts = gate_verdicts(stage.require, city, by_lane.get((city.id, previous), {}))
            for pod_id, verdict in verdicts.items():
                counts[(lane_id(city.id, pod_id), previous)] = verdict.counted
    return counts


def _late_reason(cause: Cause, row: DispatchRow, armed_at: datetime) -> LateReason:
    if cause is Cause.RELEASE:
        return LateReason.RELEASED_BY_HAND
    if cause is Cause.RESUME:
        return LateReason.RESUMED
    if row.state is DispatchState.SCHEDULED and row.due_at < armed_at:
        return LateReason.PAST_AT_ARMING
    return LateReason.UNAVAILABLE


def plan_instant(
    *,
    scenario: Scenario,
    label: str,
    rows: Mapping[tuple[str, str], DispatchRow],
    prepared: Sequence[Release],
    held_cities: Set[str],
    checkins: Mapping[tuple[str, str], int],
    now: datetime,
    armed_at: datetime,
    drill: bool,
    cause: Cause = Cause.TIMER,
) -> InstantPlan:
    """Decide every prepared (city, stage) against its row as it is now."""
    forced = cause is Cause.RELEASE
    release: list[Release] = []
    releasing: list[tuple[str, str]] = []
    verdicts: list[Verdict] = []
    aborts: list[str] = []
    reports: list[str] = []
    late_by: dict[str, dict[str, timedelta]] = {}
    reasons: dict[str, LateReason] = {}
    for rel in sorted(prepared, key=stage_order):
        city_id, stage_id = rel.city_id, rel.stage_id
        row = rows.get((city_id, stage_id))
        if row is None or row.state in DISPATCH_DONE:
            continue
        if not forced and row.due_at != rel.due_at:
            continue  # delayed since it was prepared; its new timer will fire
        if row.state is DispatchState.RELEASING:
            # Resumed after a restart: already decided.
            release.append(rel)
            late_by.setdefault(stage_id, {})[city_id] = max(now - row.due_at, timedelta(0))
            reasons.setdefault(stage_id, LateReason.UNAVAILABLE)
            continue
        if not forced and row.state is DispatchState.HELD:
            continue  # waits for !resume or !release
        stage = scenario.stage(lanes.stage_of(stage_id))
        # A drill rehearses the sequence: its gates are reported, not waited on.
        gate = None if drill else stage.require
        decision = decide(
            due_at=row.due_at,
            now=now,
            skip_after=None if drill else stage.late.skip_after,
            city_held=lanes.held(held_cities, city_id),
            gate_checkins=gate.checkins if gate else None,
            gate_otherwise=gate.otherwise if gate else None,
            checkins=gate_count(scenario, checkins, city_id, stage_id) if gate else 0,
            forced=forced,
        )
        if decision.action is Action.RELEASE:
            releasing.append((city_id, stage_id))
            release.append(rel)
            late_by.setdefault(stage_id, {})[city_id] = decision.late_by
            reasons.setdefault(stage_id, _late_reason(cause, row, armed_at))
        elif decision.action is Action.SKIP:
            verdicts.append(Verdict(city_id, stage_id, DispatchState.SKIPPED, decision.reason))
            reports.append(f"⏭️ {label}: stage {stage_id} skipped in {city_id}: {decision.reason}.")
        elif decision.action is Action.HOLD:
            verdicts.append(Verdict(city_id, stage_id, DispatchState.HELD, decision.reason))
            reports.append(
                f"⏸️ {label}: stage {stage_id} held in {city_id}: {decision.reason}. "
                f"Use !release {scenario.id} {lanes.stage_of(stage_id)} {city_id} or "
                f"!abort {scenario.id} {city_id}."
            )
        elif city_id not in aborts:  # once per lane, whatever its role variants
            reports.append(
                f"⛔ {label}: stage {stage_id} in {city_id}: {decision.reason}; "
                "the gate says abort."
            )
            aborts.append(city_id)
    return InstantPlan(
        release=tuple(release),
        releasing=tuple(releasing),
        verdicts=tuple(verdicts),
        abort_cities=tuple(aborts),
        reports=tuple(reports),
        late_by=late_by,
        late_reason=reasons,
    )
