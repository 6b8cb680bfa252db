"""Steering a live action from a control room: status, hold/resume, delay,
release now, redirect, abort, head count, drills and purge.

Each handler checks its arguments against the armed scenario before anything
changes, so a wrong argument gets a usage line and changes nothing. Which run
and which cities a command means is decided in :mod:`bot.control.targets`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from zoneinfo import ZoneInfo

from nio import AsyncClient, RoomCreateError

from bot.clock import Clock
from bot.control.checkins import latest_released
from bot.control.commands import Context, Controller, Handler, Reply
from bot.control.parse import ArgSpec, Command, CommandSpec
from bot.control.targets import abort_cities, resolve_cities
from bot.ledger import DeliveryState, DispatchState
from bot.policy import format_duration
from bot.report import text_table
from bot.runs import ArmedRun, ArmError, RunManager
from bot.scenario.durations import DURATION_HINT, parse_offset
from bot.store import Store
from bot.text import control as text

SCENARIO = ArgSpec("scenario")
WHICH = ArgSpec("run", "which", optional=True)
CITY = ArgSpec("city", "city", optional=True)
GEO = re.compile(r"^(-?\d{1,2}(?:\.\d+)?),(-?\d{1,3}(?:\.\d+)?)$")

SPECS = (
    CommandSpec(
        "status",
        (ArgSpec("scenario", optional=True), WHICH),
        "Armed scenarios: per city the next stage, releases, holds, check-ins.",
        "!status dc-london-berlin",
    ),
    CommandSpec(
        "hold",
        (SCENARIO, WHICH, CITY),
        "Hold a city (or all): no stage goes there until !resume.",
        "!hold demo london",
    ),
    CommandSpec(
        "resume",
        (SCENARIO, WHICH, CITY),
        "Lift a hold; stages whose time passed follow their late policy.",
        "!resume demo london",
        confirmable=True,
    ),
    CommandSpec(
        "delay",
        (SCENARIO, WHICH, ArgSpec("duration", "duration"), CITY),
        "Shift every pending stage (of a city) by a duration.",
        "!delay demo 15m berlin",
    ),
    CommandSpec(
        "release",
        (SCENARIO, WHICH, ArgSpec("stage"), CITY),
        "Release a stage now, ahead of time or past a hold or gate.",
        "!release demo go london",
        confirmable=True,
    ),
    CommandSpec(
        "redirect",
        (
            SCENARIO,
            WHICH,
            ArgSpec("city", "city"),
            ArgSpec("place"),
            ArgSpec("name_and_geo", "text"),
        ),
        "Change a place (name, optional lat,lon); after its reveal a correction is sent.",
        "!redirect demo london square Trafalgar Square 51.508,-0.128",
    ),
    CommandSpec(
        "abort",
        (SCENARIO, WHICH, CITY, ArgSpec("message", "text", optional=True)),
        "Cancel all pending stages and send the stop message now (city or all first).",
        "!abort demo london Police ahead, go home",
    ),
    CommandSpec(
        "headcount",
        (SCENARIO, WHICH, CITY),
        "Check-ins per city and stage.",
        "!headcount demo",
    ),
    CommandSpec(
        "drill",
        (SCENARIO, ArgSpec("speed", "number", optional=True)),
        "Rehearse a scenario in a new drill room, time compressed (default 60x).",
        "!drill demo 120",
        confirmable=True,
    ),
    CommandSpec(
        "purge",
        (SCENARIO,),
        "Delete everything stored about a finished or disarmed scenario (asks to confirm).",
        "!purge demo",
        audit_ids=False,  # a purged scenario leaves no trace, not even in the audit
        confirmable=True,
    ),
)


class Steering:
    def __init__(
        self,
        *,
        runs: RunManager,
        store: Store,
        client: AsyncClient,
        clock: Clock,
    ) -> None:
        self._runs = runs
        self._store = store
        self._client = client
        self._clock = clock
        self._controller: Controller | None = None

    def register(self, controller: Controller) -> None:
        self._controller = controller
        handlers: dict[str, Handler] = {
            "status": self.status,
            "hold": self.hold,
            "resume": self.resume,
            "delay": self.delay,
            "release": self.release,
            "redirect": self.redirect,
            "abort": self.abort,
            "headcount": self.headcount,
            "drill": self.drill,
            "purge": self.purge,
        }
        for spec in SPECS:
            controller.register(spec, handlers[spec.name])

    def _controller_pick(self, command: Command) -> tuple[ArmedRun, Callable[[str], str]]:
        assert self._controller is not None, "register() first"
        return self._controller.pick(command)

    # -- commands ----------------------------------------------------------------------

    async def status(self, command: Command, ctx: Context) -> Reply:
        runs = list(self._runs.armed.values())
        if "scenario" in command.args:
            sid, which = command.args["scenario"], command.args.get("run")
            runs = [a for a in runs if a.scenario_id == sid]
            if which is not None:
                runs = [a for a in runs if (a.drill_room is not None) == (which.lower() == "drill")]
            if not runs:
                raise ArmError(text.not_armed(sid, which.lower() if which else None))
        if not runs:
            return Reply(text.NOTHING_ARMED)
        lines: list[str] = []
        table: list[tuple[str, ...]] = [text.STATUS_COLUMNS]
        for armed in runs:
            table += await self._status_rows(armed)
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
        lines.append(text.as_of(self._clock.to_wall(self._clock.now())))
        return Reply("\n".join(lines), text_table(table))

    async def _status_rows(self, armed: ArmedRun) -> list[tuple[str, ...]]:
        rows = await self._store.dispatches(armed.run.id)
        counts = await self._store.checkin_counts(armed.run.id)
        # The run's own clock: a drill's columns are drill time, like its instants.
        run_now = armed.clock.now()
        out: list[tuple[str, ...]] = []
        for city in armed.scenario.cities:
            mine = [d for d in rows if d.city_id == city.id]
            pending = [d for d in mine if d.state in (DispatchState.SCHEDULED, DispatchState.HELD)]
            done = sorted(
                (d for d in mine if d.state is DispatchState.RELEASED), key=lambda d: d.stage_index
            )
            deliveries = await self._store.deliveries(armed.run.id, city.id)
            # Rooms, not room x stage: a room with any failed delivery is failed.
            failed = {d.key.room_id for d in deliveries if d.state is DeliveryState.FAILED}
            ok = {d.key.room_id for d in deliveries if d.state is DeliveryState.SENT} - failed
            nxt = min(pending, key=lambda d: d.due_at) if pending else None
            latest = latest_released(armed.scenario, rows, city.id)
            out.append(
                (
                    armed.label(),
                    city.id,
                    (nxt.stage_id + (" (held)" if nxt.state is DispatchState.HELD else ""))
                    if nxt
                    else "-",
                    nxt.due_at.astimezone(ZoneInfo(city.timezone)).strftime("%H:%M:%S %Z")
                    if nxt
                    else "-",
                    nxt.due_at.strftime("%H:%M:%SZ") if nxt else "-",
                    format_duration(nxt.due_at - run_now) if nxt else "-",
                    text.released_list([d.stage_id for d in done]),
                    f"{len(ok)}/{len(failed)}",
                    "held" if city.id in armed.held_cities else "-",
                    text.checkins_cell(counts.get((city.id, latest), 0), latest),
                )
            )
        return out

    async def hold(self, command: Command, ctx: Context) -> Reply:
        armed, say = self._controller_pick(command)
        cities = resolve_cities(armed, command.args.get("city"))
        return Reply(say(await self._runs.hold(armed, cities)))

    async def resume(self, command: Command, ctx: Context) -> Reply:
        armed, say = self._controller_pick(command)
        cities = resolve_cities(armed, command.args.get("city"))
        return Reply(say(await self._runs.resume(armed, cities)))

    async def delay(self, command: Command, ctx: Context) -> Reply:
        armed, say = self._controller_pick(command)
        cities = resolve_cities(armed, command.args.get("city"))
        try:
            by = parse_offset(command.args["duration"])
        except ValueError:
            raise ArmError(text.bad_duration(DURATION_HINT)) from None
        if by == timedelta(0) or abs(by) > timedelta(days=7):
            raise ArmError(text.bad_delay())
        return Reply(say(await self._runs.delay(armed, cities, by)))

    async def release(self, command: Command, ctx: Context) -> Reply:
        armed, say = self._controller_pick(command)
        cities = resolve_cities(armed, command.args.get("city"))
        return Reply(say(await self._runs.release_now(armed, command.args["stage"], cities)))

    async def redirect(self, command: Command, ctx: Context) -> Reply:
        armed, say = self._controller_pick(command)
        city = resolve_cities(armed, command.args["city"], allow_all=False)[0]
        words = command.args["name_and_geo"].split()
        geo: tuple[float, float] | None = None
        match = GEO.match(words[-1]) if words else None
        if match:
            lat, lon = float(match.group(1)), float(match.group(2))
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ArmError(text.geo_range())
            geo = (lat, lon)
            words = words[:-1]
        name = " ".join(words).strip()
        if not name or len(name) > 200:
            raise ArmError(text.redirect_needs_name())
        reply = await self._runs.redirect(armed, city, command.args["place"], name, geo)
        return Reply(say(reply), result="ok: redirected")

    async def abort(self, command: Command, ctx: Context) -> Reply:
        armed, say = self._controller_pick(command)
        which = command.args.get("run")
        message = command.args.get("message")
        cities = abort_cities(
            armed, command.args.get("city"), message, f" {which.lower()}" if which else ""
        )
        return Reply(say(await self._runs.abort(armed, cities, message)), result="ok: aborting")

    async def headcount(self, command: Command, ctx: Context) -> Reply:
        scenario_id = command.args["scenario"]
        city = command.args.get("city")
        armed: ArmedRun | None = None
        if self._runs.by_scenario(scenario_id) or self._runs.by_scenario(scenario_id, drill=True):
            armed, _ = self._controller_pick(command)
        if armed is not None:
            run_id, label = armed.run.id, armed.label()
            city = resolve_cities(armed, city)[0] if city is not None else None
        else:
            # After the action too: the latest run's count, until it is purged.
            runs = await self._store.runs_of(scenario_id)
            if not runs:
                raise ArmError(text.nothing_stored(scenario_id))
            run_id, label = runs[-1].id, f"{scenario_id} (run {runs[-1].id}, {runs[-1].state})"
            city = city.lower() if city is not None else None
        counts = await self._store.checkin_counts(run_id)
        rows = sorted((c, st, n) for (c, st), n in counts.items() if city in (None, c))
        table = [("city", "stage", "check-ins")]
        table += [(c, st or "(before the first stage)", str(n)) for c, st, n in rows]
        total = sum(n for _, _, n in rows)
        return Reply(text.headcount(label, total, city), text_table(table))

    async def drill(self, command: Command, ctx: Context) -> Reply:
        scenario_id = command.args["scenario"]
        speed = float(command.args.get("speed", "60"))
        if self._runs.by_scenario(scenario_id, drill=True) is not None:
            raise ArmError(text.drill_running(scenario_id))
        self._runs.check_armable(scenario_id)
        resp = await self._client.room_create(
            name=f"Drill: {scenario_id}", topic=text.DRILL_ROOM_TOPIC, invite=[ctx.sender]
        )
        if isinstance(resp, RoomCreateError):
            raise ArmError(text.drill_room_failed(resp.status_code))
        drill_room = str(resp.room_id)
        await self._runs.adopt_room(drill_room, ctx.sender)
        body, table = await self._runs.arm(
            scenario_id,
            sender=ctx.sender,
            control_room=ctx.room_id,
            drill_room=drill_room,
            drill_speed=speed,
        )
        return Reply(text.drill_started(body, drill_room, speed), table)

    async def purge(self, command: Command, ctx: Context) -> Reply:
        scenario_id = command.args["scenario"]
        if self._runs.by_scenario(scenario_id) or self._runs.by_scenario(scenario_id, drill=True):
            raise ArmError(text.armed_refuse_purge(scenario_id))
        runs = await self._store.runs_of(scenario_id)
        if not runs:
            raise ArmError(text.nothing_stored(scenario_id))
        assert self._controller is not None
        window = self._controller.confirmations.window_s
        if not ctx.confirmed:
            return Reply(
                text.purge_question(scenario_id, len(runs), window),
                result="asked to confirm",
                ask=True,
            )
        deleted = await self._store.purge(scenario_id)
        return Reply(text.purged(scenario_id, deleted))
