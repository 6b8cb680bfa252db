"""The instant's shell: timers, firing, and the release path every send takes.

At a timer: read the run's rows once, prepare (render, ledger rows, keys),
sleep to the instant, then under the run's instant lock read once, plan
(bot/runs/instant.py), write once, and start the fan-out; reports follow.
An abort or a correction goes through the same dispatcher, in the ledger.

Order per room: a timer takes every earlier dispatch of its run that is still
waiting (a restart after downtime finds them all due at once), and the
instant lock is held until the fan-out's rooms have queued in the
dispatcher's per-room locks, so a room never gets a later stage first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta

from bot.crew.gate import GateDecision
from bot.crew.shares import CheckinShare
from bot.dispatch import Message, Outcome, Release
from bot.failsafe import Steer
from bot.i18n import Translator
from bot.i18n import messages as say
from bot.ids import ABORT_STAGE, SYNTHETIC_INDEX, job_id, report_txn_id
from bot.ledger import DISPATCH_DONE, DISPATCH_PENDING, DispatchState, Part, RunState
from bot.policy import LateReason
from bot.report import LATE_WHY, stage_summary
from bot.runs import covering, gates, lanes, warmup
from bot.runs.context import RunContext
from bot.runs.instant import Cause, InstantPlan, lane_checkins, plan_instant, stage_order
from bot.runs.model import ArmedRun
from bot.scenario import render_template
from bot.scenario.render import to_html
from bot.store import DispatchRow, StoreError

log = logging.getLogger(__name__)

# A timer that fires this much before its time on the run's clock saw a jump back.
_EARLY = timedelta(seconds=1)
_SHORT_WALL = timedelta(seconds=2)  # wall time worth waiting out inside a woken job
_WAITING = (DispatchState.SCHEDULED, DispatchState.RELEASING)


def run_report_txn(armed: ArmedRun, *parts: str) -> str:
    run = armed.run
    return report_txn_id(run.id, run.scenario_id, run.armed_at, *parts)


class ReleaseShell:
    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        # (city, stage) per run whose fan-out this process has started.
        self._claimed: defaultdict[int, set[tuple[str, str]]] = defaultdict(set)

    # -- timers ------------------------------------------------------------------------

    def schedule(self, armed: ArmedRun, rows: Sequence[DispatchRow]) -> None:
        for at in sorted({d.due_at for d in rows if d.state in _WAITING}):
            self._ctx.timers.set_on(
                job_id(armed.run.id, at),
                armed.clock,
                at - self._ctx.lead,
                self._job(armed.run.id, at),
            )

    def _job(
        self, run_id: int, due_at: datetime, attempt: int = 0
    ) -> Callable[[], Awaitable[None]]:
        async def fire() -> None:
            try:
                await self._ctx.supervisor.guarded(
                    self.fire(run_id, due_at),
                    run_id,
                    f"the release due {due_at:%H:%M:%SZ}",
                    reraise=(StoreError,),
                )
            except asyncio.CancelledError:
                # Shutdown cut the release short (e.g. mid-report): not an error.
                # Its dispatch is not RELEASED yet, so the restart resumes it.
                # Ending the job here keeps a traceback out of the scheduler's log.
                log.info("run %d: release due %s interrupted by shutdown", run_id, due_at)
                return
            except StoreError as err:
                await self._database_down(run_id, due_at, attempt, err)

        return fire

    async def _database_down(
        self, run_id: int, due_at: datetime, attempt: int, err: StoreError
    ) -> None:
        # The database is locked or full. Nothing was marked sent that was not
        # sent (SENDING is written before each request), so firing again later is
        # safe; the late policy applies as usual.
        retry_in = min(30, 2 + 2 * attempt)
        log.error("run %d: database unavailable (%s); retrying in %ds", run_id, err, retry_in)
        armed = self._ctx.armed.get(run_id)
        if attempt == 0 and armed is not None:
            await self._ctx.notifier.report(
                armed.run.control_room,
                f"⚠️ {armed.label()}: the bot's database is unavailable ({err}). "
                "Undelivered rooms stay pending; retrying until it is back.",
            )
        if armed is not None:
            clock = self._ctx.clock
            self._ctx.timers.set(
                job_id(run_id, due_at),
                clock.to_wall(clock.now() + timedelta(seconds=retry_in)),
                self._job(run_id, due_at, attempt + 1),
            )

    # -- the instant -------------------------------------------------------------------

    async def fire(self, run_id: int, due_at: datetime) -> None:
        ctx = self._ctx
        await ctx.ready.wait()  # no send before the first sync knows the rooms
        armed = ctx.armed.get(run_id)
        if armed is None:
            return
        if armed.clock.now() < due_at - ctx.lead - _EARLY:
            wake = due_at - ctx.lead
            wall_left = armed.clock.to_wall(wake) - ctx.clock.to_wall(ctx.clock.now())
            if wall_left < _SHORT_WALL:
                # A scaled clock (drill, demo) magnifies timer jitter: 10 ms early
                # at x100 is a second by the run's clock. Re-setting this job's own
                # id now would make the scheduler skip it (this instance is still
                # running: max_instances=1) and lose the stage; wait here instead.
                await armed.clock.sleep_until(wake)
            else:
                # Woken early: the clock jumped back after the timer was last set
                # (Timers.retime moves timers within a second; this closes the gap).
                # Set the timer again rather than prepare early and sleep on it.
                log.info("run %d: timer for %s woke early by its clock; set again", run_id, due_at)
                ctx.timers.set_on(
                    job_id(run_id, due_at), armed.clock, wake, self._job(run_id, due_at)
                )
                return
        claimed = self._claimed[run_id]
        rows = [
            d
            for d in await ctx.store.ledger.dispatches(run_id)
            if d.due_at <= due_at and d.state in _WAITING and (d.city_id, d.stage_id) not in claimed
        ]
        if not any(d.due_at == due_at for d in rows):
            return
        # Earlier dispatches still waiting go with this one, in stage order.
        prepared = sorted([await ctx.build_release(armed, r) for r in rows], key=stage_order)
        await ctx.dispatcher.prepare(prepared)
        if ctx.crew is not None and armed.drill_room is None:
            # Who else is in each room decides duty: known before the instant.
            await ctx.crew.learn_members([room for r in prepared for room in r.rooms])
            # Read where this member may look, so the look reads locally
            # (bot/runs/warmup.py); in the background, never waited for.
            ctx.crew.warm(warmup.standby_rooms(ctx.crew, armed, prepared))
            if any(gates.gated(armed, r) for r in prepared):
                # Whoever decides a gate counts our check-ins too (by the instant).
                ctx.supervisor.spawn(
                    gates.share_checkins(ctx, armed, prepared), run_id, "check-ins"
                )
        await armed.clock.sleep_until(due_at)
        if ctx.armed.get(run_id) is not armed:
            return  # disarmed while we prepared
        if ctx.failsafe is not None:
            # Late (a restart): what the server already sent is not sent again.
            await ctx.failsafe.before_late(armed, prepared)
        await self.release_at_instant(armed, prepared)

    async def release_at_instant(
        self,
        armed: ArmedRun,
        prepared: Sequence[Release],
        cause: Cause = Cause.TIMER,
        *,
        followed: Mapping[tuple[str, str], GateDecision] | None = None,
    ) -> None:
        """Decide, commit the decisions, start the fan-out, and only then tell the
        control room about skips and holds. One read and one write for all
        cities before the first request leaves: every database round trip here
        is lateness for the first room.

        With a crew, a gated city another member is on duty for waits for its
        published decision (bot/runs/gates.py) without holding up the rest."""
        run_id, crew = armed.run.id, self._ctx.crew
        if crew is not None and cause is Cause.TIMER and followed is None:
            waiting = gates.followers(crew, armed, prepared)
            if waiting:
                self._ctx.supervisor.spawn(self._follow(armed, waiting), run_id, "gate")
                prepared = [r for r in prepared if r not in waiting]
        shares: list[CheckinShare] = []
        if (
            crew is not None
            and cause is Cause.TIMER
            and any(gates.gated(armed, r) for r in prepared)
        ):
            # Read before the lock: the others' check-ins, for the gates we decide.
            shares = await gates.read_shares(crew, armed)
        async with self._locks[run_id]:
            plan, fanout = await self._decide_and_start(
                armed, prepared, cause, followed or {}, shares
            )
        keys = [(r.city_id, r.stage_id) for r in plan.release]
        if self._ctx.failsafe is not None and plan.verdicts:
            # Stages a gate held or skipped: their delayed events must not fire.
            self._ctx.supervisor.spawn(self._ctx.failsafe.settle(armed), run_id, "failsafe")
        try:
            outcomes: list[Outcome] = []
            try:
                for text in plan.reports:
                    await self._ctx.notifier.report(armed.run.control_room, text)
                if plan.abort_cities:
                    await self.abort(armed, plan.abort_cities, None)
            finally:
                outcomes = await fanout if fanout is not None else []
            if outcomes:
                await self.finish_releases(armed, outcomes, plan.late_by, plan.late_reason)
        finally:
            # Claimed until RELEASED is written: a timer meanwhile must not take
            # these again (it would only report them twice, but still).
            self._claimed[run_id].difference_update(keys)
        await self.maybe_finish(armed)

    async def _follow(self, armed: ArmedRun, waiting: Sequence[Release]) -> None:
        crew = self._ctx.crew
        assert crew is not None
        found = await gates.await_decisions(self._ctx, crew, armed, waiting)
        await self.release_at_instant(armed, waiting, Cause.TIMER, followed=found)

    async def _decide_and_start(
        self,
        armed: ArmedRun,
        prepared: Sequence[Release],
        cause: Cause,
        followed: Mapping[tuple[str, str], GateDecision],
        shares: Sequence[CheckinShare] = (),
    ) -> tuple[InstantPlan, asyncio.Future[list[Outcome]] | None]:
        ctx, run_id = self._ctx, armed.run.id
        claimed = self._claimed[run_id]
        todo = [r for r in prepared if (r.city_id, r.stage_id) not in claimed]
        if not todo:
            return InstantPlan(), None
        rows = {(d.city_id, d.stage_id): d for d in await ctx.store.ledger.dispatches(run_id)}
        gated = armed.drill_room is None and any(
            armed.scenario.stage(lanes.stage_of(r.stage_id)).require for r in todo
        )
        now = armed.clock.now()
        checkins = (
            lane_checkins(
                armed.scenario, await ctx.store.participants.checkin_counts_by_lane(run_id)
            )
            if gated
            else {}
        )
        if shares and ctx.crew is not None:
            checkins = await gates.with_shared(ctx, ctx.crew, armed, checkins, shares)
        checkins = gates.with_followed(armed, checkins, followed)
        plan = plan_instant(
            scenario=armed.scenario,
            label=armed.label(),
            rows=rows,
            prepared=todo,
            held_cities=armed.held_cities,
            checkins=checkins,
            now=now,
            armed_at=armed.run.armed_at,
            drill=armed.drill_room is not None,
            cause=cause,
        )
        # RELEASING is committed before any request leaves (a restart resumes it).
        await ctx.store.ledger.set_releasing(run_id, plan.releasing, released_at=now)
        await ctx.store.ledger.set_dispatch_states(
            run_id, [(v.city_id, v.stage_id, v.state, v.note) for v in plan.verdicts]
        )
        if ctx.crew is not None and gated and cause is Cause.TIMER:
            # The city's decision for the others to follow: after the writes,
            # in the background (the fan-out must not wait on it).
            mine = gates.decided(armed, plan, todo, checkins, followed)
            if mine:
                ctx.supervisor.spawn(gates.publish(ctx, armed, mine), run_id, "gate decision")
        if not plan.release:
            return plan, None
        claimed.update((r.city_id, r.stage_id) for r in plan.release)
        started = asyncio.Event()
        fanout = asyncio.ensure_future(
            self.fan_out(armed, plan.release, started, now=now, by_hand=cause is not Cause.TIMER)
        )
        waiter = asyncio.ensure_future(started.wait())
        try:
            # Hold the lock until every room has its place in the queue (or the
            # fan-out ended early): a later stage then queues behind this one.
            await asyncio.wait({fanout, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        return plan, fanout

    def fan_out(
        self,
        armed: ArmedRun,
        releases: Sequence[Release],
        started: asyncio.Event | None,
        *,
        now: datetime,
        by_hand: bool = False,
        priority: bool = False,
    ) -> Awaitable[list[Outcome]]:
        """The dispatcher's fan-out, or with a crew this member's part of it
        (bot/runs/covering.py). ``by_hand``: decided now (!resume, !release, an
        abort), so duty is judged now rather than at the stages' own time."""
        ctx, crew = self._ctx, self._ctx.crew
        if crew is None or armed.drill_room is not None:
            return ctx.dispatcher.release(releases, priority=priority, started=started)
        plan = covering.split(ctx, crew, armed, releases, now=now, instant=now if by_hand else None)
        return covering.fan_out(
            ctx, crew, armed, releases, plan, started=started, priority=priority
        )

    # -- after the fan-out -------------------------------------------------------------

    async def finish_releases(
        self,
        armed: ArmedRun,
        outcomes: Sequence[Outcome],
        late_by: Mapping[str, Mapping[str, timedelta]] | None = None,
        late_reason: Mapping[str, LateReason] | None = None,
    ) -> None:
        ctx = self._ctx
        if ctx.failsafe is not None:
            # The rooms now holding their dispatch: cancel their delayed events.
            await ctx.failsafe.settle(armed)
        if ctx.dispatcher.stopping:
            return  # pending rows resume on restart; no half-true report
        by_stage: dict[str, list[Outcome]] = defaultdict(list)
        for o in outcomes:
            by_stage[o.release.stage_id].append(o)
        for stage_id, group in by_stage.items():
            # Report first, then RELEASED: a crash in between re-fires the
            # dispatch on restart (every delivery already terminal, nothing is
            # sent) and reports again under the same txn id, which the homeserver
            # deduplicates. The other order lost the report for good.
            cities = sorted(o.release.city_id for o in group)
            await ctx.notifier.report(
                armed.run.control_room,
                stage_summary(
                    armed.scenario_id,
                    stage_id,
                    group,
                    late_by=(late_by or {}).get(stage_id),
                    drill=armed.drill_room is not None,
                    late_why=LATE_WHY[(late_reason or {}).get(stage_id, LateReason.UNAVAILABLE)],
                ),
                txn_id=run_report_txn(armed, "stage", stage_id, *cities),
            )
            for o in group:
                await ctx.store.ledger.set_dispatch_state(
                    o.release.run_id, o.release.city_id, stage_id, DispatchState.RELEASED
                )
                await ctx.store.ledger.mark_reported(o.release.run_id, o.release.city_id, stage_id)

    async def maybe_finish(self, armed: ArmedRun) -> None:
        rows = await self._ctx.store.ledger.dispatches(armed.run.id)
        if rows and all(d.state in DISPATCH_DONE for d in rows):
            await self.finish(armed)

    async def finish(self, armed: ArmedRun) -> None:
        ctx = self._ctx
        if ctx.armed.pop(armed.run.id, None) is None:
            return
        ctx.armed_changed()
        self._forget(armed.run.id)
        aborted = any(
            d.stage_id == ABORT_STAGE for d in await ctx.store.ledger.dispatches(armed.run.id)
        )
        # The notice before the run's end, idempotent (as a stage report): a
        # crash in between finishes the run again on restart, not silently.
        await ctx.notifier.report(
            armed.run.control_room,
            f"🏁 {armed.label()} (run {armed.run.id}) is complete"
            + (" (aborted)." if aborted else ": every stage was released or skipped."),
            txn_id=run_report_txn(armed, "complete"),
        )
        state = RunState.ABORTED if aborted else RunState.FINISHED
        await ctx.store.runs.end(armed.run.id, state, ctx.clock.now())
        log.info("run %d of %s finished", armed.run.id, armed.scenario_id)

    def _forget(self, run_id: int) -> None:
        self._locks.pop(run_id, None)
        self._claimed.pop(run_id, None)

    # -- stopping ------------------------------------------------------------------------

    async def cancel_city(self, armed: ArmedRun, city_id: str, reason: str) -> int:
        """Cancel every not-yet-released dispatch of one city (every pod of it) or
        of one pod (``hk/mongkok``); returns how many."""
        ctx = self._ctx
        ctx.dispatcher.cancel(armed.run.id, lanes.lanes_of(armed.scenario, city_id))
        pending = [
            (d.city_id, d.stage_id, DispatchState.CANCELLED, reason)
            for d in await ctx.store.ledger.dispatches(armed.run.id)
            if lanes.on_target(d.city_id, [city_id]) and d.state in DISPATCH_PENDING
        ]
        await ctx.store.ledger.set_dispatch_states(armed.run.id, pending)
        return len(pending)

    async def abort(self, armed: ArmedRun, cities: Sequence[str], message: str | None) -> int:
        """Cancel every pending stage of these cities (or pods) and send the stop
        message to every room they serve, ahead of any other traffic of this run.
        In a city with pods each pod gets its own stop message (rendered with its
        own places only). Returns how many pending stages were cancelled; the
        sending goes on in the background."""
        ctx, run_id = self._ctx, armed.run.id
        if ctx.failsafe is not None:
            # First: the server must never release an aborted stage.
            await ctx.failsafe.steer(armed, Steer.ABORT, cities)
        now = armed.clock.now()
        cancelled = 0
        releases: list[Release] = []
        targets = [lane for t in cities for lane in lanes.lanes_of(armed.scenario, t)]
        for city_id in dict.fromkeys(targets):
            # One transaction: never stages cancelled without the stop message.
            async with ctx.store.transaction():
                cancelled += await self.cancel_city(armed, city_id, "aborted")
                await ctx.store.ledger.add_dispatch(
                    run_id, city_id, ABORT_STAGE, SYNTHETIC_INDEX, now, DispatchState.RELEASING
                )
                row = await ctx.store.ledger.dispatch(run_id, city_id, ABORT_STAGE)
            if row is not None and row.state in DISPATCH_DONE:
                continue  # already aborted
            releases.append(
                Release(
                    run_id=run_id,
                    scenario_id=armed.scenario_id,
                    city_id=city_id,
                    stage_id=ABORT_STAGE,
                    due_at=now,
                    rooms=tuple(await ctx.lane_rooms(armed, city_id, None, refresh=False)),
                    messages=(
                        _stop_message(
                            armed, city_id, message, ctx.translator(armed, lanes.city_of(city_id))
                        ),
                    ),
                    final=True,
                    run_key=armed.run_key,
                    stage_index=SYNTHETIC_INDEX,
                )
            )
        ctx.supervisor.spawn(self.release_and_report(armed, releases), run_id, "abort")
        return cancelled

    async def release_and_report(
        self, armed: ArmedRun, releases: Sequence[Release], *, priority: bool = True
    ) -> None:
        if releases:
            now = armed.clock.now()
            outcomes = await self.fan_out(
                armed, releases, None, now=now, by_hand=True, priority=priority
            )
            await self.finish_releases(armed, outcomes)
        await self.maybe_finish(armed)


def _stop_message(armed: ArmedRun, lane: str, message: str | None, t: Translator) -> Message:
    city, pod = lanes.pod_of(armed.scenario, lane)
    label = f"[DRILL] {armed.scenario_id} · {city.name}" if armed.drill_room is not None else None
    template = message or armed.scenario.abort_text
    if template is None:
        # The bot's own words, in the city's language (English exactly as before).
        said = say.abort_text(t, city_name=city.name).bold()
        body, html = said.body, said.html
        if label is not None:
            body, html = f"{label}\n{body}", f"<b>{to_html(label)}</b><br/>{html}"
    else:
        try:
            body = render_template(
                template,
                armed.scenario,
                city,
                place_overrides=armed.overrides_for(lane),
                delay=armed.delay_for(lane),
                pod=pod,
            )
        except ValueError:
            body = template  # a typed message with braces: send it as written
        if label is not None:
            body = f"{label}\n{body}"
        html = f"<b>{to_html(body)}</b>"
    content = {
        "msgtype": "m.text",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": html,
    }
    return Message(Part.TEXT, "m.room.message", content)
