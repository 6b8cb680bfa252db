"""Armed runs: arm, disarm, restore after a restart, fire stages, and steer.

A *run* is one arming of a scenario (or one drill of it). Its dispatches (city
x stage, with their instants) are rows in the store; timers are rebuilt from
those rows on every start. At each instant the run manager renders the stage
(just before, in memory), decides per city (late policy, holds, gates), hands
the releases to the dispatcher, then reports to the run's control room.

Steering (hold, resume, delay, release now, redirect, abort) acts on the same
rows and goes through the same release path: an abort or a correction is a
release too, in the ledger like any stage.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bot.clock import Clock
from bot.content import stage_messages
from bot.dispatch import Dispatcher, Message, Outcome, Release
from bot.ledger import DISPATCH_DONE, DeliveryState, DispatchState, Part
from bot.library import LibraryError, LoadedScenario, ScenarioLibrary, load_file
from bot.matrix.rooms import RoomRegistry
from bot.matrix.sender import Sender, SendFailed
from bot.notify import Notifier
from bot.policy import Action, decide, format_duration, retry_deadline
from bot.preflight import fanout_warnings
from bot.report import PlanLine, plan_table, stage_summary
from bot.scenario import (
    Place,
    RenderError,
    Scenario,
    Stage,
    build_timeline,
    render_stage,
    render_template,
)
from bot.scenario.render import to_html
from bot.scenario.templates import parse_template
from bot.schedule import Timers
from bot.store import DispatchRow, PlannedDispatch, RunRow, Store, StoreError

log = logging.getLogger(__name__)

ABORT_STAGE = "!abort"  # synthetic stage ids start with "!": never a scenario slug
DEFAULT_ABORT_TEXT = (
    "STOP. The action in {city} is called off. Do not go on. Leave calmly, "
    "in small groups, and go home."
)
PENDING_STATES = (DispatchState.SCHEDULED, DispatchState.HELD)
# A timer that fires this much before its time on the run's clock saw a jump back.
_EARLY = timedelta(seconds=1)


class ArmError(Exception):
    """A command cannot be carried out; the message is for the control room (ids only)."""


@dataclass
class ArmedRun:
    run: RunRow
    loaded: LoadedScenario
    clock: Clock
    # city_id -> place_id -> replacement (from !redirect)
    place_overrides: dict[str, dict[str, Place]] = field(default_factory=dict)
    held_cities: set[str] = field(default_factory=set)
    delays: dict[str, timedelta] = field(default_factory=dict)

    @property
    def scenario_id(self) -> str:
        return self.run.scenario_id

    @property
    def scenario(self) -> Scenario:
        return self.loaded.scenario

    @property
    def drill_room(self) -> str | None:
        return self.run.drill_room

    def label(self) -> str:
        return f"[drill] {self.scenario_id}" if self.drill_room else self.scenario_id


def report_txn_id(run: RunRow, *parts: str) -> str:
    """A fixed txn id for one control-room report of a run, so sending it again
    after a crash posts nothing new. The run's arming instant is part of it: run
    ids restart at 1 with a new database on the same device."""
    raw = "\x1f".join((str(run.id), run.scenario_id, run.armed_at.isoformat(), *parts))
    return "blossom-report-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def mentions_place(stage: Stage, place_id: str) -> bool:
    """Whether a stage reveals ``place_id``: as its place or in any of its texts."""
    if stage.place == place_id:
        return True
    texts = [stage.text] if isinstance(stage.text, str) else list(stage.text.values())
    for text in texts:
        for ph in parse_template(text).placeholders():
            if ph.place == place_id:
                return True
    return False


class RunManager:
    def __init__(
        self,
        *,
        store: Store,
        library: ScenarioLibrary,
        rooms: RoomRegistry,
        dispatcher: Dispatcher,
        sender: Sender,
        timers: Timers,
        notifier: Notifier,
        clock: Clock,
        ready: asyncio.Event,
        prepare_seconds: float = 3.0,
        expected_msgs_per_second: float = 30.0,
        rate_burst: int = 0,
    ) -> None:
        self._store = store
        self._library = library
        self._rooms = rooms
        self._dispatcher = dispatcher
        self._sender = sender
        self._timers = timers
        self._notifier = notifier
        self._clock = clock
        self._ready = ready
        self._lead = timedelta(seconds=prepare_seconds)
        self._rate = expected_msgs_per_second
        self._burst = rate_burst
        self.armed: dict[int, ArmedRun] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lookups -----------------------------------------------------------------------

    def by_scenario(self, scenario_id: str, *, drill: bool = False) -> ArmedRun | None:
        return next(
            (
                a
                for a in self.armed.values()
                if a.scenario_id == scenario_id and (a.drill_room is not None) == drill
            ),
            None,
        )

    def get(self, scenario_id: str) -> ArmedRun:
        """The armed (real) run of a scenario, else its drill; ArmError if neither."""
        armed = self.by_scenario(scenario_id) or self.by_scenario(scenario_id, drill=True)
        if armed is None:
            raise ArmError(f"{scenario_id} is not armed")
        return armed

    def cities(self, armed: ArmedRun, city_id: str | None) -> list[str]:
        ids = [c.id for c in armed.scenario.cities]
        if city_id is None:
            return ids
        if city_id not in ids:
            raise ArmError(f"{armed.scenario_id} has no city {city_id} (cities: {', '.join(ids)})")
        return [city_id]

    # -- arming ------------------------------------------------------------------------

    def check_armable(self, scenario_id: str) -> None:
        """Raise ArmError now if the scenario cannot be loaded (before side effects)."""
        try:
            self._library.find(scenario_id)
        except LibraryError as err:
            raise ArmError(str(err)) from None

    async def adopt_room(self, room_id: str, by: str) -> None:
        """A room the bot made itself (a drill room): opted in, and usable for
        sending once the sync has brought it into the client's rooms."""
        await self._store.set_room(
            room_id, "joined", now=self._clock.now(), opted_in_by=by, note="created by the bot"
        )
        await self._rooms.wait_known(room_id)

    async def arm(
        self,
        scenario_id: str,
        *,
        sender: str,
        control_room: str,
        drill_room: str | None = None,
        drill_speed: float | None = None,
        drill_lead: timedelta = timedelta(seconds=3),
        start: datetime | None = None,
    ) -> tuple[str, str]:
        """Arm a scenario from the library. Returns (message, masked plan table).

        A drill (``drill_room``) runs on a scaled clock that reaches the first
        stage ``drill_lead`` (real time) from now, and sends only to the drill room.
        ``start`` overrides T0 (used by the demo).
        """
        if self.by_scenario(scenario_id, drill=drill_room is not None) is not None:
            what = "a drill of it is running" if drill_room else "it is already armed"
            raise ArmError(f"{scenario_id}: {what}; !disarm {scenario_id} first")
        try:
            loaded = self._library.find(scenario_id)
        except LibraryError as err:
            detail = "; ".join(str(d) for d in err.diagnostics[:5])
            more = f" (+{len(err.diagnostics) - 5} more)" if len(err.diagnostics) > 5 else ""
            raise ArmError(f"{err}" + (f": {detail}{more}" if detail else "")) from None
        scenario = loaded.scenario
        sha = loaded.sha256
        if start is not None:
            scenario = scenario.model_copy(update={"start": start})
            loaded = LoadedScenario(loaded.path, loaded.sha256, scenario)
            sha = f"{loaded.sha256}@{start.isoformat()}"
        timeline = build_timeline(scenario)
        run_clock: Clock = self._clock
        if drill_room is not None:
            from bot.clock import ScaledClock

            speed = drill_speed or 60.0
            first = min(d.at for d in timeline)
            run_clock = ScaledClock(first - drill_lead * speed, speed)
        now = run_clock.now()
        run_id = await self._store.create_run(
            scenario_id=scenario.id,
            source_path=str(loaded.path),
            source_sha256=sha,
            armed_by=sender,
            control_room=control_room,
            now=now,
            dispatches=[
                PlannedDispatch(d.city_id, d.stage_id, d.stage_index, d.at) for d in timeline
            ],
            drill_room=drill_room,
            drill_speed=drill_speed or (60.0 if drill_room else None),
        )
        run = next(r for r in await self._store.armed_runs() if r.id == run_id)
        armed = ArmedRun(run, loaded, run_clock)
        self.armed[run_id] = armed
        self._schedule(armed, await self._store.dispatches(run_id))
        log.info("armed %s as run %d by %s", scenario.id, run_id, sender)

        lines: list[PlanLine] = []
        problems: list[str] = []
        for city in scenario.cities:
            if drill_room is not None:
                served = [drill_room]
            else:
                served = await self.served_rooms(armed, city.id)
                for room, why in (await self._rooms.missing_rooms(city.rooms)).items():
                    problems.append(f"{city.id}: {room}: {why}")
            for d in timeline:
                if d.city_id == city.id:
                    lines.append(PlanLine(d.at, city.id, city.timezone, d.stage_id, len(served)))
        lines.sort(key=lambda ln: (ln.at, ln.city_id))
        past = [ln for ln in lines if ln.at <= now]
        kind = "Drill of" if drill_room else "Armed"
        text = (
            f"{kind} {scenario.id} (run {run_id}): {len(lines)} dispatches in "
            f"{len(scenario.cities)} cities. Stage texts and places stay secret until release."
        )
        if past:
            text += f"\n{len(past)} dispatches are already past and follow their late policy now."
        if problems:
            text += "\nProblems:\n" + "\n".join(f"- {p}" for p in problems)
        # Pre-flight: can each instant's fan-out finish before the next stage?
        msgs = {
            (d.city_id, d.stage_id): len(self._messages(armed, d.city_id, d.stage_id))
            for d in timeline
        }
        warnings = fanout_warnings(
            [(ln.at, ln.rooms, msgs[(ln.city_id, ln.stage_id)]) for ln in lines if ln.at > now],
            self._rate,
            burst=self._burst,
        )
        if warnings:
            text += "\nPre-flight (at dispatch.expected_msgs_per_second):\n" + "\n".join(
                f"- {w}" for w in warnings
            )
        return text, plan_table(lines, now)

    async def disarm(self, scenario_id: str) -> str:
        armed = self.get(scenario_id)
        run_id = armed.run.id
        self._timers.cancel_prefix(f"run{run_id}@")
        self._dispatcher.cancel(run_id, [c.id for c in armed.scenario.cities])
        for d in await self._store.dispatches(run_id):
            if d.state in PENDING_STATES:
                await self._store.set_dispatch_state(
                    run_id, d.city_id, d.stage_id, DispatchState.CANCELLED, note="disarmed"
                )
        await self._store.end_run(run_id, "disarmed", self._clock.now())
        del self.armed[run_id]
        return f"Disarmed {armed.label()} (run {run_id}): nothing more will be sent."

    # -- restart -----------------------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild timers for every armed run from the store (after a restart)."""
        for run in await self._store.armed_runs():
            if run.drill_room is not None:
                # A drill's compressed clock cannot be resumed meaningfully.
                await self._end_incomplete(run, "the bot restarted during the drill", "disarmed")
                continue
            try:
                loaded = load_file(Path(run.source_path))
            except LibraryError as err:
                await self._end_incomplete(
                    run, f"its file can no longer be loaded ({err})", "disarmed"
                )
                continue
            sha, _, start = run.source_sha256.partition("@")
            if loaded.sha256 != sha:
                await self._end_incomplete(run, "its file changed since it was armed", "disarmed")
                continue
            if start:
                scenario = loaded.scenario.model_copy(
                    update={"start": datetime.fromisoformat(start)}
                )
                loaded = LoadedScenario(loaded.path, loaded.sha256, scenario)
            armed = ArmedRun(run, loaded, self._clock)
            armed.held_cities = await self._store.held_cities(run.id)
            armed.delays = {
                c: timedelta(seconds=s) for c, s in (await self._store.delays(run.id)).items()
            }
            for city_id, place_id, name, geo in await self._store.redirects(run.id):
                armed.place_overrides.setdefault(city_id, {})[place_id] = Place(
                    id=place_id, name=name, geo=geo, note=None
                )
            self.armed[run.id] = armed
            rows = await self._store.dispatches(run.id)
            self._schedule(armed, rows)
            log.info("restored run %d of %s", run.id, run.scenario_id)
            if all(d.state in DISPATCH_DONE for d in rows):
                # Finished before the restart, but its "complete" notice may not
                # have gone out: send it (idempotently) once the sync is up.
                self._after_ready(run.id, "finishing", functools.partial(self._finish, armed))

    def _after_ready(self, run_id: int, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` once the first sync is done. restore() runs before it, and
        until then the client knows no room: nio refuses to send ("No such room")
        and a notice sent then would be lost."""

        async def later() -> None:
            await self._ready.wait()
            await work()

        task = asyncio.create_task(self._guarded(later(), run_id, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_incomplete(self, run: RunRow, why: str, state: str) -> None:
        # Safety first: a run whose file changed or vanished is not released from
        # a guess. The organisers re-arm it explicitly.
        log.warning("run %d of %s not restored: %s", run.id, run.scenario_id, why)
        for d in await self._store.dispatches(run.id):
            if d.state not in DISPATCH_DONE:
                await self._store.set_dispatch_state(
                    run.id, d.city_id, d.stage_id, DispatchState.CANCELLED, note=why
                )
        await self._store.end_run(run.id, state, self._clock.now())
        text = (
            f"⚠️ {run.scenario_id} (run {run.id}) was disarmed on restart: {why}. "
            f"Nothing more of it will be sent; check it and !arm {run.scenario_id} again."
        )
        self._after_ready(
            run.id, "reporting", lambda: self._notifier.report(run.control_room, text)
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
            self._timers.set_on(
                f"run{armed.run.id}@{at.isoformat()}",
                armed.clock,
                at - self._lead,
                self._job(armed.run.id, at),
            )

    def _job(
        self, run_id: int, due_at: datetime, attempt: int = 0
    ) -> Callable[[], Awaitable[None]]:
        async def fire() -> None:
            try:
                await self._guarded(
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
                # The database is locked or full. Nothing was marked sent that was
                # not sent (SENDING is written before each request), so firing
                # again later is safe; the late policy applies as usual.
                retry_in = min(30, 2 + 2 * attempt)
                log.error(
                    "run %d: database unavailable (%s); retrying in %ds", run_id, err, retry_in
                )
                armed = self.armed.get(run_id)
                if attempt == 0 and armed is not None:
                    await self._notifier.report(
                        armed.run.control_room,
                        f"⚠️ {armed.label()}: the bot's database is unavailable ({err}). "
                        "Undelivered rooms stay pending; retrying until it is back.",
                    )
                if armed is not None:
                    self._timers.set(
                        f"run{run_id}@{due_at.isoformat()}",
                        self._clock.to_wall(self._clock.now() + timedelta(seconds=retry_in)),
                        self._job(run_id, due_at, attempt + 1),
                    )

        return fire

    async def _guarded(
        self,
        work: Awaitable[None],
        run_id: int,
        what: str,
        reraise: tuple[type[Exception], ...] = (),
    ) -> None:
        """Run release work as a tracked task: shutdown waits for it, and an error
        is reported instead of vanishing into the scheduler's log."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await work
        except reraise:
            raise
        except Exception:
            log.exception("run %d: %s failed", run_id, what)
            armed = self.armed.get(run_id)
            await self._notifier.report(
                armed.run.control_room if armed else None,
                f"⚠️ Run {run_id}: {what} hit an internal error; see the bot's log. "
                "Undelivered rooms stay pending.",
            )
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def wait_idle(self, seconds: float) -> None:
        """Shutdown: give releases in flight a moment to finish their requests."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)

    # -- rooms ---------------------------------------------------------------------------

    async def served_rooms(
        self, armed: ArmedRun, city_id: str, *, refresh: bool = True
    ) -> list[str]:
        """Rooms that get this city's stages now: the drill room in a drill;
        otherwise the opted-in listed rooms plus private (direct) participants.
        ``refresh=False`` takes aliases as last resolved (no request for those
        already known): for check-ins, and for an abort, which must not wait on
        the homeserver before its stop message leaves."""
        if armed.drill_room is not None:
            return [armed.drill_room]
        city = armed.scenario.city(city_id)
        rooms = await self._rooms.served_rooms(city.rooms, refresh=refresh)
        if city.direct:
            direct = await self._store.direct_rooms(armed.scenario_id, city_id)
            rooms += [r for r in await self._rooms.served_rooms(direct) if r not in rooms]
        return rooms

    async def runs_of_room(self, room_id: str) -> list[tuple[ArmedRun, str]]:
        """(armed run, city id) pairs whose stages go to this room."""
        found: list[tuple[ArmedRun, str]] = []
        for armed in list(self.armed.values()):
            for city in armed.scenario.cities:
                if room_id in await self.served_rooms(armed, city.id, refresh=False):
                    found.append((armed, city.id))
        return found

    # -- release -----------------------------------------------------------------------

    def _messages(self, armed: ArmedRun, city_id: str, stage_id: str) -> tuple[Message, ...]:
        rendered = render_stage(
            armed.scenario,
            city_id,
            stage_id,
            place_overrides=armed.place_overrides.get(city_id),
            delay=armed.delays.get(city_id),
        )
        label = None
        if armed.drill_room is not None:
            label = f"{armed.scenario_id} · {armed.scenario.city(city_id).name} · {stage_id}"
        return stage_messages(rendered, drill_label=label)

    async def build_release(self, armed: ArmedRun, row: DispatchRow) -> Release:
        stage = armed.scenario.stage(row.stage_id)
        rooms = await self.served_rooms(armed, row.city_id)
        # Rooms already in the ledger for this dispatch (a resumed release) keep
        # their rows; ones no longer served are skipped by the dispatcher, and a
        # SENT row is never sent again.
        for d in await self._store.deliveries(row.run_id, row.city_id, row.stage_id):
            if d.key.room_id not in rooms:
                rooms.append(d.key.room_id)
                self._dispatcher.forget_room(d.key.room_id)
        return Release(
            run_id=row.run_id,
            scenario_id=armed.scenario_id,
            city_id=row.city_id,
            stage_id=row.stage_id,
            due_at=row.due_at,
            rooms=tuple(rooms),
            messages=self._messages(armed, row.city_id, row.stage_id),
            deadline=retry_deadline(row.due_at, stage.late.skip_after)
            if armed.drill_room is None
            else None,
        )

    async def fire(self, run_id: int, due_at: datetime) -> None:
        await self._ready.wait()  # no send before the first sync knows the rooms
        armed = self.armed.get(run_id)
        if armed is None:
            return
        if armed.clock.now() < due_at - self._lead - _EARLY:
            # Woken early: the clock jumped back after the timer was last set
            # (Timers.retime moves timers within a second; this closes the gap).
            # Set the timer again rather than prepare early and sleep on it.
            log.info("run %d: timer for %s woke early by its clock; set again", run_id, due_at)
            self._timers.set_on(
                f"run{run_id}@{due_at.isoformat()}",
                armed.clock,
                due_at - self._lead,
                self._job(run_id, due_at),
            )
            return
        rows = [
            d
            for d in await self._store.dispatches(run_id)
            if d.due_at == due_at and d.state in (DispatchState.SCHEDULED, DispatchState.RELEASING)
        ]
        if not rows:
            return
        prepared = [await self.build_release(armed, r) for r in rows]
        await self._dispatcher.prepare(prepared)
        await armed.clock.sleep_until(due_at)
        if self.armed.get(run_id) is not armed:
            return  # disarmed while we prepared
        await self._decide_and_release(armed, prepared)

    async def _decide_and_release(
        self, armed: ArmedRun, prepared: Sequence[Release], *, forced: bool = False
    ) -> None:
        """At the instant: decide each (city, stage), commit the decisions, start
        the fan-out, and only then tell the control room about skips and holds.
        One read and one write for all cities before the first request leaves:
        every database round trip here is lateness for the first room."""
        run_id = armed.run.id
        now = armed.clock.now()
        rows = {(d.city_id, d.stage_id): d for d in await self._store.dispatches(run_id)}
        to_release: list[Release] = []
        releasing: list[tuple[str, str]] = []
        late_by: dict[str, dict[str, timedelta]] = defaultdict(dict)
        reports: list[str] = []
        gate_aborts: list[str] = []
        for release in prepared:
            city_id, stage_id = release.city_id, release.stage_id
            row = rows.get((city_id, stage_id))
            if row is None or row.state in DISPATCH_DONE:
                continue
            if not forced and row.due_at != release.due_at:
                continue  # delayed since it was prepared; its new timer will fire
            if row.state is DispatchState.RELEASING:
                to_release.append(release)  # resumed after a restart: already decided
                late_by[stage_id][city_id] = max(now - row.due_at, timedelta(0))
                continue
            if not forced and row.state is DispatchState.HELD:
                continue  # waits for !resume or !release
            stage = armed.scenario.stage(stage_id)
            gate = stage.require
            if armed.drill_room is not None:
                gate = None  # a drill rehearses the sequence; its gates are reported, not waited on
            decision = decide(
                due_at=row.due_at,
                now=now,
                skip_after=stage.late.skip_after if armed.drill_room is None else None,
                city_held=city_id in armed.held_cities,
                gate_checkins=gate.checkins if gate else None,
                gate_otherwise=gate.otherwise if gate else None,
                checkins=await self.gate_checkins(armed, city_id, stage_id) if gate else 0,
                forced=forced,
            )
            if decision.action is Action.RELEASE:
                releasing.append((city_id, stage_id))
                to_release.append(release)
                late_by[stage_id][city_id] = decision.late_by
            elif decision.action is Action.SKIP:
                await self._store.set_dispatch_state(
                    run_id, city_id, stage_id, DispatchState.SKIPPED, note=decision.reason
                )
                reports.append(
                    f"⏭️ {armed.label()}: stage {stage_id} skipped in {city_id}: {decision.reason}."
                )
            elif decision.action is Action.HOLD:
                await self._store.set_dispatch_state(
                    run_id, city_id, stage_id, DispatchState.HELD, note=decision.reason
                )
                reports.append(
                    f"⏸️ {armed.label()}: stage {stage_id} held in {city_id}: {decision.reason}. "
                    f"Use !release {armed.scenario_id} {stage_id} {city_id} or "
                    f"!abort {armed.scenario_id} {city_id}."
                )
            elif decision.action is Action.ABORT:
                reports.append(
                    f"⛔ {armed.label()}: stage {stage_id} in {city_id}: {decision.reason}; "
                    "the gate says abort."
                )
                gate_aborts.append(city_id)
        # RELEASING is committed before any request leaves (a restart resumes it).
        await self._store.set_dispatches_releasing(run_id, releasing, released_at=now)
        fanout = asyncio.ensure_future(self._dispatcher.release(to_release)) if to_release else None
        try:
            for text in reports:
                await self._notifier.report(armed.run.control_room, text)
            if gate_aborts:
                await self.abort(armed, gate_aborts, None)
        finally:
            outcomes = await fanout if fanout is not None else []
        if outcomes:
            await self._finish_releases(armed, outcomes, late_by)
        await self._maybe_finish(armed)

    async def gate_checkins(self, armed: ArmedRun, city_id: str, stage_id: str) -> int:
        """Check-ins in a city since the previous stage (the gate's count)."""
        ids = [s.id for s in armed.scenario.stages]
        index = ids.index(stage_id)
        previous = ids[index - 1] if index > 0 else ""
        return await self._store.checkin_count(armed.run.id, city_id, previous)

    async def _finish_releases(
        self,
        armed: ArmedRun,
        outcomes: Sequence[Outcome],
        late_by: dict[str, dict[str, timedelta]] | None = None,
    ) -> None:
        if self._dispatcher.stopping:
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
            await self._notifier.report(
                armed.run.control_room,
                stage_summary(
                    armed.scenario_id,
                    stage_id,
                    group,
                    late_by=(late_by or {}).get(stage_id),
                    drill=armed.drill_room is not None,
                ),
                txn_id=report_txn_id(armed.run, "stage", stage_id, *cities),
            )
            for o in group:
                await self._store.set_dispatch_state(
                    o.release.run_id, o.release.city_id, stage_id, DispatchState.RELEASED
                )
                await self._store.mark_reported(o.release.run_id, o.release.city_id, stage_id)

    async def _maybe_finish(self, armed: ArmedRun) -> None:
        rows = await self._store.dispatches(armed.run.id)
        if rows and all(d.state in DISPATCH_DONE for d in rows):
            await self._finish(armed)

    async def _finish(self, armed: ArmedRun) -> None:
        if self.armed.pop(armed.run.id, None) is None:
            return
        aborted = any(d.stage_id == ABORT_STAGE for d in await self._store.dispatches(armed.run.id))
        # The notice before the run's end, idempotent (as a stage report): a
        # crash in between finishes the run again on restart, not silently.
        await self._notifier.report(
            armed.run.control_room,
            f"🏁 {armed.label()} (run {armed.run.id}) is complete"
            + (" (aborted)." if aborted else ": every stage was released or skipped."),
            txn_id=report_txn_id(armed.run, "complete"),
        )
        await self._store.end_run(
            armed.run.id, "aborted" if aborted else "finished", self._clock.now()
        )
        log.info("run %d of %s finished", armed.run.id, armed.scenario_id)

    # -- steering ----------------------------------------------------------------------

    async def hold(self, armed: ArmedRun, cities: Sequence[str]) -> str:
        for city in cities:
            await self._store.set_hold(armed.run.id, city, True)
            armed.held_cities.add(city)
        return (
            f"Holding {armed.label()} in {', '.join(cities)}: no stage goes there until "
            f"!resume {armed.scenario_id}."
        )

    async def resume(self, armed: ArmedRun, cities: Sequence[str]) -> str:
        for city in cities:
            await self._store.set_hold(armed.run.id, city, False)
            armed.held_cities.discard(city)
        # Stages held meanwhile (by the hold or a gate) are decided again now:
        # their late policy and gate apply, as at their instant.
        held = [
            d
            for d in await self._store.dispatches(armed.run.id)
            if d.city_id in cities and d.state is DispatchState.HELD
        ]
        for d in held:
            await self._store.set_dispatch_state(
                armed.run.id, d.city_id, d.stage_id, DispatchState.SCHEDULED
            )
        if held:
            releases = [await self.build_release(armed, d) for d in held]
            self._spawn(self._decide_and_release(armed, releases), armed, "resume")
        text = f"Resumed {armed.label()} in {', '.join(cities)}."
        if held:
            text += (
                f" {len(held)} held stage(s) are decided now by their late policy and gates; "
                "use !release to send one regardless."
            )
        return text

    async def delay(self, armed: ArmedRun, cities: Sequence[str], by: timedelta) -> str:
        now = armed.clock.now()
        rows = [
            d
            for d in await self._store.dispatches(armed.run.id)
            if d.city_id in cities and d.state in PENDING_STATES
        ]
        if not rows:
            raise ArmError(f"{armed.scenario_id} has no pending stage in {', '.join(cities)}")
        if any(d.due_at + by <= now for d in rows):
            raise ArmError("that would move a pending stage into the past; nothing was changed")
        for d in rows:
            await self._store.set_dispatch_due(armed.run.id, d.city_id, d.stage_id, d.due_at + by)
        for city in cities:
            await self._store.add_delay(armed.run.id, city, by.total_seconds())
            armed.delays[city] = armed.delays.get(city, timedelta(0)) + by
        self._timers.cancel_prefix(f"run{armed.run.id}@")
        self._schedule(armed, await self._store.dispatches(armed.run.id))
        nxt = min(d.due_at + by for d in rows)
        return (
            f"Delayed {armed.label()} by {format_duration(by)} in {', '.join(cities)}: "
            f"{len(rows)} pending stage(s); the next is now at {nxt:%Y-%m-%d %H:%M:%SZ}."
        )

    async def release_now(self, armed: ArmedRun, stage_id: str, cities: Sequence[str]) -> str:
        if stage_id not in {s.id for s in armed.scenario.stages}:
            raise ArmError(f"{armed.scenario_id} has no stage {stage_id}")
        rows = []
        for city in cities:
            row = await self._store.dispatch(armed.run.id, city, stage_id)
            if row is not None and row.state in PENDING_STATES:
                rows.append(row)
        if not rows:
            raise ArmError(
                f"stage {stage_id} is not pending in {', '.join(cities)} "
                "(already released, skipped or cancelled)"
            )
        releases = [await self.build_release(armed, r) for r in rows]
        self._spawn(self._decide_and_release(armed, releases, forced=True), armed, "release")
        return (
            f"Releasing {armed.label()} stage {stage_id} now in "
            f"{', '.join(r.city_id for r in rows)}; the report follows."
        )

    async def abort(self, armed: ArmedRun, cities: Sequence[str], message: str | None) -> str:
        """Cancel every pending stage of these cities and send the stop message to
        every room they serve, ahead of any other traffic of this run."""
        run_id = armed.run.id
        now = armed.clock.now()
        cancelled = 0
        releases: list[Release] = []
        for city_id in cities:
            cancelled += await self.cancel_city(armed, city_id, "aborted")
            await self._store.add_dispatch(
                run_id, city_id, ABORT_STAGE, 10_000, now, DispatchState.RELEASING
            )
            row = await self._store.dispatch(run_id, city_id, ABORT_STAGE)
            if row is not None and row.state in DISPATCH_DONE:
                continue  # already aborted
            city = armed.scenario.city(city_id)
            template = message or armed.scenario.abort_text or DEFAULT_ABORT_TEXT
            try:
                body = render_template(
                    template,
                    armed.scenario,
                    city,
                    place_overrides=armed.place_overrides.get(city_id),
                    delay=armed.delays.get(city_id),
                )
            except ValueError:
                body = template  # a typed message with braces: send it as written
            if armed.drill_room is not None:
                body = f"[DRILL] {armed.scenario_id} · {city.name}\n{body}"
            content = {
                "msgtype": "m.text",
                "body": body,
                "format": "org.matrix.custom.html",
                "formatted_body": f"<b>{to_html(body)}</b>",
            }
            releases.append(
                Release(
                    run_id=run_id,
                    scenario_id=armed.scenario_id,
                    city_id=city_id,
                    stage_id=ABORT_STAGE,
                    due_at=now,
                    rooms=tuple(await self.served_rooms(armed, city_id, refresh=False)),
                    messages=(Message(Part.TEXT, "m.room.message", content),),
                    final=True,
                )
            )
        self._spawn(self._release_and_report(armed, releases), armed, "abort")
        return (
            f"Aborting {armed.label()} in {', '.join(cities)}: {cancelled} pending stage(s) "
            "cancelled; the stop message is going out to every room now."
        )

    async def _release_and_report(self, armed: ArmedRun, releases: Sequence[Release]) -> None:
        if releases:
            outcomes = await self._dispatcher.release(releases, priority=True)
            await self._finish_releases(armed, outcomes)
        await self._maybe_finish(armed)

    async def cancel_city(self, armed: ArmedRun, city_id: str, reason: str) -> int:
        """Cancel every not-yet-released dispatch of one city; returns how many."""
        count = 0
        self._dispatcher.cancel(armed.run.id, [city_id])
        for d in await self._store.dispatches(armed.run.id):
            if d.city_id == city_id and d.state in PENDING_STATES:
                await self._store.set_dispatch_state(
                    armed.run.id, d.city_id, d.stage_id, DispatchState.CANCELLED, note=reason
                )
                count += 1
        return count

    async def redirect(
        self,
        armed: ArmedRun,
        city_id: str,
        place_id: str,
        name: str,
        geo: tuple[float, float] | None,
    ) -> str:
        city = armed.scenario.city(city_id)
        if place_id not in city.places:
            known = ", ".join(sorted(city.places)) or "none"
            raise ArmError(f"{city_id} has no place {place_id} (places: {known})")
        new_place = Place(id=place_id, name=name, geo=geo, note=None)
        overrides = {**armed.place_overrides.get(city_id, {}), place_id: new_place}
        for stage in armed.scenario.stages:
            if mentions_place(stage, place_id):
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
        revision = await self._store.set_redirect(armed.run.id, city_id, place_id, name, geo)
        armed.place_overrides[city_id] = overrides
        revealed: list[DispatchRow] = []
        for stage in armed.scenario.stages:
            if not mentions_place(stage, place_id):
                continue
            row = await self._store.dispatch(armed.run.id, city_id, stage.id)
            if row is not None and row.state in (DispatchState.RELEASED, DispatchState.RELEASING):
                revealed.append(row)
        if not revealed:
            return (
                f"Redirected {place_id} in {city_id} before it was revealed: every stage "
                "that mentions it will carry the new place."
            )
        self._spawn(
            self._correct(armed, city_id, place_id, revision, revealed), armed, "correction"
        )
        return (
            f"Redirected {place_id} in {city_id}. It was already revealed by "
            f"{', '.join(r.stage_id for r in revealed)}: editing those messages and sending "
            "a correction to every room now."
        )

    async def _correct(
        self,
        armed: ArmedRun,
        city_id: str,
        place_id: str,
        revision: int,
        revealed: Sequence[DispatchRow],
    ) -> None:
        # 1. Edit the earlier messages where clients support edits (m.replace).
        for row in revealed:
            text = next(
                m for m in self._messages(armed, city_id, row.stage_id) if m.part is Part.TEXT
            )
            for d in await self._store.deliveries(armed.run.id, city_id, row.stage_id):
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
                txn = (
                    "blossom-edit-"
                    + hashlib.sha256(f"{d.txn_id}\x1f{revision}".encode()).hexdigest()[:40]
                )
                try:
                    await self._sender.send(d.key.room_id, "m.room.message", edit, txn)
                except SendFailed as err:
                    log.warning("edit in %s failed: %s", d.key.room_id, err.failure.describe())
        # 2. A new message, through the ledger like any stage: the latest revealing
        #    stage again, marked as a correction, with its location.
        latest = revealed[-1]
        first, *rest = self._messages(armed, city_id, latest.stage_id)
        body = f"⚠️ Correction — the place has changed:\n{first.content['body']}"
        messages = [
            Message(
                Part.TEXT,
                first.event_type,
                {**first.content, "body": body, "formatted_body": to_html(body)},
            ),
            *rest,
        ]
        stage_id = f"!fix-{place_id}-{revision}"
        now = armed.clock.now()
        await self._store.add_dispatch(
            armed.run.id, city_id, stage_id, 10_000 + revision, now, DispatchState.RELEASING
        )
        release = Release(
            run_id=armed.run.id,
            scenario_id=armed.scenario_id,
            city_id=city_id,
            stage_id=stage_id,
            due_at=now,
            rooms=tuple(await self.served_rooms(armed, city_id)),
            messages=tuple(messages),
        )
        outcomes = await self._dispatcher.release([release])
        await self._finish_releases(armed, outcomes)

    def _spawn(self, work: Awaitable[None], armed: ArmedRun, what: str) -> None:
        """Start release work without holding up the command's reply."""
        task = asyncio.create_task(self._guarded(work, armed.run.id, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
