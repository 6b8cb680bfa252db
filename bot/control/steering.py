"""Steering a live action from a control room: hold/resume, delay, release now,
redirect, abort, drills and purge (``!status`` and ``!headcount`` are in
bot/control/status.py).

Each handler checks its arguments against the armed scenario before anything
changes, so a wrong argument gets a usage line and changes nothing. Which run
and which cities a command means is decided in :mod:`bot.control.targets`.
"""

from __future__ import annotations

from datetime import timedelta

from bot.clock import Clock
from bot.control.args import (
    CITY,
    CITY_ARG,
    DURATION_ARG,
    NUMBER_ARG,
    PLACE_ARG,
    RUN,
    SCENARIO,
    SLUG_ARG,
    TEXT_ARG,
    Arg,
)
from bot.control.commands import Controller
from bot.control.registry import Args, Context, Reply, command
from bot.control.status import StatusCommands
from bot.control.targets import abort_cities, resolve_cities
from bot.matrix.actions import ActionFailed, MatrixActions
from bot.runs import ArmError, RunManager
from bot.store import Store
from bot.text import control as text

MAX_DELAY = timedelta(days=7)


class Steering:
    """The steering commands. ``register`` adds them (and the status commands)
    to the controller."""

    def __init__(
        self,
        *,
        runs: RunManager,
        store: Store,
        matrix: MatrixActions,
        clock: Clock,
    ) -> None:
        self._runs = runs
        self._store = store
        self._matrix = matrix
        self._clock = clock
        self._controller: Controller | None = None

    def register(self, controller: Controller) -> None:
        self._controller = controller
        controller.add(StatusCommands(controller, self._runs, self._store, self._clock))
        controller.add(self)

    @property
    def controller(self) -> Controller:
        assert self._controller is not None, "register() first"
        return self._controller

    @command(
        "hold",
        "Hold a city (or all): no stage goes there until !resume.",
        example="!hold demo london",
        args=(SCENARIO, RUN, CITY),
    )
    async def hold(self, ctx: Context, args: Args) -> Reply:
        armed, say = self.controller.pick(args)
        cities = resolve_cities(armed, args.opt_text("city"))
        return Reply(say(await self._runs.hold(armed, cities)))

    @command(
        "resume",
        "Lift a hold; stages whose time passed follow their late policy.",
        example="!resume demo london",
        args=(SCENARIO, RUN, CITY),
        releases=True,
    )
    async def resume(self, ctx: Context, args: Args) -> Reply:
        armed, say = self.controller.pick(args)
        cities = resolve_cities(armed, args.opt_text("city"))
        return Reply(say(await self._runs.resume(armed, cities)))

    @command(
        "delay",
        "Shift every pending stage (of a city) by a duration.",
        example="!delay demo 15m berlin",
        args=(SCENARIO, RUN, Arg("duration", DURATION_ARG), CITY),
    )
    async def delay(self, ctx: Context, args: Args) -> Reply:
        armed, say = self.controller.pick(args)
        cities = resolve_cities(armed, args.opt_text("city"))
        by = args.duration("duration")
        if by == timedelta(0) or abs(by) > MAX_DELAY:
            raise ArmError(text.bad_delay())
        return Reply(say(await self._runs.delay(armed, cities, by)))

    @command(
        "release",
        "Release a stage now, ahead of time or past a hold or gate.",
        example="!release demo go london",
        args=(SCENARIO, RUN, Arg("stage", SLUG_ARG), CITY),
        releases=True,
    )
    async def release(self, ctx: Context, args: Args) -> Reply:
        armed, say = self.controller.pick(args)
        cities = resolve_cities(armed, args.opt_text("city"))
        return Reply(say(await self._runs.release_now(armed, args.text("stage"), cities)))

    @command(
        "redirect",
        "Change a place (name, optional lat,lon); after its reveal a correction is sent.",
        example="!redirect demo london square Trafalgar Square 51.508,-0.128",
        args=(
            SCENARIO,
            RUN,
            Arg("city", CITY_ARG),
            Arg("place", SLUG_ARG),
            Arg("name_and_geo", PLACE_ARG),
        ),
    )
    async def redirect(self, ctx: Context, args: Args) -> Reply:
        armed, say = self.controller.pick(args)
        city = resolve_cities(armed, args.text("city"), allow_all=False)[0]
        new = args.place("name_and_geo")
        reply = await self._runs.redirect(armed, city, args.text("place"), new.name, new.geo)
        return Reply(say(reply), result="ok: redirected")

    @command(
        "abort",
        "Cancel all pending stages and send the stop message now (city or all first).",
        example="!abort demo london Police ahead, go home",
        args=(
            SCENARIO,
            RUN,
            Arg("city", CITY_ARG, optional=True, shown="city|all"),
            Arg("message", TEXT_ARG, optional=True),
        ),
    )
    async def abort(self, ctx: Context, args: Args) -> Reply:
        armed, say = self.controller.pick(args)
        which = args.opt_text("run")
        message = args.opt_text("message")
        cities = abort_cities(armed, args.opt_text("city"), message, f" {which}" if which else "")
        return Reply(say(await self._runs.abort(armed, cities, message)), result="ok: aborting")

    @command(
        "drill",
        "Rehearse a scenario in a new drill room, time compressed (default 60x).",
        example="!drill demo 120",
        args=(SCENARIO, Arg("speed", NUMBER_ARG, optional=True)),
        releases=True,
    )
    async def drill(self, ctx: Context, args: Args) -> Reply:
        scenario_id = args.text("scenario")
        speed = float(args.opt_int("speed") or 60)
        if self._runs.by_scenario(scenario_id, drill=True) is not None:
            raise ArmError(text.drill_running(scenario_id))
        self._runs.check_armable(scenario_id)
        try:
            drill_room = await self._matrix.create_room(
                name=f"Drill: {scenario_id}", topic=text.DRILL_ROOM_TOPIC, invite=[ctx.sender]
            )
        except ActionFailed as err:
            raise ArmError(text.drill_room_failed(err)) from None
        await self._runs.adopt_room(drill_room, ctx.sender)
        out = await self._runs.arm(
            scenario_id,
            sender=ctx.sender,
            control_room=ctx.room_id,
            run_key=ctx.event_id,
            drill_room=drill_room,
            drill_speed=speed,
        )
        return Reply(text.drill_started(out.text, drill_room, speed), out.table)

    @command(
        "purge",
        "Delete everything stored about a finished or disarmed scenario (asks to confirm).",
        example="!purge demo",
        args=(SCENARIO,),
        audit_ids=False,  # a purged scenario leaves no trace, not even in the audit
        confirmable=True,
    )
    async def purge(self, ctx: Context, args: Args) -> Reply:
        scenario_id = args.text("scenario")
        if self._runs.by_scenario(scenario_id) or self._runs.by_scenario(scenario_id, drill=True):
            raise ArmError(text.armed_refuse_purge(scenario_id))
        runs = await self._store.runs.of_scenario(scenario_id)
        if not runs:
            raise ArmError(text.nothing_stored(scenario_id))
        if not ctx.confirmed:
            window = self.controller.confirmations.window_s
            return Reply(
                text.purge_question(scenario_id, len(runs), window),
                result="asked to confirm",
                ask=True,
            )
        # First: a delayed event whose id is deleted could never be cancelled.
        if await self._runs.failsafe_purge(scenario_id):
            raise ArmError(
                f"{scenario_id}: some of its delayed events on the homeserver could not be "
                "cancelled yet; nothing was purged. Try again in a minute."
            )
        deleted = await self._store.purge(scenario_id)
        return Reply(text.purged(scenario_id, deleted))
