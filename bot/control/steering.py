"""Steering a live action from a control room: status, hold/resume, delay,
release now, redirect, abort, head count, drills and purge.

Each handler checks its arguments against the armed scenario before anything
changes, so a wrong argument gets a usage line and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from nio import AsyncClient, RoomCreateError

from bot.clock import Clock
from bot.control.commands import Controller, Reply
from bot.control.parse import ArgSpec, Command, CommandSpec
from bot.ledger import DeliveryState, DispatchState
from bot.policy import format_duration
from bot.report import text_table
from bot.runs import ArmedRun, ArmError, RunManager
from bot.scenario.durations import parse_offset
from bot.store import Store

SCENARIO = ArgSpec("scenario")
CITY = ArgSpec("city", optional=True)
GEO = re.compile(r"^(-?\d{1,2}(?:\.\d+)?),(-?\d{1,3}(?:\.\d+)?)$")
PURGE_CONFIRM_S = 120.0

SPECS = (
    CommandSpec(
        "status",
        (ArgSpec("scenario", optional=True),),
        "Armed scenarios: per city the next stage, releases, holds, check-ins.",
        "!status dc-london-berlin",
    ),
    CommandSpec(
        "hold",
        (SCENARIO, CITY),
        "Hold a city (or all): no stage goes there until !resume.",
        "!hold demo london",
    ),
    CommandSpec(
        "resume",
        (SCENARIO, CITY),
        "Lift a hold; stages whose time passed follow their late policy.",
        "!resume demo london",
    ),
    CommandSpec(
        "delay",
        (SCENARIO, ArgSpec("duration", "duration"), CITY),
        "Shift every pending stage (of a city) by a duration.",
        "!delay demo 15m berlin",
    ),
    CommandSpec(
        "release",
        (SCENARIO, ArgSpec("stage"), CITY),
        "Release a stage now, ahead of time or past a hold or gate.",
        "!release demo go london",
    ),
    CommandSpec(
        "redirect",
        (SCENARIO, ArgSpec("city"), ArgSpec("place"), ArgSpec("name_and_geo", "text")),
        "Change a place (name, optional lat,lon); after its reveal a correction is sent.",
        "!redirect demo london square Trafalgar Square 51.508,-0.128",
    ),
    CommandSpec(
        "abort",
        (SCENARIO, CITY, ArgSpec("message", "text", optional=True)),
        "Cancel all pending stages and send the stop message now.",
        "!abort demo london Police ahead, go home",
    ),
    CommandSpec(
        "headcount",
        (SCENARIO, CITY),
        "Check-ins per city and stage.",
        "!headcount demo",
    ),
    CommandSpec(
        "drill",
        (SCENARIO, ArgSpec("speed", "number", optional=True)),
        "Rehearse a scenario in a new drill room, time compressed (default 60x).",
        "!drill demo 120",
    ),
    CommandSpec(
        "purge",
        (SCENARIO, ArgSpec("confirm", "word", optional=True)),
        "Delete everything stored about a finished or disarmed scenario (asks to confirm).",
        "!purge demo",
        audit_ids=False,  # a purged scenario leaves no trace, not even in the audit
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
        self._purge_asked: dict[tuple[str, str], datetime] = {}

    def register(self, controller: Controller) -> None:
        handlers: dict[str, Callable[[Command, str, str], Awaitable[Reply]]] = {
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

    # -- helpers -----------------------------------------------------------------------

    def _armed(self, command: Command) -> ArmedRun:
        return self._runs.get(command.args["scenario"])

    def _cities(self, armed: ArmedRun, command: Command) -> list[str]:
        return self._runs.cities(armed, command.args.get("city"))

    # -- commands ----------------------------------------------------------------------

    async def status(self, command: Command, sender: str, room_id: str) -> Reply:
        runs = list(self._runs.armed.values())
        if "scenario" in command.args:
            runs = [self._armed(command)]
        if not runs:
            return Reply("Nothing is armed.")
        now = self._clock.now()
        lines: list[str] = []
        table = [
            (
                "scenario",
                "city",
                "next stage",
                "local",
                "UTC",
                "in",
                "released",
                "rooms ok/failed",
                "hold",
                "check-ins",
            )
        ]
        for armed in runs:
            rows = await self._store.dispatches(armed.run.id)
            counts = await self._store.checkin_counts(armed.run.id)
            run_now = armed.clock.now()
            for city in armed.scenario.cities:
                mine = [d for d in rows if d.city_id == city.id]
                pending = [
                    d for d in mine if d.state in (DispatchState.SCHEDULED, DispatchState.HELD)
                ]
                done = [d for d in mine if d.state is DispatchState.RELEASED]
                deliveries = await self._store.deliveries(armed.run.id, city.id)
                sent = len(
                    {
                        d.key.room_id + d.key.stage_id
                        for d in deliveries
                        if d.state is DeliveryState.SENT
                    }
                )
                failed = len(
                    {
                        d.key.room_id + d.key.stage_id
                        for d in deliveries
                        if d.state is DeliveryState.FAILED
                    }
                )
                nxt = min(pending, key=lambda d: d.due_at) if pending else None
                checkins = sum(n for (c, _), n in counts.items() if c == city.id)
                table.append(
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
                        ",".join(d.stage_id for d in done) or "-",
                        f"{sent}/{failed}",
                        "held" if city.id in armed.held_cities else "-",
                        str(checkins),
                    )
                )
            lines.append(f"{armed.label()} (run {armed.run.id}) armed by {armed.run.armed_by}")
        lines.append(f"as of {now:%Y-%m-%d %H:%M:%SZ}")
        return Reply("\n".join(lines), text_table(table))

    async def hold(self, command: Command, sender: str, room_id: str) -> Reply:
        armed = self._armed(command)
        return Reply(await self._runs.hold(armed, self._cities(armed, command)))

    async def resume(self, command: Command, sender: str, room_id: str) -> Reply:
        armed = self._armed(command)
        return Reply(await self._runs.resume(armed, self._cities(armed, command)))

    async def delay(self, command: Command, sender: str, room_id: str) -> Reply:
        armed = self._armed(command)
        cities = self._cities(armed, command)
        try:
            by = parse_offset(command.args["duration"])
        except ValueError:
            raise ArmError("duration must look like 10m, 1h30m or -5m") from None
        if by == timedelta(0) or abs(by) > timedelta(days=7):
            raise ArmError("a delay must be non-zero and at most 7 days")
        return Reply(await self._runs.delay(armed, cities, by))

    async def release(self, command: Command, sender: str, room_id: str) -> Reply:
        armed = self._armed(command)
        return Reply(
            await self._runs.release_now(armed, command.args["stage"], self._cities(armed, command))
        )

    async def redirect(self, command: Command, sender: str, room_id: str) -> Reply:
        armed = self._armed(command)
        city = self._runs.cities(armed, command.args["city"])[0]
        words = command.args["name_and_geo"].split()
        geo: tuple[float, float] | None = None
        match = GEO.match(words[-1]) if words else None
        if match:
            lat, lon = float(match.group(1)), float(match.group(2))
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ArmError("geo out of range: latitude -90..90, longitude -180..180")
            geo = (lat, lon)
            words = words[:-1]
        name = " ".join(words).strip()
        if not name or len(name) > 200:
            raise ArmError(
                "give the new place's name (up to 200 characters), then optionally lat,lon"
            )
        text = await self._runs.redirect(armed, city, command.args["place"], name, geo)
        return Reply(text, result="ok: redirected")

    async def abort(self, command: Command, sender: str, room_id: str) -> Reply:
        armed = self._armed(command)
        city = command.args.get("city")
        message = command.args.get("message")
        ids = [c.id for c in armed.scenario.cities]
        if city is not None and city not in ids:
            # `!abort demo go home`: "go" is the message's first word, not a city.
            message = f"{city} {message}" if message else city
            city = None
        cities = [city] if city else ids
        return Reply(await self._runs.abort(armed, cities, message), result="ok: aborting")

    async def headcount(self, command: Command, sender: str, room_id: str) -> Reply:
        scenario_id = command.args["scenario"]
        city = command.args.get("city")
        armed = self._runs.by_scenario(scenario_id) or self._runs.by_scenario(
            scenario_id, drill=True
        )
        if armed is not None:
            run_id, label = armed.run.id, armed.label()
            if city is not None:
                self._runs.cities(armed, city)  # validates the city
        else:
            # After the action too: the latest run's count, until it is purged.
            runs = await self._store.runs_of(scenario_id)
            if not runs:
                raise ArmError(f"nothing is stored about {scenario_id}")
            run_id, label = runs[-1].id, f"{scenario_id} (run {runs[-1].id}, {runs[-1].state})"
        counts = await self._store.checkin_counts(run_id)
        rows = sorted((c, st, n) for (c, st), n in counts.items() if city in (None, c))
        table = [("city", "stage", "check-ins")]
        table += [(c, st or "(before the first stage)", str(n)) for c, st, n in rows]
        total = sum(n for _, _, n in rows)
        where = f" in {city}" if city else ""
        return Reply(f"{label}: {total} check-ins{where}.", text_table(table))

    async def drill(self, command: Command, sender: str, room_id: str) -> Reply:
        scenario_id = command.args["scenario"]
        speed = float(command.args.get("speed", "60"))
        if self._runs.by_scenario(scenario_id, drill=True) is not None:
            raise ArmError(f"a drill of {scenario_id} is already running; !disarm it first")
        self._runs.check_armable(scenario_id)
        resp = await self._client.room_create(
            name=f"Drill: {scenario_id}",
            topic="Blossom drill room: every stage as it would go to each city, marked DRILL. "
            "Nothing is sent to the real rooms.",
            invite=[sender],
        )
        if isinstance(resp, RoomCreateError):
            raise ArmError(f"could not create the drill room ({resp.status_code})")
        drill_room = str(resp.room_id)
        await self._runs.adopt_room(drill_room, sender)
        text, table = await self._runs.arm(
            scenario_id,
            sender=sender,
            control_room=room_id,
            drill_room=drill_room,
            drill_speed=speed,
        )
        return Reply(
            f"{text}\nDrill room: {drill_room} (you are invited). Time runs {speed:g}x; "
            "the first stage comes in a few seconds. Gates are reported, not waited on.",
            table,
        )

    async def purge(self, command: Command, sender: str, room_id: str) -> Reply:
        scenario_id = command.args["scenario"]
        if self._runs.by_scenario(scenario_id) or self._runs.by_scenario(scenario_id, drill=True):
            raise ArmError(f"{scenario_id} is armed; !disarm it first")
        runs = await self._store.runs_of(scenario_id)
        if not runs:
            raise ArmError(f"nothing is stored about {scenario_id}")
        key = (room_id, scenario_id)
        asked = self._purge_asked.get(key)
        if command.args.get("confirm") != "confirm":
            self._purge_asked[key] = self._clock.now()
            return Reply(
                f"This deletes everything stored about {scenario_id}: {len(runs)} run(s), their "
                "ledger, check-ins and participant ids. Send "
                f"!purge {scenario_id} confirm within {PURGE_CONFIRM_S:.0f} seconds.",
                result="asked to confirm",
            )
        if asked is None or (self._clock.now() - asked).total_seconds() > PURGE_CONFIRM_S:
            raise ArmError(
                f"send !purge {scenario_id} first, then confirm within "
                f"{PURGE_CONFIRM_S:.0f} seconds"
            )
        del self._purge_asked[key]
        deleted = await self._store.purge(scenario_id)
        return Reply(f"Purged {scenario_id}: {deleted} run(s) and everything about them deleted.")
