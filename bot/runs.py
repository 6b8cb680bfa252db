"""Armed runs: arm, disarm, restore after a restart, and fire stages at their instant.

A *run* is one arming of a scenario. Its dispatches (city x stage, with their
instants) are rows in the store; timers are rebuilt from those rows on every
start. At each instant the run manager renders the stage (just before, in
memory), decides per city (late policy, holds, gates), and hands the releases
to the dispatcher, then reports to the run's control room.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from bot.clock import Clock
from bot.content import stage_messages
from bot.dispatch import Dispatcher, Outcome, Release
from bot.ledger import DISPATCH_DONE, DispatchState
from bot.library import LibraryError, LoadedScenario, ScenarioLibrary, load_file
from bot.matrix.rooms import RoomRegistry
from bot.notify import Notifier
from bot.policy import Action, decide, retry_deadline
from bot.report import PlanLine, plan_table, stage_summary
from bot.scenario import Place, build_timeline, render_stage
from bot.schedule import Timers
from bot.store import DispatchRow, PlannedDispatch, RunRow, Store

log = logging.getLogger(__name__)

CheckinCount = Callable[[int, str, str], Awaitable[int]]
"""(run_id, city_id, stage_id) -> check-ins in that city since the previous stage."""


async def _no_checkins(run_id: int, city_id: str, stage_id: str) -> int:
    return 0


class ArmError(Exception):
    """Arming refused; the message is for the control room (ids only)."""


@dataclass
class ArmedRun:
    run: RunRow
    loaded: LoadedScenario
    clock: Clock
    drill_room: str | None = None
    # city_id -> place_id -> replacement (set by !redirect)
    place_overrides: dict[str, dict[str, Place]] = field(default_factory=dict)
    held_cities: set[str] = field(default_factory=set)

    @property
    def scenario_id(self) -> str:
        return self.run.scenario_id


class RunManager:
    def __init__(
        self,
        *,
        store: Store,
        library: ScenarioLibrary,
        rooms: RoomRegistry,
        dispatcher: Dispatcher,
        timers: Timers,
        notifier: Notifier,
        clock: Clock,
        ready: asyncio.Event,
        prepare_seconds: float = 3.0,
        checkins: CheckinCount = _no_checkins,
    ) -> None:
        self._store = store
        self._library = library
        self._rooms = rooms
        self._dispatcher = dispatcher
        self._timers = timers
        self._notifier = notifier
        self._clock = clock
        self._ready = ready
        self._lead = timedelta(seconds=prepare_seconds)
        self._checkins = checkins
        self.armed: dict[int, ArmedRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups -----------------------------------------------------------------------

    def by_scenario(self, scenario_id: str) -> ArmedRun | None:
        return next((a for a in self.armed.values() if a.scenario_id == scenario_id), None)

    # -- arming ------------------------------------------------------------------------

    async def arm(
        self,
        scenario_id: str,
        *,
        sender: str,
        control_room: str,
        clock: Clock | None = None,
        drill_room: str | None = None,
        start: datetime | None = None,
    ) -> tuple[str, str]:
        """Arm a scenario from the library. Returns (message, masked plan table).
        ``clock``/``drill_room`` are for drills; ``start`` overrides T0 (demo)."""
        if self.by_scenario(scenario_id) is not None:
            raise ArmError(f"{scenario_id} is already armed; !disarm {scenario_id} first")
        try:
            loaded = self._library.find(scenario_id)
        except LibraryError as err:
            detail = "; ".join(str(d) for d in err.diagnostics[:5])
            more = f" (+{len(err.diagnostics) - 5} more)" if len(err.diagnostics) > 5 else ""
            raise ArmError(f"{err}" + (f": {detail}{more}" if detail else "")) from None
        scenario = loaded.scenario
        if start is not None:
            scenario = scenario.model_copy(update={"start": start})
            loaded = LoadedScenario(loaded.path, loaded.sha256, scenario)
        run_clock = clock or self._clock
        now = run_clock.now()
        timeline = build_timeline(scenario)
        run_id = await self._store.create_run(
            scenario_id=scenario.id,
            source_path=str(loaded.path),
            source_sha256=loaded.sha256
            if start is None
            else f"{loaded.sha256}@{start.isoformat()}",
            armed_by=sender,
            control_room=control_room,
            now=now,
            dispatches=[
                PlannedDispatch(d.city_id, d.stage_id, d.stage_index, d.at) for d in timeline
            ],
        )
        run = next(r for r in await self._store.armed_runs() if r.id == run_id)
        armed = ArmedRun(run, loaded, run_clock, drill_room=drill_room)
        self.armed[run_id] = armed
        self._schedule(armed, await self._store.dispatches(run_id))
        log.info("armed %s as run %d by %s", scenario.id, run_id, sender)

        lines: list[PlanLine] = []
        problems: list[str] = []
        for city in scenario.cities:
            if drill_room is not None:
                served = [drill_room]
            else:
                served = await self._rooms.served_rooms(city.rooms)
                for room, why in (await self._rooms.missing_rooms(city.rooms)).items():
                    problems.append(f"{city.id}: {room}: {why}")
            for d in timeline:
                if d.city_id == city.id:
                    lines.append(PlanLine(d.at, city.id, city.timezone, d.stage_id, len(served)))
        lines.sort(key=lambda ln: (ln.at, ln.city_id))
        past = [ln for ln in lines if ln.at <= now]
        text = (
            f"Armed {scenario.id} (run {run_id}): {len(lines)} dispatches in "
            f"{len(scenario.cities)} cities. Stage texts and places stay secret until release."
        )
        if past:
            text += f"\n{len(past)} dispatches are already past and follow their late policy now."
        if problems:
            text += "\nProblems:\n" + "\n".join(f"- {p}" for p in problems)
        return text, plan_table(lines, now)

    async def disarm(self, scenario_id: str) -> str:
        armed = self.by_scenario(scenario_id)
        if armed is None:
            raise ArmError(f"{scenario_id} is not armed")
        run_id = armed.run.id
        self._timers.cancel_prefix(f"run{run_id}@")
        self._dispatcher.cancel(run_id, [c.id for c in armed.loaded.scenario.cities])
        for d in await self._store.dispatches(run_id):
            if d.state in (DispatchState.SCHEDULED, DispatchState.HELD):
                await self._store.set_dispatch_state(
                    run_id, d.city_id, d.stage_id, DispatchState.CANCELLED, note="disarmed"
                )
        await self._store.end_run(run_id, "disarmed", self._clock.now())
        del self.armed[run_id]
        return f"Disarmed {scenario_id} (run {run_id}): nothing more will be sent."

    # -- restart -----------------------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild timers for every armed run from the store (after a restart)."""
        for run in await self._store.armed_runs():
            try:
                loaded = load_file(Path(run.source_path))
            except LibraryError as err:
                await self._suspend(run, f"its file can no longer be loaded ({err})")
                continue
            sha, _, start = run.source_sha256.partition("@")
            if loaded.sha256 != sha:
                await self._suspend(run, "its file changed since it was armed")
                continue
            if start:
                scenario = loaded.scenario.model_copy(
                    update={"start": datetime.fromisoformat(start)}
                )
                loaded = LoadedScenario(loaded.path, loaded.sha256, scenario)
            armed = ArmedRun(run, loaded, self._clock)
            self.armed[run.id] = armed
            rows = await self._store.dispatches(run.id)
            self._schedule(armed, rows)
            log.info("restored run %d of %s", run.id, run.scenario_id)
            if all(d.state in DISPATCH_DONE for d in rows):
                await self._finish(armed)

    async def _suspend(self, run: RunRow, why: str) -> None:
        # Safety first: a run whose file changed or vanished is not released from
        # a guess. The organisers re-arm it explicitly.
        log.warning("run %d of %s not restored: %s", run.id, run.scenario_id, why)
        for d in await self._store.dispatches(run.id):
            if d.state not in DISPATCH_DONE:
                await self._store.set_dispatch_state(
                    run.id, d.city_id, d.stage_id, DispatchState.CANCELLED, note=why
                )
        await self._store.end_run(run.id, "disarmed", self._clock.now())
        await self._notifier.report(
            run.control_room,
            f"⚠️ {run.scenario_id} (run {run.id}) was disarmed on restart: {why}. "
            f"Nothing more of it will be sent; check the file and !arm {run.scenario_id} again.",
        )

    # -- timers ------------------------------------------------------------------------

    def _schedule(self, armed: ArmedRun, rows: Sequence[DispatchRow]) -> None:
        due = sorted(
            {
                d.due_at
                for d in rows
                if d.state in (DispatchState.SCHEDULED, DispatchState.RELEASING)
            }
        )
        for at in due:
            self._timers.set(
                f"run{armed.run.id}@{at.isoformat()}",
                armed.clock.to_wall(at - self._lead),
                self._job(armed.run.id, at),
            )

    def reschedule(self, armed: ArmedRun, rows: Sequence[DispatchRow]) -> None:
        self._timers.cancel_prefix(f"run{armed.run.id}@")
        self._schedule(armed, rows)

    def _job(self, run_id: int, due_at: datetime) -> Callable[[], Awaitable[None]]:
        async def fire() -> None:
            # Run as a task of our own so shutdown can wait for it and an error
            # is reported instead of vanishing into the scheduler's log.
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await self.fire(run_id, due_at)
            except Exception:
                log.exception("firing run %d at %s failed", run_id, due_at.isoformat())
                armed = self.armed.get(run_id)
                await self._notifier.report(
                    armed.run.control_room if armed else None,
                    f"⚠️ Run {run_id}: the release due at {due_at:%H:%M:%SZ} hit an internal "
                    "error; see the bot's log. Undelivered rooms stay pending.",
                )
            finally:
                if task is not None:
                    self._tasks.discard(task)

        return fire

    async def wait_idle(self, seconds: float) -> None:
        """Shutdown: give releases in flight a moment to finish their requests."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)

    # -- release -----------------------------------------------------------------------

    async def build_release(self, armed: ArmedRun, row: DispatchRow) -> Release:
        scenario = armed.loaded.scenario
        city = scenario.city(row.city_id)
        stage = scenario.stage(row.stage_id)
        rendered = render_stage(
            scenario, city.id, stage.id, place_overrides=armed.place_overrides.get(city.id)
        )
        drill_label = None
        if armed.drill_room is not None:
            drill_label = f"{scenario.id} · {city.name} · {stage.id}"
        if armed.drill_room is not None:
            rooms: list[str] = [armed.drill_room]
        else:
            rooms = await self._rooms.served_rooms(city.rooms, refresh=True)
            # Rooms already in the ledger for this dispatch (a resumed release)
            # keep their rows even if they were since removed: the dispatcher
            # skips what it cannot send, and never sends a SENT row again.
            for d in await self._store.deliveries(row.run_id, row.city_id, row.stage_id):
                if d.key.room_id not in rooms:
                    rooms.append(d.key.room_id)
        return Release(
            run_id=row.run_id,
            scenario_id=scenario.id,
            city_id=city.id,
            stage_id=stage.id,
            due_at=row.due_at,
            rooms=tuple(rooms),
            messages=stage_messages(rendered, drill_label=drill_label),
            deadline=retry_deadline(row.due_at, stage.late.skip_after)
            if armed.drill_room is None
            else None,
        )

    async def fire(self, run_id: int, due_at: datetime) -> None:
        await self._ready.wait()  # no send before the first sync knows the rooms
        armed = self.armed.get(run_id)
        if armed is None:
            return
        rows = [
            d
            for d in await self._store.dispatches(run_id)
            if d.due_at == due_at and d.state in (DispatchState.SCHEDULED, DispatchState.RELEASING)
        ]
        if not rows:
            return
        prepared = {(r.city_id, r.stage_id): await self.build_release(armed, r) for r in rows}
        await self._dispatcher.prepare(list(prepared.values()))
        await armed.clock.sleep_until(due_at)
        if self.armed.get(run_id) is not armed:
            return  # disarmed while we prepared
        await self._decide_and_release(armed, due_at, prepared)

    async def _decide_and_release(
        self,
        armed: ArmedRun,
        due_at: datetime,
        prepared: dict[tuple[str, str], Release],
        *,
        forced: bool = False,
    ) -> None:
        run_id = armed.run.id
        scenario = armed.loaded.scenario
        now = armed.clock.now()
        to_release: list[Release] = []
        late_by: dict[str, dict[str, timedelta]] = defaultdict(dict)
        for (city_id, stage_id), release in prepared.items():
            row = await self._store.dispatch(run_id, city_id, stage_id)
            if row is None or row.state in DISPATCH_DONE or (row.due_at != due_at and not forced):
                continue
            if row.state is DispatchState.RELEASING:
                to_release.append(release)  # resumed after a restart: already decided
                late_by[stage_id][city_id] = max(now - due_at, timedelta(0))
                continue
            stage = scenario.stage(stage_id)
            gate = stage.require
            decision = decide(
                due_at=due_at,
                now=now,
                skip_after=stage.late.skip_after,
                city_held=city_id in armed.held_cities,
                gate_checkins=gate.checkins if gate else None,
                gate_otherwise=gate.otherwise if gate else None,
                checkins=await self._checkins(run_id, city_id, stage_id) if gate else 0,
                forced=forced,
            )
            if decision.action is Action.RELEASE:
                await self._store.set_dispatch_state(
                    run_id, city_id, stage_id, DispatchState.RELEASING, released_at=now
                )
                to_release.append(release)
                late_by[stage_id][city_id] = decision.late_by
            elif decision.action is Action.SKIP:
                await self._store.set_dispatch_state(
                    run_id, city_id, stage_id, DispatchState.SKIPPED, note=decision.reason
                )
                await self._notifier.report(
                    armed.run.control_room,
                    f"⏭️ {scenario.id}: stage {stage_id} skipped in {city_id}: {decision.reason}.",
                )
            elif decision.action is Action.HOLD:
                await self._store.set_dispatch_state(
                    run_id, city_id, stage_id, DispatchState.HELD, note=decision.reason
                )
                await self._notifier.report(
                    armed.run.control_room,
                    f"⏸️ {scenario.id}: stage {stage_id} held in {city_id}: {decision.reason}. "
                    f"Use !release {scenario.id} {stage_id} {city_id} or !abort {scenario.id} "
                    f"{city_id}.",
                )
            elif decision.action is Action.ABORT:
                await self.on_gate_abort(armed, city_id, decision.reason)
        if to_release:
            outcomes = await self._dispatcher.release(to_release)
            await self._finish_releases(armed, outcomes, late_by)
        await self._maybe_finish(armed)

    async def on_gate_abort(self, armed: ArmedRun, city_id: str, reason: str) -> None:
        """A gate with ``else: abort``: the city's remaining stages are cancelled."""
        await self.cancel_city(armed, city_id, reason)
        await self._notifier.report(
            armed.run.control_room,
            f"⛔ {armed.scenario_id}: {city_id} aborted: {reason}. No more stages go there.",
        )

    async def cancel_city(self, armed: ArmedRun, city_id: str, reason: str) -> int:
        """Cancel every not-yet-released dispatch of one city; returns how many."""
        count = 0
        self._dispatcher.cancel(armed.run.id, [city_id])
        for d in await self._store.dispatches(armed.run.id):
            if d.city_id == city_id and d.state in (DispatchState.SCHEDULED, DispatchState.HELD):
                await self._store.set_dispatch_state(
                    armed.run.id, d.city_id, d.stage_id, DispatchState.CANCELLED, note=reason
                )
                count += 1
        return count

    async def _finish_releases(
        self,
        armed: ArmedRun,
        outcomes: Sequence[Outcome],
        late_by: dict[str, dict[str, timedelta]],
    ) -> None:
        if self._dispatcher.stopping:
            return  # pending rows resume on restart; no half-true report
        by_stage: dict[str, list[Outcome]] = defaultdict(list)
        for o in outcomes:
            by_stage[o.release.stage_id].append(o)
            await self._store.set_dispatch_state(
                o.release.run_id, o.release.city_id, o.release.stage_id, DispatchState.RELEASED
            )
        for stage_id, group in by_stage.items():
            await self._notifier.report(
                armed.run.control_room,
                stage_summary(
                    armed.scenario_id,
                    stage_id,
                    group,
                    late_by=late_by.get(stage_id),
                    drill=armed.drill_room is not None,
                ),
            )
            for o in group:
                await self._store.mark_reported(o.release.run_id, o.release.city_id, stage_id)

    async def _maybe_finish(self, armed: ArmedRun) -> None:
        rows = await self._store.dispatches(armed.run.id)
        if rows and all(d.state in DISPATCH_DONE for d in rows):
            await self._finish(armed)

    async def _finish(self, armed: ArmedRun) -> None:
        if self.armed.pop(armed.run.id, None) is None:
            return
        await self._store.end_run(armed.run.id, "finished", self._clock.now())
        log.info("run %d of %s finished", armed.run.id, armed.scenario_id)
        await self._notifier.report(
            armed.run.control_room,
            f"🏁 {'[drill] ' if armed.drill_room else ''}{armed.scenario_id} (run {armed.run.id}) "
            "is complete: every stage was released or skipped.",
        )
