"""Steering an armed run: hold, resume, delay, release now, redirect (and its
correction), abort. Each checks its arguments before anything changes and
answers with ids only; sending goes through the release shell."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from bot.dispatch import Message, Release
from bot.failsafe import DelayedRow, Steer
from bot.ids import SYNTHETIC_INDEX, edit_txn_id, fix_stage_id, job_prefix
from bot.ledger import DISPATCH_PENDING, DeliveryState, DispatchState, Part
from bot.matrix.sender import SendFailed
from bot.policy import format_duration
from bot.runs.context import RunContext
from bot.runs.instant import Cause
from bot.runs.model import ArmedRun, ArmError, mentions_place
from bot.runs.release import ReleaseShell
from bot.scenario import Place, RenderError, render_stage
from bot.scenario.render import to_html
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
        for city in cities:
            await ctx.store.steering.set_hold(armed.run.id, city, False)
            armed.held_cities.discard(city)
        # Stages held meanwhile (by the hold or a gate) are decided again now:
        # their late policy and gate apply, as at their instant.
        held = [
            d
            for d in await ctx.store.ledger.dispatches(armed.run.id)
            if d.city_id in cities and d.state is DispatchState.HELD
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
            if d.city_id in cities and d.state in DISPATCH_PENDING
        ]
        if not rows:
            raise ArmError(f"{armed.scenario_id} has no pending stage in {', '.join(cities)}")
        if any(d.due_at + by <= now for d in rows):
            raise ArmError("that would move a pending stage into the past; nothing was changed")
        moved = await self._switch_first(armed, Steer.DELAY, cities, by)
        # Due times and the recorded delay in one transaction ({time} renders from it).
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
        rows = []
        for city in cities:
            row = await ctx.store.ledger.dispatch(armed.run.id, city, stage_id)
            if row is not None and row.state in DISPATCH_PENDING:
                rows.append(row)
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
            f"{', '.join(r.city_id for r in rows)}; the report follows."
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
        ctx = self._ctx
        city = armed.scenario.city(city_id)
        if place_id not in city.places:
            known = ", ".join(sorted(city.places)) or "none"
            raise ArmError(f"{city_id} has no place {place_id} (places: {known})")
        new_place = Place(id=place_id, name=name, geo=geo, note=None)
        overrides = {**armed.place_overrides.get(city_id, {}), place_id: new_place}
        self._check_renders(armed, city_id, place_id, overrides)
        # Every delayed event of the city: its content renders the place anew.
        renewed = await self._switch_first(armed, Steer.REDIRECT, [city_id])
        revision = await ctx.store.steering.set_redirect(armed.run.id, city_id, place_id, name, geo)
        armed.place_overrides[city_id] = overrides
        await self._switch_after(armed, renewed)
        revealed: list[DispatchRow] = []
        for stage in armed.scenario.stages:
            if not mentions_place(stage, place_id):
                continue
            row = await ctx.store.ledger.dispatch(armed.run.id, city_id, stage.id)
            if row is not None and row.state in (DispatchState.RELEASED, DispatchState.RELEASING):
                revealed.append(row)
        if not revealed:
            return (
                f"Redirected {place_id} in {city_id} before it was revealed: every stage "
                "that mentions it will carry the new place."
            )
        ctx.supervisor.spawn(
            self._correct(armed, city_id, place_id, revision, revealed), armed.run.id, "correction"
        )
        return (
            f"Redirected {place_id} in {city_id}. It was already revealed by "
            f"{', '.join(r.stage_id for r in revealed)}: editing those messages and sending "
            "a correction to every room now."
        )

    @staticmethod
    def _check_renders(
        armed: ArmedRun, city_id: str, place_id: str, overrides: dict[str, Place]
    ) -> None:
        for stage in armed.scenario.stages:
            if not mentions_place(stage, place_id):
                continue
            try:
                render_stage(
                    armed.scenario,
                    city_id,
                    stage.id,
                    place_overrides=overrides,
                    delay=armed.delays.get(city_id),
                )
            except RenderError:
                raise ArmError(
                    f"stage {stage.id} uses {place_id}'s coordinates: give the new place "
                    "as <name> <lat,lon>; nothing was changed"
                ) from None

    async def _edit_revealed(
        self, armed: ArmedRun, city_id: str, revision: int, revealed: Sequence[DispatchRow]
    ) -> None:
        """Edit the earlier messages where clients support edits (m.replace)."""
        ctx = self._ctx
        for row in revealed:
            text = next(
                m for m in ctx.messages(armed, city_id, row.stage_id) if m.part is Part.TEXT
            )
            for d in await ctx.store.ledger.deliveries(armed.run.id, city_id, row.stage_id):
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
        city_id: str,
        place_id: str,
        revision: int,
        revealed: Sequence[DispatchRow],
    ) -> None:
        ctx = self._ctx
        await self._edit_revealed(armed, city_id, revision, revealed)
        # A new message, through the ledger like any stage: the latest revealing
        # stage again, marked as a correction, with its location.
        latest = revealed[-1]
        first, *rest = ctx.messages(armed, city_id, latest.stage_id)
        body = f"⚠️ Correction — the place has changed:\n{first.content['body']}"
        messages = [
            Message(
                Part.TEXT,
                first.event_type,
                {**first.content, "body": body, "formatted_body": to_html(body)},
            ),
            *rest,
        ]
        stage_id = fix_stage_id(place_id, revision)
        now = armed.clock.now()
        await ctx.store.ledger.add_dispatch(
            armed.run.id,
            city_id,
            stage_id,
            SYNTHETIC_INDEX + revision,
            now,
            DispatchState.RELEASING,
        )
        release = Release(
            run_id=armed.run.id,
            scenario_id=armed.scenario_id,
            city_id=city_id,
            stage_id=stage_id,
            due_at=now,
            rooms=tuple(await ctx.served_rooms(armed, city_id)),
            messages=tuple(messages),
            run_key=armed.run_key,
            stage_index=SYNTHETIC_INDEX + revision,
        )
        # With a crew, the correction follows duty like any send (bot/runs/covering.py).
        outcomes = await self._shell.fan_out(armed, [release], None, now=now, by_hand=True)
        await self._shell.finish_releases(armed, outcomes)
