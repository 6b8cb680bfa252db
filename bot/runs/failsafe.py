"""The dead-man's switch in a running bot (docs/crew.md, "The switch"): the
hooks arming, the instant and steering call, and the bot's periodic pass.

- ``!arm``: :meth:`Switch.check` probes and plans (counts in the reply; a
  refusal arms nothing), :meth:`Switch.armed` records and schedules;
- after an instant's decisions and its fan-out (:meth:`Switch.settle`): cancel
  each part now in its room (sent by this bot, or a crew member's copy found by
  its look as a standby) and each stage a gate held;
- a send later than half of ``after`` past its instant (:meth:`Switch.before_late`):
  cancel first; what the server no longer has it sent: not sent again;
- steering (:meth:`Switch.steer`) cancels first, then :meth:`Switch.replan`
  (``!delay``, ``!redirect``) or :meth:`Switch.resumed` schedule replacements;
- ``!purge`` (:meth:`Switch.purge`) cancels before the ids are deleted;
- :meth:`Switch.tick` (at start, then every 20 s): schedules deferred ones,
  retries, cancels whatever may no longer fire, and at start orphans.

With a crew, each member schedules only the rooms it is on duty for at arming.
Replies and logs carry counts and delivery ids, never delay ids or content.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from bot.content import stage_messages
from bot.delivery import COVERED, Release
from bot.failsafe import (
    LIVE,
    DelayedItem,
    DelayedRow,
    DelayedState,
    Limits,
    Steer,
    Target,
    arm_lines,
    check_after,
    delayed_content,
    plan_failsafe,
    steer,
)
from bot.failsafe.switch import Outcome as SwitchOutcome
from bot.failsafe.switch import cancel, cancel_orphans, schedule_due
from bot.ledger import DeliveryKey, DeliveryState, DispatchState
from bot.library import LoadedScenario
from bot.matrix.delayed import DelayedEvents, DelayedEventsError
from bot.preflight import fanout_estimate
from bot.runs.context import RunContext
from bot.runs.lanes import held, member_role, on_target
from bot.runs.model import ArmedRun, ArmPreview
from bot.scenario import build_timeline, render_stage
from bot.store.delayed import DelayedStore

log = logging.getLogger(__name__)

# (room, event type, content) -> what to schedule (encrypted for an encrypted room).
Seal = Callable[[str, str, dict[str, Any]], Awaitable[tuple[str, dict[str, Any]]]]

# A delayed event must be due at least this long after arming (the requests of a
# batch take a moment); nearer ones are not covered, and !arm says so.
MIN_LEAD = timedelta(seconds=5)
# Why the bot skips a part the homeserver sent (the crew's "covered" form).
BY_SERVER = f"{COVERED} the homeserver (failsafe)"
# Cancel requests in flight at once (steering waits on them).
_CANCEL_AT_ONCE = 8
_NOT_TO_FIRE = frozenset({DispatchState.HELD, DispatchState.SKIPPED, DispatchState.CANCELLED})


class Switch:
    def __init__(
        self,
        ctx: RunContext,
        server: DelayedEvents,
        seal: Seal,
        *,
        min_lead: timedelta = MIN_LEAD,
    ) -> None:
        self._ctx = ctx
        self._server = server
        self._seal = seal
        self._min_lead = min_lead
        self._started = False
        # The server answered a delayed send by sending it: no more requests.
        self._broken = False
        self._cancelling = asyncio.Lock()
        self._scheduling = asyncio.Lock()

    @property
    def _table(self) -> DelayedStore:
        return self._ctx.store.delayed

    def _now(self) -> datetime:
        clock = self._ctx.clock
        return clock.to_wall(clock.now())

    # -- arming ----------------------------------------------------------------------

    async def check(self, loaded: LoadedScenario, preview: ArmPreview) -> tuple[bool, list[str]]:
        """Whether this scenario may be armed with its failsafe here, and what
        ``!arm`` says about it (counts only). Nothing is scheduled."""
        after = loaded.scenario.failsafe.after
        if self._broken:
            return False, [
                "failsafe refused: this homeserver sent a delayed event at once earlier; "
                "check its delayed events (MSC4140) and restart the bot"
            ]
        try:
            support = await self._server.probe()
        except DelayedEventsError as err:
            return False, [f"failsafe refused: the homeserver could not be asked ({err})"]
        if not support.usable:
            return False, [f"failsafe refused: {support.why_not()}"]
        crew = self._ctx.crew
        crew_size = len(crew.crew.members) if crew is not None else 1
        biggest = max((ln.rooms for ln in preview.lines), default=0)
        fanout = fanout_estimate(biggest, 2, self._ctx.rate, burst=self._ctx.burst)
        why = check_after(
            after, crew_size=crew_size, grace=loaded.scenario.failover.grace, fanout=fanout
        )
        if why is not None:
            return False, [f"failsafe refused: {why}"]
        limits = Limits.from_ms(support.max_delay_ms, support.max_scheduled)
        targets = await self._targets(loaded, 0, "", set(preview.withheld))
        plan = plan_failsafe(
            targets, after=after, now=self._now(), limits=limits, min_lead=self._min_lead
        )
        try:
            existing = len(await self._server.scheduled())
        except DelayedEventsError as err:
            return False, [f"failsafe refused: the homeserver could not be asked ({err})"]
        return arm_lines(plan, limits, existing=existing)

    async def plan(
        self, loaded: LoadedScenario, run_key: str, withheld: Iterable[tuple[str, str]]
    ) -> list[DelayedItem]:
        """The run's delayed events, planned before the run exists (this asks the
        homeserver and the crew: no I/O may sit in the run's transaction); their
        keys carry run id 0 until :meth:`record`."""
        support = await self._server.ensure_supported()
        limits = Limits.from_ms(support.max_delay_ms, support.max_scheduled)
        targets = await self._targets(loaded, 0, run_key, set(withheld))
        plan = plan_failsafe(
            targets,
            after=loaded.scenario.failsafe.after,
            now=self._now(),
            limits=limits,
            min_lead=self._min_lead,
        )
        return [*plan.now, *plan.later]

    async def record(self, run_id: int, items: Iterable[DelayedItem]) -> None:
        """Record the planned rows for ``run_id``: called inside the transaction
        that creates the run, so both are stored or neither."""
        rows = [replace(i, key=replace(i.key, run_id=run_id)) for i in items]
        await self._table.add(rows, self._now())

    async def armed(self, armed: ArmedRun, recorded: Sequence[DelayedItem]) -> str:
        """Schedule what is due now of the rows recorded with the run (the
        others at their time, by the pass); a line for the ``!arm`` reply
        (counts only)."""
        outcome = await self._schedule()
        line = f"failsafe: {len(outcome.done)} delayed events scheduled on the homeserver"
        now = self._now()
        later = sum(1 for i in recorded if i.schedule_at > now)
        if later:
            line += f", {later} to be scheduled later"
        return line + outcome.trouble()

    async def _targets(
        self, loaded: LoadedScenario, run_id: int, run_key: str, withheld: set[tuple[str, str]]
    ) -> list[Target]:
        """Every (room, stage, part) this bot would send at its instant, in its
        sending order; with a crew only the rooms it is on duty for now."""
        scenario, ctx = loaded.scenario, self._ctx
        clock = ctx.clock
        now = clock.now()
        members = {
            c.id: await ctx.store.participants.direct_members(scenario.id, c.id)
            for c in scenario.cities
            if c.direct
        }
        duty: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        out: list[Target] = []
        for d in sorted(build_timeline(scenario), key=lambda d: (d.at, d.stage_index)):
            if d.at <= now or (d.lane, d.unit) in withheld:
                continue
            # The rooms as the instant serves this dispatch (RunContext.lane_rooms):
            # its variant's listed rooms and its pod's private participants with
            # its roles; one who joins after arming is not covered.
            served = await ctx.rooms.served_rooms(d.rooms, refresh=False)
            direct = [
                m.room_id
                for m in members.get(d.city_id, ())
                if m.pod_id == d.pod_id and member_role(scenario, m.role_id) in d.audiences
            ]
            served += [r for r in await ctx.rooms.served_rooms(direct) if r not in served]
            key_of = (d.city_id, tuple(served))
            if key_of not in duty:
                duty[key_of] = await self._on_duty(loaded, d.city_id, served, now)
            role = d.audiences[0]
            rendered = render_stage(scenario, d.city_id, d.stage_id, pod=d.pod_id, role=role)
            parts = [m.part for m in stage_messages(rendered)]
            for room in duty[key_of]:
                for part in parts:
                    key = DeliveryKey(run_id, scenario.id, d.lane, d.unit, room, part, run_key)
                    out.append(Target(key, clock.to_wall(d.at)))
        return out

    async def _on_duty(
        self, loaded: LoadedScenario, city_id: str, rooms: list[str], now: datetime
    ) -> list[str]:
        crew = self._ctx.crew
        if crew is None:
            return rooms
        await crew.learn_members(rooms)
        view, city = crew.view(), loaded.scenario.city(city_id)
        order = crew.crew.order_for(city)
        grace = loaded.scenario.failover.grace
        mine = []
        for room in rooms:
            duty = view.duty(
                crew.me, order=order, joined=crew.joined(room), instant=now, grace=grace, now=now
            )
            if duty.rank == 0:
                mine.append(room)
        return mine

    # -- the instant -----------------------------------------------------------------

    async def settle(self, armed: ArmedRun) -> None:
        """After an instant's decisions and after its fan-out: cancel the delayed
        events that must not fire any more — each delivery now in its room (sent
        by this bot, or another member's copy found), each stage a gate held or
        skipped."""
        stale = await self._stale_rows(armed.run.id)
        if stale:
            await self._tell(armed, await self._cancel(stale))

    async def _in_room(self, key: DeliveryKey) -> bool:
        row = await self._ctx.store.ledger.delivery(key)
        if row is None:
            return False
        if row.state is DeliveryState.SENT:
            return True
        return row.state is DeliveryState.SKIPPED and (row.last_error or "").startswith(COVERED)

    async def before_late(self, armed: ArmedRun, prepared: Sequence[Release]) -> None:
        """Before a send later than half of ``after`` past its instant (a restart,
        a retried database): cancel first; what the server no longer has it sent
        (or is sending): the bot records it as delivered and does not send it."""
        if not armed.scenario.failsafe.server:
            return
        half = armed.scenario.failsafe.after / 2
        now = self._now()
        late = {r.key_of() for r in prepared if now >= armed.clock.to_wall(r.due_at) + half}
        if not late:
            return
        rows = [
            s.row
            for s in await self._table.rows(armed.run.id)
            if s.row.state in LIVE and (s.row.key.city_id, s.row.key.stage_id) in late
        ]
        result = await self._cancel(rows)
        # Every row the server sent (found gone now, or by an earlier call that
        # stopped before this step): the room holds the dispatch. ``advance`` is
        # guarded (WHERE state = pending): two timers taking one stage agree.
        for stored in await self._table.rows(armed.run.id):
            key = stored.row.key
            if stored.row.state is DelayedState.SENT and (key.city_id, key.stage_id) in late:
                await self._ctx.store.ledger.advance(
                    key,
                    DeliveryState.PENDING,
                    DeliveryState.SKIPPED,
                    now=self._ctx.clock.now(),
                    error=BY_SERVER,
                )
        log.info(
            "run %d: late send; failsafe cancelled %d, %d already sent by the homeserver",
            armed.run.id,
            len(result.done),
            len(result.gone),
        )
        await self._tell(armed, result)

    # -- steering --------------------------------------------------------------------

    async def steer(
        self,
        armed: ArmedRun,
        action: Steer,
        cities: Iterable[str] | None = None,
        *,
        shift: timedelta = timedelta(0),
    ) -> tuple[DelayedRow, ...]:
        """First thing in a steering command: cancel the affected delayed events
        (the server must never release a held or aborted stage). Returns the
        replacements to schedule once the command has done its change
        (:meth:`replan`)."""
        rows = [s.row for s in await self._table.rows(armed.run.id)]
        plan = steer(rows, action, cities=cities, shift=shift)
        if plan.cancel:
            result = await self._cancel(plan.cancel)
            log.info(
                "run %d: %s cancelled %d delayed events first (%d to retry)",
                armed.run.id,
                action.value,
                len(result.done),
                len(result.retry),
            )
            await self._tell(armed, result)
        return plan.replace

    async def replan(self, armed: ArmedRun, rows: Iterable[DelayedRow]) -> None:
        """Schedule the replacements :meth:`steer` returned (a new generation each)."""
        now = self._now()
        count = 0
        for row in rows:
            if row.due - now < self._min_lead:
                continue  # too soon to be a failsafe
            await self._table.replace(row, now, now)
            count += 1
        if count:
            await self._tell(armed, await self._schedule())

    async def resumed(self, armed: ArmedRun, cities: Iterable[str]) -> None:
        """After ``!resume``: the held cities' stages still to come get their
        delayed events again (the hold cancelled them)."""
        wanted = set(cities)
        pending = {
            (d.city_id, d.stage_id)
            for d in await self._ctx.store.ledger.dispatches(armed.run.id)
            if d.state is DispatchState.SCHEDULED and on_target(d.city_id, wanted)
        }
        again = [
            replace(s.row, generation=s.row.generation + 1)
            for s in await self._table.rows(armed.run.id)
            if s.row.state in (DelayedState.CANCELLED, DelayedState.FAILED)
            and (s.row.key.city_id, s.row.key.stage_id) in pending
        ]
        await self.replan(armed, again)

    async def purge(self, scenario_id: str) -> int:
        """Before ``!purge`` deletes the ids: cancel every delayed event of the
        scenario that may still fire. Returns how many could not be cancelled
        (the purge must wait: without the id nobody could cancel them)."""
        rows = [s.row for s in await self._table.live_of_scenario(scenario_id)]
        if not rows:
            return 0
        result = await self._cancel(rows)
        return len(result.retry)

    # -- the periodic pass -----------------------------------------------------------

    async def tick(self) -> None:
        """Schedule what is due to be, then cancel what may no longer fire; at the
        first pass also cancel this account's orphans (after the SCHEDULING rows a
        crash left are resolved, or their events would be taken for orphans)."""
        try:
            outcome = await self._schedule()
            if not self._started:
                # A server without the feature holds none (and has no list to ask).
                usable = (await self._server.probe()).usable
                orphans = await cancel_orphans(self._table, self._server) if usable else 0
                self._started = True
                if orphans:
                    log.warning(
                        "failsafe: cancelled %d delayed events unknown to the store", orphans
                    )
            stale = await self._stale_rows()
            if stale:
                await self._cancel(stale)
        except DelayedEventsError as err:
            log.warning("failsafe pass: %s", err)
            return
        for armed in list(self._ctx.armed.values()):
            if any(k.run_id == armed.run.id for k in outcome.failed + outcome.retry):
                await self._tell(armed, outcome)

    async def _stale_rows(self, run_id: int | None = None) -> list[DelayedRow]:
        """Live rows that must not fire: their run ended, their city or stage is
        held (by the core group or a gate), skipped or cancelled, or their room
        holds the dispatch. A stage released but not delivered to a room (its
        sends failed) keeps its delayed event: the server is its last chance."""
        stale: list[DelayedRow] = []
        for stored in await self._table.live():
            row = stored.row
            if run_id is not None and row.key.run_id != run_id:
                continue
            armed = self._ctx.armed.get(row.key.run_id)
            if armed is None or held(armed.held_cities, row.key.city_id):
                stale.append(row)
                continue
            dispatch = await self._ctx.store.ledger.dispatch(
                row.key.run_id, row.key.city_id, row.key.stage_id
            )
            if dispatch is None or dispatch.state in _NOT_TO_FIRE or await self._in_room(row.key):
                stale.append(row)
        return stale

    async def _cancel(self, rows: Sequence[DelayedRow]) -> SwitchOutcome:
        """Cancel ``rows``, a few requests at once: steering waits on this before
        it acts (an abort's stop message too), so a thousand rows must not take
        a thousand round trips in a row."""
        groups = [rows[i::_CANCEL_AT_ONCE] for i in range(_CANCEL_AT_ONCE)]
        # One batch at a time: two paths (two timers, steering and the pass) may
        # name the same row, and only one may move it.
        async with self._cancelling:
            results = await asyncio.gather(
                *(cancel(self._table, self._server, g, self._now) for g in groups if g)
            )
        merged = SwitchOutcome()
        for r in results:
            merged.done += r.done
            merged.retry += r.retry
            merged.gone += r.gone
        return merged

    async def _schedule(self) -> SwitchOutcome:
        async def content_for(key: DeliveryKey) -> tuple[str, dict[str, Any]]:
            armed = self._ctx.armed.get(key.run_id)
            if armed is None:
                raise DelayedEventsError(f"run {key.run_id} is not armed")
            message = next(
                m
                for m in self._ctx.messages(armed, key.city_id, key.stage_id)
                if m.part is key.part
            )
            content = delayed_content(message.content, key)
            return await self._seal(key.room_id, message.event_type, content)

        # One batch at a time: two batches taking one row would both ask, and the
        # second, finding it scheduled, would cancel it as if steering had. Not
        # shared with cancels: steering must not wait behind a long batch.
        async with self._scheduling:
            if self._broken:
                return SwitchOutcome()
            outcome = await schedule_due(self._table, self._server, content_for, self._now)
        if outcome.sent_at_once:
            # An early release: never ask this server again until the bot restarts
            # (the rows left stay PENDING, and the pass cancels nothing it sent).
            self._broken = True
            log.error("failsafe: the homeserver sent a delayed event at once; switched off")
        return outcome

    async def _tell(self, armed: ArmedRun, outcome: SwitchOutcome) -> None:
        trouble = outcome.trouble()
        if trouble:
            await self._ctx.notifier.report(
                armed.run.control_room, f"⚠️ {armed.label()}{trouble.replace('; ', ': ', 1)}"
            )


async def counts_line(table: DelayedStore, runs: Iterable[ArmedRun]) -> str | None:
    """``!status`` / ``!crew``: how many delayed events of each run may still
    fire on this bot's homeserver, per city and stage (counts, never ids);
    None when no run shown uses the switch."""
    parts = []
    for armed in runs:
        if not armed.scenario.failsafe.server or armed.drill_room is not None:
            continue
        counts = await table.live_counts(armed.run.id)
        each = ", ".join(f"{c}/{s} {n}" for (c, s), n in sorted(counts.items()))
        parts.append(f"{armed.label()}: {sum(counts.values())}" + (f" ({each})" if each else ""))
    if not parts:
        return None
    return "Failsafe, delayed events on this bot's homeserver: " + "; ".join(parts)
