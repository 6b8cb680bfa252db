"""What every part of the run manager shares: its dependencies, the armed runs,
and the lookups they all make (served rooms, rendered messages, releases)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from bot.clock import Clock
from bot.content import stage_messages
from bot.dispatch import Dispatcher, Message, Release
from bot.i18n import Catalogs, Translator, english
from bot.library import ScenarioLibrary
from bot.matrix.rooms import RoomRegistry
from bot.matrix.sender import Sender
from bot.notify import Notifier
from bot.policy import retry_deadline
from bot.runs import lanes
from bot.runs.duty import CrewSide
from bot.runs.model import ArmedRun
from bot.runs.supervisor import Supervisor
from bot.scenario import render_stage
from bot.scenario.audience import Audience
from bot.scenario.timeline import split_lane
from bot.schedule import Timers
from bot.store import DispatchRow, Store

if TYPE_CHECKING:
    from bot.runs.failsafe import Switch


@dataclass
class RunContext:
    store: Store
    library: ScenarioLibrary
    rooms: RoomRegistry
    dispatcher: Dispatcher
    sender: Sender
    timers: Timers
    notifier: Notifier
    clock: Clock
    ready: asyncio.Event
    lead: timedelta
    rate: float
    burst: int
    # Participants' languages (the default stop message); None: English only.
    catalogs: Catalogs | None = None
    # The crew this bot belongs to (bot/crew/link.py); None: a bot alone, which
    # sends every room at the instant, exactly as before crews.
    crew: CrewSide | None = None
    # The dead-man's switch (bot/runs/failsafe.py); None: not wired (a scenario
    # with failsafe.server is then refused at !arm).
    failsafe: Switch | None = None
    armed: dict[int, ArmedRun] = field(default_factory=dict)
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.notifier, self.ready, self.control_room_of)

    def armed_changed(self) -> None:
        """A run was armed, disarmed or finished: the crew's heartbeat lists the
        armed files' digests, so it beats now rather than at its next turn."""
        if self.crew is not None:
            self.crew.nudge()

    def translator(self, armed: ArmedRun, city_id: str) -> Translator:
        """How the bot's own words reach this city's participants."""
        language = armed.scenario.city(city_id).language
        if self.catalogs is None:
            return english()
        return self.catalogs.translator(language)

    def control_room_of(self, run_id: int) -> str | None:
        armed = self.armed.get(run_id)
        return armed.run.control_room if armed else None

    async def served_rooms(
        self, armed: ArmedRun, city_id: str, *, refresh: bool = True
    ) -> list[str]:
        """Rooms that get this city's stages now: the drill room in a drill;
        otherwise the opted-in listed rooms (every pod's, in a city with pods)
        plus private (direct) participants. ``refresh=False`` takes aliases as
        last resolved (no request for those already known): for check-ins, and
        for an abort, which must not wait on the homeserver before its stop
        message leaves."""
        if armed.drill_room is not None:
            return [armed.drill_room]
        city = armed.scenario.city(city_id)
        listed = [
            r
            for pod in lanes.lanes_of(armed.scenario, city_id)
            for r in self._listed(armed, pod, None)
        ]
        rooms = await self.rooms.served_rooms(listed, refresh=refresh)
        if city.direct:
            direct = await self.store.participants.direct_rooms(armed.scenario_id, city_id)
            rooms += [r for r in await self.rooms.served_rooms(direct) if r not in rooms]
        return rooms

    @staticmethod
    def _listed(
        armed: ArmedRun, lane: str, audiences: tuple[Audience, ...] | None
    ) -> tuple[str, ...]:
        city, pod = lanes.pod_of(armed.scenario, lane)
        return lanes.listed_rooms(city, pod, audiences)

    async def lane_rooms(
        self,
        armed: ArmedRun,
        lane: str,
        audiences: tuple[Audience, ...] | None,
        *,
        refresh: bool = True,
    ) -> list[str]:
        """Rooms of one lane that get a dispatch for ``audiences`` (None: every
        room of the lane, as a stop message goes): the lane's listed rooms with
        those roles, and the private participants assigned to its pod whose
        role is among them. Never a room of another pod."""
        if armed.drill_room is not None:
            return [armed.drill_room]
        city, pod = lanes.pod_of(armed.scenario, lane)
        rooms = await self.rooms.served_rooms(
            lanes.listed_rooms(city, pod, audiences), refresh=refresh
        )
        if city.direct:
            pod_id = pod.id if pod is not None else None
            direct = [
                m.room_id
                for m in await self.store.participants.direct_members(armed.scenario_id, city.id)
                if m.pod_id == pod_id
                and (audiences is None or lanes.member_role(armed.scenario, m.role_id) in audiences)
            ]
            rooms += [r for r in await self.rooms.served_rooms(direct) if r not in rooms]
        return rooms

    async def dispatch_rooms(self, armed: ArmedRun, lane: str, unit: str) -> list[str]:
        """The rooms a dispatch row goes to now (a synthetic one: the whole lane)."""
        found = armed.units.get((lane, unit))
        return await self.lane_rooms(armed, lane, found.audiences if found else None)

    def messages(self, armed: ArmedRun, lane: str, unit: str) -> tuple[Message, ...]:
        """A dispatch's parts: its pod's places (and redirects, and delay), its
        variant's text."""
        city_id, pod_id = split_lane(lane)
        found = armed.units.get((lane, unit))
        rendered = render_stage(
            armed.scenario,
            city_id,
            lanes.stage_of(unit),
            place_overrides=armed.overrides_for(lane),
            delay=armed.delay_for(lane),
            pod=pod_id,
            role=found.audiences[0] if found else None,
        )
        label = None
        if armed.drill_room is not None:
            # A drill room gets every pod's and role's dispatch: say whose it is.
            where = armed.scenario.city(city_id).name + (f" · {pod_id}" if pod_id else "")
            label = f"{armed.scenario_id} · {where} · {unit}"
        return stage_messages(rendered, drill_label=label)

    async def build_release(self, armed: ArmedRun, row: DispatchRow) -> Release:
        stage = armed.scenario.stage(lanes.stage_of(row.stage_id))
        rooms = await self.dispatch_rooms(armed, row.city_id, row.stage_id)
        # Rooms already in the ledger for this dispatch (a resumed release) keep
        # their rows; ones no longer served are skipped by the dispatcher, and a
        # SENT row is never sent again.
        for d in await self.store.ledger.deliveries(row.run_id, row.city_id, row.stage_id):
            if d.key.room_id not in rooms:
                rooms.append(d.key.room_id)
                self.dispatcher.forget_room(d.key.room_id)
        return Release(
            run_id=row.run_id,
            scenario_id=armed.scenario_id,
            city_id=row.city_id,
            stage_id=row.stage_id,
            due_at=row.due_at,
            rooms=tuple(rooms),
            messages=self.messages(armed, row.city_id, row.stage_id),
            deadline=retry_deadline(row.due_at, stage.late.skip_after)
            if armed.drill_room is None
            else None,
            run_key=armed.run_key,
            stage_index=row.stage_index,
        )
