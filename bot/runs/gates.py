"""Gates across a crew: one quorum decision per city, the shell around the pure
:mod:`bot.crew.gate`.

The member on duty for a gated city (the first in its order that is ready and
joined to any of its rooms, at the instant) decides from its own check-ins and
publishes the decision in the run's control room: an ``m.notice`` carrying
``org.blossom.gate`` (ids and counts only). Every other member follows a
published decision — it plans the stage with the published count, so the same
gate gives the same action in every room — and decides itself only when none
has appeared by instant + grace (``gate_step``). It reads the control room
with one bounded ``/messages`` request per look, every half second until then.

Only for a crew, a real run and a stage's own instant; without a crew gates are
decided exactly as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from bot.crew.gate import (
    GATE_KEY,
    GateDecision,
    Step,
    city_on_duty,
    gate_step,
    parse_gate_decision,
)
from bot.crew.shares import (
    CHECKINS_KEY,
    CheckinShare,
    gate_share_count,
    parse_checkin_share,
    share_contents,
    tagged_share_contents,
)
from bot.delivery import Release
from bot.ids import report_txn_id
from bot.ledger import DispatchState
from bot.matrix.sender import SendFailed
from bot.policy import Action
from bot.runs import lanes
from bot.runs.context import RunContext
from bot.runs.duty import CrewSide
from bot.runs.instant import InstantPlan, counted_stage, gate_count
from bot.runs.model import ArmedRun
from bot.scenario.timeline import split_lane

log = logging.getLogger(__name__)

_LOOK_EVERY = timedelta(milliseconds=500)


def gated(armed: ArmedRun, rel: Release) -> bool:
    return (
        armed.drill_room is None
        and armed.scenario.stage(lanes.stage_of(rel.stage_id)).require is not None
    )


def followers(crew: CrewSide, armed: ArmedRun, prepared: Sequence[Release]) -> list[Release]:
    """The gated releases whose city another member is on duty for: they wait
    for its decision (or instant + grace)."""
    view = crew.view()
    waiting = []
    for rel in prepared:
        if not gated(armed, rel):
            continue
        order = crew.crew.order_for(armed.scenario.city(lanes.city_of(rel.city_id)))
        duty = city_on_duty(
            view, order, [crew.joined(r) for r in rel.rooms], rel.due_at, armed.loaded.sha256
        )
        if duty is not None and duty != crew.me:
            waiting.append(rel)
    return waiting


async def await_decisions(
    ctx: RunContext, crew: CrewSide, armed: ArmedRun, waiting: Sequence[Release]
) -> dict[tuple[str, str], GateDecision]:
    """Published decisions for ``waiting``, looked for until instant + grace;
    a (city, stage) missing from the answer is this member's to decide."""
    grace = armed.scenario.failover.grace
    view = crew.view()
    found: dict[tuple[str, str], GateDecision] = {}
    pending = list(waiting)
    while pending:
        events = await crew.recent(armed.run.control_room) or []
        decisions = [d for e in events if (d := parse_gate_decision(e, members=crew.crew.members))]
        now = armed.clock.now()
        still = []
        for rel in pending:
            order = crew.crew.order_for(armed.scenario.city(lanes.city_of(rel.city_id)))
            duty = city_on_duty(
                view, order, [crew.joined(r) for r in rel.rooms], rel.due_at, armed.loaded.sha256
            )
            step = gate_step(
                me=crew.me,
                city_duty=duty,
                decisions=decisions,
                run=armed.run_key,
                city=rel.city_id,
                stage=rel.stage_id,
                order=order,
                instant=rel.due_at,
                grace=grace,
                now=now,
            )
            if step.step is Step.FOLLOW and step.decision is not None:
                found[(rel.city_id, rel.stage_id)] = step.decision
            elif step.step is Step.WAIT:
                still.append(rel)
        pending = still
        if pending:
            await armed.clock.sleep_until(armed.clock.now() + _LOOK_EVERY)
    return found


def with_followed(
    armed: ArmedRun,
    checkins: Mapping[tuple[str, str], int],
    followed: Mapping[tuple[str, str], GateDecision],
) -> dict[tuple[str, str], int]:
    """Check-in counts with each followed decision's count in place of this
    member's own (the gate reads the count against the previous stage)."""
    counts = dict(checkins)
    for (city, stage), decision in followed.items():
        counts[(city, counted_stage(armed.scenario, stage))] = decision.checkins
    return counts


def decided(
    armed: ArmedRun,
    plan: InstantPlan,
    todo: Sequence[Release],
    checkins: Mapping[tuple[str, str], int],
    followed: Mapping[tuple[str, str], GateDecision],
) -> list[GateDecision]:
    """The gate decisions this member made itself in ``plan`` (to publish)."""
    verdicts = {(v.city_id, v.stage_id): v.state for v in plan.verdicts}
    out = []
    for rel in todo:
        key = (rel.city_id, rel.stage_id)
        gate = armed.scenario.stage(lanes.stage_of(rel.stage_id)).require
        if gate is None or armed.drill_room is not None or key in followed:
            continue
        if key in plan.releasing:
            action = Action.RELEASE
        elif verdicts.get(key) is DispatchState.SKIPPED:
            action = Action.SKIP
        elif verdicts.get(key) is DispatchState.HELD:
            action = Action.HOLD
        elif rel.city_id in plan.abort_cities:
            action = Action.ABORT
        else:
            continue
        count = gate_count(armed.scenario, checkins, rel.city_id, rel.stage_id)
        out.append(
            GateDecision(armed.run_key, rel.city_id, rel.stage_id, action, count, gate.checkins)
        )
    return out


async def publish(ctx: RunContext, armed: ArmedRun, decisions: Sequence[GateDecision]) -> None:
    """Each decision as an m.notice in the run's control room (ids and counts)."""
    for d in decisions:
        content: dict[str, Any] = {
            "msgtype": "m.notice",
            "body": f"Gate {armed.scenario_id} {d.stage} in {d.city}: {d.action} "
            f"({d.checkins}/{d.needed} check-ins).",
            GATE_KEY: d.content(),
        }
        txn = report_txn_id(
            armed.run.id, armed.scenario_id, armed.run.armed_at, "gate", d.city, d.stage
        )
        try:
            await ctx.sender.send(armed.run.control_room, "m.room.message", content, txn)
        except SendFailed as err:
            log.warning("could not publish the gate of %s/%s: %s", d.city, d.stage, err)


def _counted_stage(armed: ArmedRun, stage: str) -> str:
    """The stage a gate's check-ins are recorded against: the previous one ("" first)."""
    return counted_stage(armed.scenario, stage)


async def share_checkins(ctx: RunContext, armed: ArmedRun, prepared: Sequence[Release]) -> None:
    """Publish this member's check-in tokens for each gated release, at the
    instant - prepare, so whoever decides the city's gate has them by the instant."""
    tags = await ctx.store.participants.checkin_tags(armed.run.id)
    for rel in prepared:
        if not gated(armed, rel):
            continue
        stage = _counted_stage(armed, rel.stage_id)
        # Check-ins are recorded per city (a lane's release shares its city's),
        # each token with the pod and role it counts for; without pods or roles
        # there is nothing to tag, and the content reads as it always did.
        city = lanes.city_of(rel.city_id)
        mine = tags.get((city, stage), {})
        if armed.scenario.city(city).pods or armed.scenario.roles:
            chunks = tagged_share_contents(armed.run_key, rel.city_id, stage, mine)
        else:
            chunks = share_contents(armed.run_key, rel.city_id, stage, mine)
        for n, body in enumerate(chunks):
            content: dict[str, Any] = {
                "msgtype": "m.notice",
                "body": f"Check-ins {armed.scenario_id} in {rel.city_id}: "
                f"{len(body['tokens'])} (for the gate of {rel.stage_id}).",
                CHECKINS_KEY: body,
            }
            txn = report_txn_id(
                armed.run.id,
                armed.scenario_id,
                armed.run.armed_at,
                "checkins",
                rel.city_id,
                rel.stage_id,
                str(n),
            )
            try:
                await ctx.sender.send(armed.run.control_room, "m.room.message", content, txn)
            except SendFailed as err:
                log.warning("could not share the check-ins of %s/%s: %s", rel.city_id, stage, err)


async def read_shares(crew: CrewSide, armed: ArmedRun) -> list[CheckinShare]:
    """The check-in tokens other members published in the run's control room."""
    events = await crew.recent(armed.run.control_room) or []
    return [s for e in events if (s := parse_checkin_share(e, members=crew.crew.members))]


async def with_shared(
    ctx: RunContext,
    crew: CrewSide,
    armed: ArmedRun,
    checkins: Mapping[tuple[str, str], int],
    shares: Sequence[CheckinShare],
) -> dict[tuple[str, str], int]:
    """Check-in counts with each shared (city, stage) counted once per person
    across the crew: this member's own united with the others' tokens, for
    each lane as its gate counts (its pod's with ``per: pod``, one role's with
    ``role``; untagged shares of a previous version only for the whole city)."""
    counts = dict(checkins)
    theirs = [s for s in shares if s.run == armed.run_key and s.member != crew.me]
    shared = {(lanes.city_of(s.city), s.stage) for s in theirs}
    if not shared:
        return counts
    tags = await ctx.store.participants.checkin_tags(armed.run.id)
    for st in armed.scenario.stages:
        gate, stage = st.require, counted_stage(armed.scenario, st.id)
        if gate is None:
            continue
        for city in armed.scenario.cities:
            if (city.id, stage) not in shared:
                continue
            for lane in lanes.lanes_of(armed.scenario, city.id):
                pod = split_lane(lane)[1] if gate.per == "pod" else None
                counts[(lane, stage)] = gate_share_count(
                    run=armed.run_key,
                    city=city.id,
                    stage=stage,
                    own=tags.get((city.id, stage), {}),
                    shares=theirs,
                    me=crew.me,
                    crew=crew.crew.members,
                    pod=pod,
                    role=gate.role,
                )
    return counts
