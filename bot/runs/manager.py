"""The run manager: one object the control layer and the app talk to, built
from the parts in this package (arming, the instant's shell, steering)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

from bot.clock import Clock
from bot.dispatch import Dispatcher, Release
from bot.i18n import Catalogs
from bot.library import LibraryError, ScenarioLibrary
from bot.matrix.delayed import DelayedEvents
from bot.matrix.rooms import RoomRegistry
from bot.matrix.sender import Sender
from bot.notify import Notifier
from bot.runs.arming import Arming
from bot.runs.context import RunContext
from bot.runs.duty import CrewSide
from bot.runs.failsafe import Seal, Switch, counts_line
from bot.runs.model import ArmedRun, ArmError, ArmPreview
from bot.runs.options import ArmOptions, parse_arm_options
from bot.runs.release import ReleaseShell
from bot.runs.steering import Steering
from bot.schedule import Timers
from bot.store import DispatchRow, Store


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
        catalogs: Catalogs | None = None,
        crew: CrewSide | None = None,
    ) -> None:
        self._ctx = RunContext(
            store=store,
            library=library,
            rooms=rooms,
            dispatcher=dispatcher,
            sender=sender,
            timers=timers,
            notifier=notifier,
            clock=clock,
            ready=ready,
            lead=timedelta(seconds=prepare_seconds),
            rate=expected_msgs_per_second,
            burst=rate_burst,
            catalogs=catalogs,
            crew=crew,
        )
        self._shell = ReleaseShell(self._ctx)
        self._arming = Arming(self._ctx, self._shell)
        self._steering = Steering(self._ctx, self._shell)
        # Steering methods, as they are.
        self.hold = self._steering.hold
        self.resume = self._steering.resume
        self.delay = self._steering.delay
        self.release_now = self._steering.release_now
        self.redirect = self._steering.redirect
        self.abort = self._steering.abort
        self.restore = self._arming.restore
        self.arm = self._arming.arm
        self.disarm = self._arming.disarm
        self.wait_idle = self._ctx.supervisor.wait_idle

    def attach_crew(self, crew: CrewSide) -> None:
        """Send by the crew's duty from now on (docs/crew.md); before any run is
        restored. For the app, whose crew control needs this run manager."""
        self._ctx.crew = crew

    def attach_failsafe(self, server: DelayedEvents, seal: Seal) -> Switch:
        """Wire the dead-man's switch (docs/crew.md, "The switch"): delayed events
        through ``server``, content sealed by ``seal`` for encrypted rooms."""
        self._ctx.failsafe = Switch(self._ctx, server, seal)
        return self._ctx.failsafe

    @property
    def failsafe(self) -> Switch | None:
        return self._ctx.failsafe

    async def failsafe_line(self, runs: Sequence[ArmedRun]) -> str | None:
        """The switch's counts for ``!status`` and ``!crew`` (never ids)."""
        return await counts_line(self._ctx.store.delayed, runs)

    async def failsafe_purge(self, scenario_id: str) -> int:
        """Before ``!purge``: cancel the scenario's delayed events that may still
        fire; how many could not be (the purge must then wait)."""
        switch = self._ctx.failsafe
        return await switch.purge(scenario_id) if switch is not None else 0

    @property
    def armed(self) -> dict[int, ArmedRun]:
        return self._ctx.armed

    # -- lookups -----------------------------------------------------------------------

    def by_scenario(self, scenario_id: str, *, drill: bool = False) -> ArmedRun | None:
        return next(
            (
                a
                for a in self._ctx.armed.values()
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

    async def served_rooms(
        self, armed: ArmedRun, city_id: str, *, refresh: bool = True
    ) -> list[str]:
        return await self._ctx.served_rooms(armed, city_id, refresh=refresh)

    async def runs_of_room(self, room_id: str) -> list[tuple[ArmedRun, str]]:
        """(armed run, city id) pairs whose stages go to this room."""
        found: list[tuple[ArmedRun, str]] = []
        for armed in list(self._ctx.armed.values()):
            for city in armed.scenario.cities:
                if room_id in await self._ctx.served_rooms(armed, city.id, refresh=False):
                    found.append((armed, city.id))
        return found

    async def build_release(self, armed: ArmedRun, row: DispatchRow) -> Release:
        return await self._ctx.build_release(armed, row)

    # -- arming ------------------------------------------------------------------------

    def check_armable(self, scenario_id: str) -> None:
        """Raise ArmError now if the scenario cannot be loaded (before side effects)."""
        try:
            self._ctx.library.find(scenario_id)
        except LibraryError as err:
            raise ArmError(str(err)) from None

    def arm_options(self, scenario_id: str, text: str) -> ArmOptions:
        """``!arm``'s words after the scenario id (bot/runs/options.py)."""
        scenario = self._arming.find(scenario_id).scenario
        zones = {c.id: c.timezone for c in scenario.cities}
        return parse_arm_options(text, zones, self._ctx.clock.now())

    async def adopt_room(self, room_id: str, by: str) -> None:
        """A room the bot made itself (a drill room): opted in, and usable for
        sending once the sync has brought it into the client's rooms."""
        await self._ctx.store.rooms.set(
            room_id, "joined", now=self._ctx.clock.now(), opted_in_by=by, note="created by the bot"
        )
        await self._ctx.rooms.wait_known(room_id)

    async def preview(
        self,
        scenario_id: str,
        start_at: datetime | None = None,
        *,
        resend_past: bool = False,
    ) -> ArmPreview:
        """What ``!arm`` would do, without side effects."""
        return await self._arming.preview(scenario_id, start_at=start_at, resend_past=resend_past)

    async def cancel_city(self, armed: ArmedRun, city_id: str, reason: str) -> int:
        return await self._shell.cancel_city(armed, city_id, reason)
