"""``!status`` and ``!headcount``: what the control room can see of a run.
Ids, counts and times only; never a stage's text or place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from bot.clock import Clock
from bot.control.args import CITY, RUN, SCENARIO, SLUG_ARG, Arg
from bot.control.checkins import latest_released
from bot.control.commands import Controller
from bot.control.registry import Args, Context, Reply, command
from bot.control.targets import resolve_cities
from bot.ledger import DeliveryState, DispatchState
from bot.policy import format_duration
from bot.report import text_table
from bot.runs import ArmedRun, ArmError, RunManager
from bot.runs.lanes import held, lanes_of
from bot.scenario import City, Scenario
from bot.scenario.timeline import lane_id, split_lane
from bot.store import Store
from bot.text import control as text

_PENDING = (DispatchState.SCHEDULED, DispatchState.HELD)


@dataclass(frozen=True)
class ScenarioShape:
    """No scenario file to read pods and roles from: none known."""

    cities: tuple[City, ...] = ()
    role_ids: tuple[str, ...] = ()
    roles: None = None


class StatusCommands:
    def __init__(
        self, controller: Controller, runs: RunManager, store: Store, clock: Clock
    ) -> None:
        self._controller = controller
        self._runs = runs
        self._store = store
        self._clock = clock

    @command(
        "status",
        "Armed scenarios: per city the next stage, releases, holds, check-ins.",
        example="!status dc-london-berlin",
        args=(Arg("scenario", SLUG_ARG, optional=True), RUN),
    )
    async def status(self, ctx: Context, args: Args) -> Reply:
        runs = list(self._runs.armed.values())
        sid, which = args.opt_text("scenario"), args.opt_text("run")
        if sid is not None:
            # Both runs of the scenario unless one is named: status changes nothing.
            runs = [a for a in runs if a.scenario_id == sid]
            if which is not None:
                runs = [a for a in runs if (a.drill_room is not None) == (which == "drill")]
            if not runs:
                raise ArmError(text.not_armed(sid, which))
        if not runs:
            return Reply(text.NOTHING_ARMED)
        lines: list[str] = []
        table: list[tuple[str, ...]] = [text.STATUS_COLUMNS]
        for armed in runs:
            table += await self._rows(armed)
            drill_now = armed.clock.now() if armed.drill_room else None
            lines.append(
                text.run_heading(
                    armed.label(),
                    armed.run.id,
                    armed.run.armed_by,
                    drill_now,
                    armed.run.drill_speed,
                )
            )
        crew = self._controller.crew
        duty = await crew.duty_line(runs) if crew is not None else None
        if duty is not None:
            lines.append(duty)  # in a crew: who sends to each city's rooms now
        failsafe = await self._runs.failsafe_line(runs)
        if failsafe is not None:
            lines.append(failsafe)
        lines.append(text.as_of(self._clock.to_wall(self._clock.now())))
        return Reply("\n".join(lines), text_table(table))

    async def _rows(self, armed: ArmedRun) -> list[tuple[str, ...]]:
        rows = await self._store.ledger.dispatches(armed.run.id)
        counts = await self._store.participants.checkin_counts(armed.run.id)
        by_lane = await self._store.participants.checkin_counts_by_lane(armed.run.id)
        # The run's own clock: a drill's columns are drill time, like its instants.
        run_now = armed.clock.now()
        out: list[tuple[str, ...]] = []
        # One row per lane: a city, or each pod of it (``hk/mongkok``: ids only).
        for city, lane in [
            (c, lane) for c in armed.scenario.cities for lane in lanes_of(armed.scenario, c.id)
        ]:
            mine = [d for d in rows if d.city_id == lane]
            pending = [d for d in mine if d.state in _PENDING]
            done = sorted(
                (d for d in mine if d.state is DispatchState.RELEASED), key=lambda d: d.stage_index
            )
            deliveries = await self._store.ledger.deliveries(armed.run.id, lane)
            # Rooms, not room x stage: a room with any failed delivery is failed.
            failed = {d.key.room_id for d in deliveries if d.state is DeliveryState.FAILED}
            ok = {d.key.room_id for d in deliveries if d.state is DeliveryState.SENT} - failed
            nxt = min(pending, key=lambda d: d.due_at) if pending else None
            latest = latest_released(armed.scenario, rows, lane)
            next_cells = ("-", "-", "-", "-")
            if nxt is not None:
                next_cells = (
                    nxt.stage_id + (" (held)" if nxt.state is DispatchState.HELD else ""),
                    nxt.due_at.astimezone(ZoneInfo(city.timezone)).strftime("%H:%M:%S %Z"),
                    nxt.due_at.strftime("%H:%M:%SZ"),
                    format_duration(nxt.due_at - run_now),
                )
            out.append(
                (
                    armed.label(),
                    lane,
                    *next_cells,
                    text.released_list([d.stage_id for d in done]),
                    f"{len(ok)}/{len(failed)}",
                    "held" if held(armed.held_cities, lane) else "-",
                    text.checkins_cell(lane_count(counts, by_lane, lane, latest), latest),
                )
            )
        return out

    @command(
        "headcount",
        "Check-ins per city and stage, and per pod and role where the action has them.",
        example="!headcount demo",
        args=(SCENARIO, RUN, CITY),
    )
    async def headcount(self, ctx: Context, args: Args) -> Reply:
        scenario_id = args.text("scenario")
        city = args.opt_text("city")
        scenario: Scenario | ScenarioShape
        if self._runs.by_scenario(scenario_id) or self._runs.by_scenario(scenario_id, drill=True):
            armed, _ = self._controller.pick(args)
            run_id, label, scenario = armed.run.id, armed.label(), armed.scenario
            if city is not None:
                city = resolve_cities(armed, city, allow_all=False)[0]
        else:
            # After the action too: the latest run's count, until it is purged.
            runs = await self._store.runs.of_scenario(scenario_id)
            if not runs:
                raise ArmError(text.nothing_stored(scenario_id))
            run_id, label = runs[-1].id, f"{scenario_id} (run {runs[-1].id}, {runs[-1].state})"
            # The file may have changed since: the split shows what was counted.
            scenario = ScenarioShape()
        # A pod (``hk/mongkok``, as steering names one): its city's rows, its own counts.
        city_id, pod_id = split_lane(city) if city is not None else (None, None)
        counts = await self._store.participants.checkin_counts(run_id)
        by_lane = await self._store.participants.checkin_counts_by_lane(run_id)
        split = {
            k: {lane: n for lane, n in v.items() if pod_id in (None, lane[0])}
            for k, v in by_lane.items()
            if city_id in (None, k[0])
        }
        if pod_id is not None:
            counts = {k: sum(v.values()) for k, v in split.items()}
        rows = sorted((c, st, n) for (c, st), n in counts.items() if city_id in (None, c))
        table = [("city", "stage", "check-ins")]
        table += [(c, text.stage_cell(st), str(n)) for c, st, n in rows]
        total = sum(n for _, _, n in rows)
        tables = [text_table(table)]
        counted_by = {key for v in split.values() for key in v} - {(None, None)}
        if counted_by or any(c.pods for c in scenario.cities) or scenario.roles:
            tables += split_tables(scenario, split, pod_id)
        return Reply(text.headcount(label, total, city), "\n\n".join(tables))


def lane_count(
    counts: Mapping[tuple[str, str], int],
    by_lane: Mapping[tuple[str, str], Mapping[tuple[str | None, str | None], int]],
    lane: str,
    stage_id: str,
) -> int:
    """A ``!status`` row's check-ins since ``stage_id``: a pod's own
    (``hk/mongkok``), a city's without pods all of them."""
    city_id, pod_id = split_lane(lane)
    if pod_id is None:
        return counts.get((city_id, stage_id), 0)
    split = by_lane.get((city_id, stage_id), {})
    return sum(n for (pod, _), n in split.items() if pod == pod_id)


def split_tables(
    scenario: Scenario | ScenarioShape,
    by_lane: Mapping[tuple[str, str], Mapping[tuple[str | None, str | None], int]],
    only_pod: str | None = None,
) -> list[str]:
    """``!headcount``'s check-ins per pod (by id: ``hk/mongkok``) and per role, for
    each city and stage counted. Every pod of the city (``only_pod``: that one)
    and every role is shown, with 0 where nobody checked in; ids and counts
    only, never a place."""
    cities = {c.id: c for c in scenario.cities}
    pod_rows: list[tuple[str, ...]] = [("pod", "stage", "check-ins")]
    role_rows: list[tuple[str, ...]] = [("city", "stage", "role", "check-ins")]
    for (city_id, stage_id), split in sorted(by_lane.items()):
        known = cities.get(city_id)
        pods = [p.id for p in known.all_pods] if known is not None else []
        pods += sorted({p for p, _ in split if p is not None} - set(pods))
        pods = [p for p in pods if only_pod in (None, p)]
        for pod in pods:
            n = sum(v for (p, _), v in split.items() if p == pod)
            pod_rows.append((lane_id(city_id, pod), text.stage_cell(stage_id), str(n)))
        unpodded = sum(v for (p, _), v in split.items() if p is None)
        if pods and unpodded:  # a drill room, or a room listed for no pod
            pod_rows.append((f"{city_id} (no pod)", text.stage_cell(stage_id), str(unpodded)))
        roles = list(scenario.role_ids)
        roles += sorted({r for _, r in split if r is not None} - set(roles))
        for role in [*roles, None] if roles else []:
            n = sum(v for (_, r), v in split.items() if r == role)
            if role is not None or n:
                role_rows.append(
                    (city_id, text.stage_cell(stage_id), role or "(no role)", str(n))
                )
    return [text_table(rows) for rows in (pod_rows, role_rows) if len(rows) > 1]
