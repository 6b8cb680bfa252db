"""Steering an armed run: hold, resume, delay, release now, redirect (and its
correction), abort. Each checks its arguments before anything changes and
answers with ids only; sending goes through the release shell."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from bot.dispatch import Message, Release
from bot.failsafe import DelayedRow, Steer
from bot.ids import SYNTHETIC_INDEX, edit_txn_id, fix_stage_id, is_synthetic, job_prefix
from bot.ledger import DISPATCH_PENDING, DeliveryState, DispatchState, Part
from bot.matrix.sender import SendFailed
from bot.policy import format_duration
from bot.runs import lanes
from bot.runs.context import RunContext
from bot.runs.instant import Cause
from bot.runs.model import ArmedRun, ArmError, mentions_place
from bot.runs.release import ReleaseShell
from bot.scenario import Place, RenderError, render_stage
from bot.scenario.audience import Audience, pods_reading
from bot.scenario.render import stage_template, to_html
from bot.scenario.templates import parse_template
from bot.scenario.timeline import split_lane, unit_id
from bot.store import DispatchRow

log = logging.getLogger(__name__)


class Steering:
    def __init__(self, ctx: RunContext, shell: ReleaseShell) -> None:
        self._ctx = ctx
        self._shell = shell

    async def _switch_first(
        self,
        armed: ArmedRun,
        action: Steer,
        cities: Sequence[str],
        shift: timedelta = timedelta(0),
    ) -> tuple[DelayedRow, ...]:
        """The dead-man's switch, before the command changes anything: cancel the
        affected delayed events; the replacements to schedule after it."""
        switch = self._ctx.failsafe
        if switch is None:
            return ()
        return await switch.steer(armed, action, cities, shift=shift)

    async def _switch_after(self, armed: ArmedRun, rows: Sequence[DelayedRow]) -> None:
        if rows and self._ctx.failsafe is not None:
            await self._ctx.failsafe.replan(armed, rows)

    async def hold(self, armed: ArmedRun, cities: Sequence[str]) -> str:
        """Hold cities (every pod of each) or single pods (``hk/mongkok``)."""
        await self._switch_first(armed, Steer.HOLD, cities)
        for city in cities:
            await self._ctx.store.steering.set_hold(armed.run.id, city, True)
            armed.held_cities.add(city)
        return (
            f"Holding {armed.label()} in {', '.join(cities)}: no stage goes there until "
            f"!resume {armed.scenario_id}."
        )

    async def resume(self, armed: ArmedRun, cities: Sequence[str]) -> str:
        ctx = self._ctx
        blocked = [
            c for c in cities if c != lanes.city_of(c) and lanes.city_of(c) in armed.held_cities
        ]
        if blocked:
            city = lanes.city_of(blocked[0])
            raise ArmError(
                f"{city} is held as a whole, so {blocked[0]} stays held: "
                f"!resume {armed.scenario_id} {city} lifts it; nothing was changed"
            )
        # Resuming a city lifts its pods' own holds too.
        lifted = [h for h in armed.held_cities if lanes.on_target(h, cities)]
        for key in dict.fromkeys([*cities, *lifted]):
            await ctx.store.steering.set_hold(armed.run.id, key, False)
            armed.held_cities.discard(key)
        # Stages held meanwhile (by the hold or a gate) are decided again now:
        # their late policy and gate apply, as at their instant.
        held = [
            d
            for d in await ctx.store.ledger.dispatches(armed.run.id)
            if lanes.on_target(d.city_id, cities)
            and d.state is DispatchState.HELD
            and not lanes.held(armed.held_cities, d.city_id)
        ]
        await ctx.store.ledger.set_dispatch_states(
            armed.run.id, [(d.city_id, d.stage_id, DispatchState.SCHEDULED, None) for d in held]
        )
        if ctx.failsafe is not None:
            await ctx.failsafe.resumed(armed, cities)  # the stages still to come
        text = f"Resumed {armed.label()} in {', '.join(cities)}."
        if held:
            releases = [await ctx.build_release(armed, d) for d in held]
            ctx.supervisor.spawn(
                self._shell.release_at_instant(armed, releases, Cause.RESUME),
                armed.run.id,
                "resume",
            )
            text += (
                f" {len(held)} held stage(s) are decided now by their late policy and gates; "
                "use !release to send one regardless."
            )
        return text

    async def delay(self, armed: ArmedRun, cities: Sequence[str], by: timedelta) -> str:
        ctx = self._ctx
        now = armed.clock.now()
        rows = [
            d
            for d in await ctx.store.ledger.dispatches(armed.run.id)
            if lanes.on_target(d.city_id, cities) and d.state in DISPATCH_PENDING
        ]
        if not rows:
            raise ArmError(f"{armed.scenario_id} has no pending stage in {', '.join(cities)}")
        if any(d.due_at + by <= now for d in rows):
            raise ArmError("that would move a pending stage into the past; nothing was changed")
        moved = await self._switch_first(armed, Steer.DELAY, cities, by)
        # Due times and the recorded delay in one transaction ({time} renders from
        # it; a pod's {time} reads its city's delay plus its own).
        await ctx.store.steering.delay(
            armed.run.id,
            [(d.city_id, d.stage_id, d.due_at + by) for d in rows],
            list(cities),
            by.total_seconds(),
        )
        for city in cities:
            armed.delays[city] = armed.delays.get(city, timedelta(0)) + by
        ctx.timers.cancel_prefix(job_prefix(armed.run.id))
        self._shell.schedule(armed, await ctx.store.ledger.dispatches(armed.run.id))
        await self._switch_after(armed, moved)
        nxt = min(d.due_at + by for d in rows)
        return (
            f"Delayed {armed.label()} by {format_duration(by)} in {', '.join(cities)}: "
            f"{len(rows)} pending stage(s); the next is now at {nxt:%Y-%m-%d %H:%M:%SZ}."
        )

    async def release_now(self, armed: ArmedRun, stage_id: str, cities: Sequence[str]) -> str:
        ctx = self._ctx
        if stage_id not in {s.id for s in armed.scenario.stages}:
            raise ArmError(f"{armed.scenario_id} has no stage {stage_id}")
        # Every lane and role variant of the stage in these cities (or pods).
        rows = [
            d
            for d in await ctx.store.ledger.dispatches(armed.run.id)
            if lanes.on_target(d.city_id, cities)
            and lanes.stage_of(d.stage_id) == stage_id
            and not is_synthetic(d.stage_id)
            and d.state in DISPATCH_PENDING
        ]
        # In the order the cities were named (a city's rows in release order).
        rows.sort(
            key=lambda d: next(i for i, t in enumerate(cities) if lanes.on_target(d.city_id, [t]))
        )
        if not rows:
            raise ArmError(
                f"stage {stage_id} is not pending in {', '.join(cities)} "
                "(already released, skipped or cancelled)"
            )
        releases = [await ctx.build_release(armed, r) for r in rows]
        ctx.supervisor.spawn(
            self._shell.release_at_instant(armed, releases, Cause.RELEASE), armed.run.id, "release"
        )
        return (
            f"Releasing {armed.label()} stage {stage_id} now in "
            f"{', '.join(dict.fromkeys(r.city_id for r in rows))}; the report follows."
        )

    async def abort(self, armed: ArmedRun, cities: Sequence[str], message: str | None) -> str:
        """Cancel every pending stage of these cities and send the stop message to
        every room they serve, ahead of any other traffic of this run."""
        cancelled = await self._shell.abort(armed, cities, message)
        return (
            f"Aborting {armed.label()} in {', '.join(cities)}: {cancelled} pending stage(s) "
            "cancelled; the stop message is going out to every room now."
        )

    # -- redirect ------------------------------------------------------------------------

    async def redirect(
        self,
        armed: ArmedRun,
        city_id: str,
        place_id: str,
        name: str,
        geo: tuple[float, float] | None,
    ) -> str:
        """Change a place of a city, or of one pod (``city_id`` = ``hk/mongkok``).
        A city's redirect reaches the pods that read the city's place (those
        without one of their own); a pod's reaches that pod only."""
        ctx = self._ctx
        affected = self._redirected_lanes(armed, city_id, place_id)
        new_place = Place(id=place_id, name=name, geo=geo, note=None)
        overrides = {**armed.place_overrides.get(city_id, {}), place_id: new_place}
        trial = {**armed.place_overrides, city_id: overrides}
        for lane in affected:
            self._check_renders(
                armed, lane, place_id, lanes.lane_overrides(armed.scenario, trial, lane)
            )
        # Every delayed event of the city (or pod): its content renders the place anew.
        renewed = await self._switch_first(armed, Steer.REDIRECT, [city_id])
        revision = await ctx.store.steering.set_redirect(armed.run.id, city_id, place_id, name, geo)
        armed.place_overrides[city_id] = overrides
        await self._switch_after(armed, renewed)
        revealed: list[DispatchRow] = [
            d
            for d in await ctx.store.ledger.dispatches(armed.run.id)
            if d.city_id in affected
            and not is_synthetic(d.stage_id)
            and _reveals(armed, d, place_id)
            and d.state in (DispatchState.RELEASED, DispatchState.RELEASING)
        ]
        if not revealed:
            return (
                f"Redirected {place_id} in {city_id} before it was revealed: every stage "
                "that mentions it will carry the new place."
            )
        by_lane: dict[str, list[DispatchRow]] = {}
        for row in sorted(revealed, key=lambda d: (d.stage_index, d.due_at)):
            by_lane.setdefault(row.city_id, []).append(row)
        for lane, rows in by_lane.items():
            ctx.supervisor.spawn(
                self._correct(armed, lane, place_id, revision, rows), armed.run.id, "correction"
            )
        stages = dict.fromkeys(lanes.stage_of(r.stage_id) for r in revealed)
        return (
            f"Redirected {place_id} in {city_id}. It was already revealed by "
            f"{', '.join(stages)}: editing those messages and sending "
            "a correction to every room now."
        )

    @staticmethod
    def _redirected_lanes(armed: ArmedRun, target: str, place_id: str) -> list[str]:
        """The lanes a redirect of ``place_id`` at ``target`` reaches; ArmError
        (ids only) when the target has no such place."""
        city, pod = lanes.pod_of(armed.scenario, target)
        if pod is not None:
            known = sorted({**city.places, **pod.places})
            if place_id not in known:
                raise ArmError(f"{target} has no place {place_id} (places: {', '.join(known)})")
            return [target]
        own = [p.id for p in city.all_pods if place_id in p.places]
        reading = pods_reading(city, place_id)
        if own and (place_id not in city.places or not reading):
            raise ArmError(
                f"{place_id} is a place of each pod of {city.id}, not of the city: name "
                f"the pod, e.g. !redirect {armed.scenario_id} {city.id}/{own[0]} {place_id} "
                "<name> [lat,lon]; nothing was changed"
            )
        if place_id not in city.places:
            names = ", ".join(sorted(city.places)) or "none"
            raise ArmError(f"{city.id} has no place {place_id} (places: {names})")
        if not city.all_pods:
            return [city.id]
        return [f"{city.id}/{p}" for p in reading]

    @staticmethod
    def _check_renders(
        armed: ArmedRun, lane: str, place_id: str, overrides: dict[str, Place] | None
    ) -> None:
        city_id, pod_id = split_lane(lane)
        for stage in armed.scenario.stages:
            if not mentions_place(stage, place_id):
                continue
            for role in (None, *armed.scenario.role_ids):
                try:
                    render_stage(
                        armed.scenario,
                        city_id,
                        stage.id,
                        place_overrides=overrides,
                        delay=armed.delay_for(lane),
                        pod=pod_id,
                        role=role,
                    )
                except RenderError:
                    raise ArmError(
                        f"stage {stage.id} uses {place_id}'s coordinates: give the new place "
                        "as <name> <lat,lon>; nothing was changed"
                    ) from None

    async def _edit_revealed(
        self, armed: ArmedRun, lane: str, revision: int, revealed: Sequence[DispatchRow]
    ) -> None:
        """Edit the earlier messages where clients support edits (m.replace)."""
        ctx = self._ctx
        for row in revealed:
            text = next(m for m in ctx.messages(armed, lane, row.stage_id) if m.part is Part.TEXT)
            for d in await ctx.store.ledger.deliveries(armed.run.id, lane, row.stage_id):
                if d.key.part is not Part.TEXT or d.state is not DeliveryState.SENT:
                    continue
                if not d.event_id:
                    continue
                edit = {
                    "msgtype": "m.text",
                    "body": f"* {text.content['body']}",
                    "m.new_content": dict(text.content),
                    "m.relates_to": {"rel_type": "m.replace", "event_id": d.event_id},
                }
                try:
                    await ctx.sender.send(
                        d.key.room_id, "m.room.message", edit, edit_txn_id(d.txn_id, revision)
                    )
                except SendFailed as err:
                    log.warning("edit in %s failed: %s", d.key.room_id, err.failure.describe())

    async def _correct(
        self,
        armed: ArmedRun,
        lane: str,
        place_id: str,
        revision: int,
        revealed: Sequence[DispatchRow],
    ) -> None:
        """Edit what the lane was told, then send one correction per group of
        people who learnt the place last from the same dispatch: the latest
        revealing stage they got again, to exactly the rooms that got it (a
        role the place was never revealed to is not told it now)."""
        await self._edit_revealed(armed, lane, revision, revealed)
        latest: dict[Audience, DispatchRow] = {}
        for row in revealed:  # in stage order: the last one wins
            found = armed.units.get((row.city_id, row.stage_id))
            for audience in found.audiences if found else (None,):
                latest[audience] = row
        groups: dict[str, list[Audience]] = {}
        for audience, row in latest.items():
            groups.setdefault(row.stage_id, []).append(audience)
        base = fix_stage_id(place_id, revision)
        releases = []
        now = armed.clock.now()
        for n, (unit, audiences) in enumerate(groups.items()):
            # One group (always so without roles): exactly the old stage id.
            stage_id = base if len(groups) == 1 else unit_id(base, str(n + 1))
            releases.append(
                await self._correction(armed, lane, unit, stage_id, tuple(audiences), revision, now)
            )
        # With a crew, the correction follows duty like any send (bot/runs/covering.py).
        outcomes = await self._shell.fan_out(armed, releases, None, now=now, by_hand=True)
        await self._shell.finish_releases(armed, outcomes)

    async def _correction(
        self,
        armed: ArmedRun,
        lane: str,
        unit: str,
        stage_id: str,
        audiences: tuple[Audience, ...],
        revision: int,
        now: datetime,
    ) -> Release:
        ctx = self._ctx
        first, *rest = ctx.messages(armed, lane, unit)
        body = f"⚠️ Correction — the place has changed:\n{first.content['body']}"
        messages = [
            Message(
                Part.TEXT,
                first.event_type,
                {**first.content, "body": body, "formatted_body": to_html(body)},
            ),
            *rest,
        ]
        await ctx.store.ledger.add_dispatch(
            armed.run.id, lane, stage_id, SYNTHETIC_INDEX + revision, now, DispatchState.RELEASING
        )
        # Without roles: every room of the lane, as before roles existed.
        who = audiences if armed.scenario.roles else None
        return Release(
            run_id=armed.run.id,
            scenario_id=armed.scenario_id,
            city_id=lane,
            stage_id=stage_id,
            due_at=now,
            rooms=tuple(await ctx.lane_rooms(armed, lane, who)),
            messages=tuple(messages),
            run_key=armed.run_key,
            stage_index=SYNTHETIC_INDEX + revision,
        )


def _reveals(armed: ArmedRun, row: DispatchRow, place_id: str) -> bool:
    """Whether a released dispatch told its rooms ``place_id``. With roles, by the
    text its variant read (a role whose text never named the place is not sent a
    correction that would); without, as before: the stage names it anywhere."""
    stage = armed.scenario.stage(lanes.stage_of(row.stage_id))
    if not armed.scenario.roles or stage.place == place_id:
        return mentions_place(stage, place_id)
    found = armed.units.get((row.city_id, row.stage_id))
    city = armed.scenario.city(lanes.city_of(row.city_id))
    template = stage_template(stage, city, found.audiences[0] if found else None)
    return any(ph.place == place_id for ph in parse_template(template).placeholders())
