"""Arming: the side-effect-free preview, the commit, disarming, and restoring
armed runs after a restart.

Re-arming a scenario (docs/organisers.md, "Arming again"): a past stage that an
earlier run of the same scenario already sent is not sent again unless the
organiser asks (``!arm <id> resend``); ``!arm <id> at <instant>`` runs the
scenario again with a new T0. Anything that would surprise (a problem, a
pre-flight warning, a past stage going out at once) is shown first and
nothing is scheduled until ``!arm <id> confirm``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from bot.clock import Clock, ScaledClock
from bot.failsafe import DelayedItem, Steer
from bot.ids import job_prefix
from bot.ledger import DISPATCH_DONE, DISPATCH_PENDING, DispatchState, RunState
from bot.library import LibraryError, LoadedScenario, load_file
from bot.preflight import fanout_warnings
from bot.report import PlanLine, plan_table
from bot.runs import arm_failsafe, warmup
from bot.runs.context import RunContext
from bot.runs.lanes import all_rooms, city_of, lanes_of, listed_rooms, pod_of
from bot.runs.model import ArmedRun, ArmError, ArmPreview
from bot.runs.pods import count_stale, reassign_stale
from bot.runs.release import ReleaseShell
from bot.scenario import Dispatch, Place, build_timeline, render_stage
from bot.store import PlannedDispatch, RunRow, StoreError

log = logging.getLogger(__name__)

DRILL_SPEED = 60.0
WITHHELD_NOTE = "past when armed again; an earlier run sent it"


@dataclass(frozen=True)
class ArmOutcome:
    """``!arm``'s answer: the reply, the masked plan, and whether it is armed."""

    text: str
    table: str
    run_id: int | None = None
    result: str = "ok"

    @property
    def needs_confirm(self) -> bool:
        """Nothing was scheduled: the organiser must confirm (``!arm … confirm``)."""
        return self.run_id is None


def _loaded(loaded: LoadedScenario, start: datetime | None) -> tuple[LoadedScenario, str]:
    """The scenario with T0 moved to ``start``, and the sha the run records (a
    moved T0 travels with it, so a restart rebuilds the same instants)."""
    if start is None:
        return loaded, loaded.sha256
    scenario = loaded.scenario.model_copy(update={"start": start})
    return LoadedScenario(
        loaded.path, loaded.sha256, scenario
    ), f"{loaded.sha256}@{start.isoformat()}"


def _with(text: str, lines: list[str]) -> str:
    return "\n".join([text, *lines])


def preview_text(p: ArmPreview, run_id: int | None) -> str:
    n_cities = len({city_of(ln.city_id) for ln in p.lines})  # a line's city is its lane
    if run_id is not None:
        kind = "Drill of" if p.drill else "Armed"
        head = f"{kind} {p.scenario_id} (run {run_id}): "
    else:
        head = f"Not armed yet: {p.scenario_id}: "
    text = (
        f"{head}{len(p.lines)} dispatches in {n_cities} cities, "
        f"first at {min(ln.at for ln in p.lines):%Y-%m-%d %H:%M:%SZ}. "
        "Stage texts and places stay secret until release."
    )
    if p.withheld:
        text += (
            f"\n{len(p.withheld)} past dispatches already went out in an earlier run and are "
            f"not sent again (!arm {p.scenario_id} resend would send them again)."
        )
    if p.past_now:
        verb = "go out" if run_id is not None else "would go out"
        text += (
            f"\n{len(p.past_now)} dispatches are already past and {verb} at once under "
            "their late policy."
        )
    if p.stale_pods:
        text += "\n" + _stale_line(p, run_id is not None)
    if p.problems:
        text += "\nProblems:\n" + "\n".join(f"- {x}" for x in p.problems)
    if p.warnings:
        text += "\nPre-flight (at dispatch.expected_msgs_per_second):\n" + "\n".join(
            f"- {w}" for w in p.warnings
        )
    if run_id is None:
        text += "\nNothing is scheduled until it is confirmed."
    return text


def _stale_line(p: ArmPreview, armed: bool) -> str:
    """Private participants with no pod of their city: counts only."""
    why = "no pod of their city (they joined before it had pods, or their pod was removed)"
    if not armed:
        return f"{p.stale_pods} private participants have {why}: arming assigns them one."
    line = f"{p.stale_pods} private participants had {why} and were assigned one now."
    if p.unplaced:
        line += f" {p.unplaced} of them found every pod full: they get no pod's stages."
    return line


class Arming:
    def __init__(self, ctx: RunContext, shell: ReleaseShell) -> None:
        self._ctx = ctx
        self._shell = shell

    def find(self, scenario_id: str) -> LoadedScenario:
        try:
            return self._ctx.library.find(scenario_id)
        except LibraryError as err:
            detail = "; ".join(str(d) for d in err.diagnostics[:5])
            more = f" (+{len(err.diagnostics) - 5} more)" if len(err.diagnostics) > 5 else ""
            raise ArmError(f"{err}" + (f": {detail}{more}" if detail else "")) from None

    # -- preview -----------------------------------------------------------------------

    def _run_clock(
        self, timeline: list[Dispatch], drill: bool, speed: float, lead: timedelta
    ) -> Clock:
        if not drill:
            return self._ctx.clock
        first = min(d.at for d in timeline)
        return ScaledClock(first - lead * speed, speed)

    async def preview(
        self,
        scenario_id: str,
        *,
        start_at: datetime | None = None,
        resend_past: bool = False,
        drill_room: str | None = None,
        _clock: Clock | None = None,
    ) -> ArmPreview:
        """What arming would do, without doing any of it."""
        if start_at is not None and start_at <= self._ctx.clock.now():
            raise ArmError(f"{start_at:%Y-%m-%d %H:%M:%SZ} is in the past; nothing was armed")
        loaded, _ = _loaded(self.find(scenario_id), start_at)
        scenario = loaded.scenario
        timeline = build_timeline(scenario)
        drill = drill_room is not None
        now = (_clock or self._ctx.clock).now()
        served: dict[tuple[str, str], int] = {}
        problems: list[str] = []
        for city in scenario.cities:
            listed = list(all_rooms(city))
            if not drill:
                # Aliases resolved afresh once per city; the dispatches read them.
                await self._ctx.rooms.served_rooms(listed, refresh=True)
                for room, why in (await self._ctx.rooms.missing_rooms(listed)).items():
                    problems.append(f"{city.id}: {room}: {why}")
        for d in timeline:
            # Listed rooms only: private participants are counted at the instant.
            rooms = [drill_room or ""] if drill else await self._ctx.rooms.served_rooms(d.rooms)
            served[(d.lane, d.unit)] = len(rooms)
        zones = {c.id: c.timezone for c in scenario.cities}
        lines = tuple(
            sorted(
                (
                    PlanLine(d.at, d.lane, zones[d.city_id], d.unit, served[(d.lane, d.unit)])
                    for d in timeline
                ),
                key=lambda ln: (ln.at, ln.city_id),
            )
        )
        sent = set() if drill else await self._ctx.store.runs.sent_stages(scenario.id)
        past = [(d.lane, d.unit) for d in timeline if d.at <= now]
        withheld = tuple(k for k in past if k in sent and not resend_past)
        # Parts per dispatch (text, and a pin if the place has a geo); the
        # rendering stays in memory.
        msgs = {
            (d.lane, d.unit): 1
            + (
                render_stage(
                    scenario, d.city_id, d.stage_id, pod=d.pod_id, role=d.audiences[0]
                ).location
                is not None
            )
            for d in timeline
        }
        warnings = fanout_warnings(
            [(ln.at, ln.rooms, msgs[(ln.city_id, ln.stage_id)]) for ln in lines if ln.at > now],
            self._ctx.rate,
            burst=self._ctx.burst,
        )
        return ArmPreview(
            scenario_id=scenario.id,
            drill=drill,
            start=scenario.start,
            now=now,
            lines=lines,
            problems=tuple(problems),
            refusals=() if drill else await self._room_in_two_cities(loaded),
            warnings=tuple(str(w) for w in warnings),
            withheld=withheld,
            past_now=tuple(k for k in past if k not in withheld),
            start_at=start_at,
            resend=resend_past,
            stale_pods=0 if drill else await count_stale(self._ctx.store, scenario),
        )

    async def _room_in_two_cities(self, loaded: LoadedScenario) -> tuple[str, ...]:
        """A room listed in two cities (say by id in one and by alias in the other)
        would get every stage twice: name it, with the cities, after resolving.
        Two pods are two owners too: the room would learn both pods' places."""
        where: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
        for city in loaded.scenario.cities:
            for lane in lanes_of(loaded.scenario, city.id):
                for listed in self._ctx_listed(loaded, lane):
                    rid = await self._ctx.rooms.resolve(listed)
                    if rid is not None and all(c != lane for c, _ in where[rid]):
                        where[rid].append((lane, listed))
        refusals = []
        for rid, places in where.items():
            if len(places) > 1:
                how = " and ".join(f"{c} (as {listed})" for c, listed in places)
                pods = any("/" in c for c, _ in places)
                refusals.append(
                    f"room {rid} is listed in {how}: it would get every stage twice"
                    + (" and more than one pod's places" if pods else "")
                    + ". List it in one "
                    + ("pod" if pods else "city")
                    + " only."
                )
        return tuple(refusals)

    @staticmethod
    def _ctx_listed(loaded: LoadedScenario, lane: str) -> tuple[str, ...]:
        city, pod = pod_of(loaded.scenario, lane)
        return listed_rooms(city, pod, None)

    # -- the commit ----------------------------------------------------------------------

    async def arm(
        self,
        scenario_id: str,
        *,
        sender: str,
        control_room: str,
        run_key: str,
        start_at: datetime | None = None,
        resend_past: bool = False,
        confirmed: bool = False,
        drill_room: str | None = None,
        drill_speed: float | None = None,
        drill_lead: timedelta = timedelta(seconds=3),
    ) -> ArmOutcome:
        """Arm a scenario: preview it, and unless the preview must be confirmed
        first, create the run and its timers. ``run_key`` is the event id of the
        command that armed it (the run's identity, bot.ids).

        A drill (``drill_room``) runs on a scaled clock that reaches the first
        stage ``drill_lead`` (real time) from now, and sends only to the drill room.
        """
        ctx = self._ctx
        drill = drill_room is not None
        self._refuse_if_running(scenario_id, drill)
        loaded, sha = _loaded(self.find(scenario_id), start_at)
        speed = (drill_speed or DRILL_SPEED) if drill else None
        run_clock = self._run_clock(build_timeline(loaded.scenario), drill, speed or 1, drill_lead)
        p = await self.preview(
            scenario_id,
            start_at=start_at,
            resend_past=resend_past,
            drill_room=drill_room,
            _clock=run_clock,
        )
        table = plan_table(p.lines, p.now)
        _refuse_if_nothing_to_do(scenario_id, p)
        switch = await arm_failsafe.check(ctx, loaded, p, drill)
        if p.needs_confirm and not confirmed:
            return ArmOutcome(
                _with(preview_text(p, None), switch), table, result="asked to confirm"
            )
        if p.stale_pods:
            # Before the run exists: its first dispatch must find them in a pod.
            moved, unplaced = await reassign_stale(ctx.store, loaded.scenario, now=p.now)
            p = dataclasses.replace(p, stale_pods=moved + unplaced, unplaced=unplaced)
        # The switch's rows are planned first (that asks the homeserver and the
        # crew) and recorded in the run's own transaction: a crash or a failed
        # write can never leave an armed run the organisers were told is covered
        # and that the switch knows nothing of.
        # (A drill never: its rooms are not the scenario's, its clock not the wall's.)
        covered = loaded.scenario.failsafe.server and not drill
        items, trouble = await arm_failsafe.plan(ctx, loaded, p, run_key) if covered else ((), "")
        run_id = await self._create(
            loaded,
            p,
            items,
            sha=sha,
            sender=sender,
            control_room=control_room,
            run_key=run_key,
            drill_room=drill_room,
            drill_speed=speed,
        )
        run = next(r for r in await ctx.store.runs.armed() if r.id == run_id)
        armed = ArmedRun(run, loaded, run_clock)
        ctx.armed[run_id] = armed
        ctx.armed_changed()
        self._shell.schedule(armed, await ctx.store.ledger.dispatches(run_id))
        log.info("armed %s as run %d by %s", scenario_id, run_id, sender)
        if ctx.crew is not None and not drill:
            # Its rooms read once now, long before a look (bot/runs/warmup.py).
            ctx.supervisor.spawn(warmup.at_arming(ctx, ctx.crew, armed), run_id, "read-ahead")
        if covered:
            switch.append(trouble or await arm_failsafe.schedule(ctx, armed, items))
        return ArmOutcome(_with(preview_text(p, run_id), switch), table, run_id)

    def _refuse_if_running(self, scenario_id: str, drill: bool) -> None:
        if any(
            a.scenario_id == scenario_id and (a.drill_room is not None) == drill
            for a in self._ctx.armed.values()
        ):
            what = "a drill of it is running" if drill else "it is already armed"
            raise ArmError(f"{scenario_id}: {what}; !disarm {scenario_id} first")

    async def _create(
        self,
        loaded: LoadedScenario,
        p: ArmPreview,
        items: Sequence[DelayedItem],
        *,
        sha: str,
        sender: str,
        control_room: str,
        run_key: str,
        drill_room: str | None,
        drill_speed: float | None,
    ) -> int:
        """The run, its dispatches and the switch's rows, in one transaction."""
        ctx, scenario_id = self._ctx, loaded.scenario.id
        try:
            async with ctx.store.db.transaction():
                run_id = await ctx.store.runs.create(
                    scenario_id=scenario_id,
                    source_path=str(loaded.path),
                    source_sha256=sha,
                    armed_by=sender,
                    control_room=control_room,
                    now=p.now,
                    dispatches=self._planned(loaded, set(p.withheld)),
                    drill_room=drill_room,
                    drill_speed=drill_speed,
                    run_key=run_key,
                )
                if items:
                    assert ctx.failsafe is not None
                    await ctx.failsafe.record(run_id, items)
        except StoreError as err:
            if not items:
                raise
            log.error("%s: not armed, its failsafe rows not recorded: %s", scenario_id, err)
            raise ArmError(
                f"{scenario_id}: the database refused the run with its failsafe ({err}). "
                "Nothing was armed."
            ) from None
        return run_id

    @staticmethod
    def _planned(loaded: LoadedScenario, withheld: set[tuple[str, str]]) -> list[PlannedDispatch]:
        return [
            PlannedDispatch(
                d.lane,
                d.unit,
                d.stage_index,
                d.at,
                *((DispatchState.SKIPPED, WITHHELD_NOTE) if (d.lane, d.unit) in withheld else ()),
            )
            for d in build_timeline(loaded.scenario)
        ]

    async def disarm(self, armed: ArmedRun) -> str:
        ctx, run_id = self._ctx, armed.run.id
        if ctx.armed.get(run_id) is not armed:
            raise ArmError(f"{armed.label()} (run {run_id}) is not armed")
        if ctx.failsafe is not None:
            await ctx.failsafe.steer(armed, Steer.DISARM)  # first: the server must not send
        ctx.timers.cancel_prefix(job_prefix(run_id))
        ctx.dispatcher.cancel(
            run_id, [lane for c in armed.scenario.cities for lane in lanes_of(armed.scenario, c.id)]
        )
        # One transaction: never a run left armed with its stages half cancelled.
        async with ctx.store.transaction():
            await ctx.store.ledger.set_dispatch_states(
                run_id,
                [
                    (d.city_id, d.stage_id, DispatchState.CANCELLED, "disarmed")
                    for d in await ctx.store.ledger.dispatches(run_id)
                    if d.state in DISPATCH_PENDING
                ],
            )
            await ctx.store.runs.end(run_id, RunState.DISARMED, ctx.clock.now())
        del ctx.armed[run_id]
        ctx.armed_changed()
        return f"Disarmed {armed.label()} (run {run_id}): nothing more will be sent."

    # -- restart -------------------------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild timers for every armed run from the store (after a restart)."""
        ctx = self._ctx
        for run in await ctx.store.runs.armed():
            armed = await self._restorable(run)
            if armed is None:
                continue
            ctx.armed[run.id] = armed
            rows = await ctx.store.ledger.dispatches(run.id)
            self._shell.schedule(armed, rows)
            log.info("restored run %d of %s", run.id, run.scenario_id)
            if all(d.state in DISPATCH_DONE for d in rows):
                # Finished before the restart, but its "complete" notice may not
                # have gone out: send it (idempotently) once the sync is up.
                ctx.supervisor.after_ready(
                    run.id, "finishing", functools.partial(self._shell.finish, armed)
                )

    async def _restorable(self, run: RunRow) -> ArmedRun | None:
        """The armed run as it was, or None (ended, and the control room told)."""
        if run.drill_room is not None:
            # A drill's compressed clock cannot be resumed meaningfully.
            await self._end_incomplete(run, "the bot restarted during the drill")
            return None
        try:
            loaded = load_file(Path(run.source_path))
        except LibraryError as err:
            await self._end_incomplete(run, f"its file can no longer be loaded ({err})")
            return None
        sha, _, start = run.source_sha256.partition("@")
        if loaded.sha256 != sha:
            await self._end_incomplete(run, "its file changed since it was armed")
            return None
        loaded, _ = _loaded(loaded, datetime.fromisoformat(start) if start else None)
        store = self._ctx.store
        armed = ArmedRun(run, loaded, self._ctx.clock)
        armed.held_cities = await store.steering.held_cities(run.id)
        armed.delays = {
            c: timedelta(seconds=s) for c, s in (await store.steering.delays(run.id)).items()
        }
        for city_id, place_id, name, geo in await store.steering.redirects(run.id):
            armed.place_overrides.setdefault(city_id, {})[place_id] = Place(
                id=place_id, name=name, geo=geo, note=None
            )
        return armed

    async def _end_incomplete(self, run: RunRow, why: str) -> None:
        # Safety first: a run whose file changed or vanished is not released from
        # a guess. The organisers re-arm it explicitly.
        ctx = self._ctx
        log.warning("run %d of %s not restored: %s", run.id, run.scenario_id, why)
        async with ctx.store.transaction():
            await ctx.store.ledger.set_dispatch_states(
                run.id,
                [
                    (d.city_id, d.stage_id, DispatchState.CANCELLED, why)
                    for d in await ctx.store.ledger.dispatches(run.id)
                    if d.state not in DISPATCH_DONE
                ],
            )
            await ctx.store.runs.end(run.id, RunState.DISARMED, ctx.clock.now())
        text = (
            f"⚠️ {run.scenario_id} (run {run.id}) was disarmed on restart: {why}. "
            f"Nothing more of it will be sent; check it and !arm {run.scenario_id} again."
        )
        ctx.supervisor.after_ready(
            run.id, "reporting", lambda: ctx.notifier.report(run.control_room, text)
        )


def _refuse_if_nothing_to_do(scenario_id: str, p: ArmPreview) -> None:
    if p.refusals:
        raise ArmError("; ".join(p.refusals) + " Nothing was armed.")
    if p.to_schedule == 0:
        raise ArmError(
            f"every stage of {scenario_id} is past and went out in an earlier run: "
            f"nothing to send. To run it again at a new time: !arm {scenario_id} at "
            f"<instant>; to send the past stages again: !arm {scenario_id} resend"
        )
