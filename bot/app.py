"""Wire the bot together and run it until told to stop. The imperative shell.

Everything is built here and passed in explicitly; nothing is a module-level
singleton. The sync's typed events (bot/matrix/events.py) are routed to their
handlers here, in two in-order lanes. ``run_bot`` is what ``blossom run`` (and
the demo) call.

With a ``crew`` section the bot is one member of a crew (docs/crew.md): its
roster publishes and reads heartbeats in the control rooms, only the speaker
talks there, the crew's bots are never taken as commands or check-ins, and
duplicates of a dispatch are redacted by the later member. Without it nothing
of the crew is built: the bot works alone, as before.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from nio import AsyncClient

from bot.clock import Clock
from bot.config import Config, CrewConfig
from bot.control.commands import Controller
from bot.control.crew import CrewControl
from bot.control.lanes import lane_entries
from bot.control.participants import Participants
from bot.control.steering import Steering
from bot.crew import Crew
from bot.crew.link import CrewLink
from bot.dispatch import Dispatcher
from bot.i18n import Catalogs
from bot.library import ScenarioLibrary
from bot.matrix.actions import MatrixActions
from bot.matrix.crew_state import MatrixCrewState
from bot.matrix.crosssign import ensure_cross_signing
from bot.matrix.delayed import DelayedEvents, encrypt_for_room
from bot.matrix.events import (
    BotJoined,
    BotRemoved,
    Command,
    Dispatched,
    Heartbeats,
    Invited,
    MatrixEvent,
    MemberLeft,
    Reacted,
    RoomUpgraded,
    Said,
)
from bot.matrix.rooms import RoomRegistry
from bot.matrix.sender import MatrixSender
from bot.matrix.session import open_session
from bot.matrix.sync import SyncLoop
from bot.matrix.watch import ControlWatch
from bot.notify import WAIT_IN_ROOM_S, Notifier
from bot.runs import RunManager
from bot.runs.doubles import OwnDoubles
from bot.schedule import Timers
from bot.store import Store
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DB_FILE = "blossom.db"
# A clean stop must end well inside systemd's TimeoutStopSec (30 s, docs/operators.md).
SHUTDOWN_GRACE_S = 5.0
TASK_STOP_S = 3.0
# The switch's periodic pass, and how old an answer about the feature may be.
FAILSAFE_EVERY_S = 20.0
FAILSAFE_FRESH_S = 0.0
SealedEvent = tuple[str, dict[str, Any]]
# Command event ids remembered against a second reading (watch, then sync).
_TAKEN_KEPT = 4096


class Bot:
    """One running bot: its client, store, timers and the pieces between them."""

    def __init__(self, config: Config, clock: Clock, client: AsyncClient, store: Store) -> None:
        self.config = config
        self.clock = clock
        self.client = client
        self.store = store
        self.sender = MatrixSender(client)
        self.matrix = MatrixActions(client, clock)
        members = config.crew.members if config.crew is not None else ()
        self.crew: CrewControl | None = None  # built below when the config has a crew
        self.notifier = Notifier(
            self.sender,
            clock,
            config.control.rooms,
            in_room=self.matrix.in_room,
            speaking=lambda: self.crew is None or self.crew.speaking(),
        )
        self.rooms = RoomRegistry(
            self.matrix,
            store,
            clock,
            control_rooms=config.control.rooms,
            min_control_power=config.control.min_power_level,
            crew=members,
        )
        self.library = ScenarioLibrary(config.scenarios.dir)
        self.dispatcher = Dispatcher(
            store, self.sender, clock, max_in_flight=config.dispatch.max_in_flight
        )
        self.watch = ControlWatch(
            client,
            lambda: self.rooms.control_rooms,
            self._on_watched_command,
            interval_s=config.dispatch.control_poll_seconds,
            crew=members,
            on_heartbeats=self._on_heartbeats if members else None,
        )
        self.sync = SyncLoop(
            client,
            on_events=self._route,
            control_rooms=config.control.rooms,
            hold=self.dispatcher.quiet,
            max_hold_s=config.dispatch.sync_hold_seconds,
            while_held=self.watch.watch,
            # Alone, the bot is a crew of one: its own tagged copies still come
            # through as Dispatched, for its doubles (bot/runs/doubles.py).
            crew=members or (config.matrix.user_id,),
        )
        self.timers = Timers()
        self.catalogs = Catalogs()  # participants' languages, read once (bot/i18n)
        self.runs = self._run_manager()
        self._attach_failsafe()
        if config.crew is not None:
            self.crew = self._crew_control(config.crew)
        self.doubles = OwnDoubles(
            config.matrix.user_id,
            armed=lambda: self.runs.armed.values(),
            matrix=self.matrix,
            notifier=self.notifier,
            ledger=store.ledger,
        )
        self.controller, self.participants = self._commands_and_participants()
        # Room events are handled one at a time, in order, off the sync path:
        # a slow command must not stall the sync.
        self._inbox: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        # Control-room commands have their own lane, in order among themselves:
        # an !abort must not queue behind a crowd's check-ins.
        self._commands: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        if self.crew is not None:  # the speaker's roll call must not hold the lane
            self.crew.lane_waiting = lambda: not self._commands.empty()
        # Command event ids already taken (the control watch and the sync both
        # read the control rooms during a fan-out); bounded, oldest dropped.
        self._taken: dict[str, None] = {}
        # room id -> origin_server_ts of the bot's join seen in this session. The
        # sync that brings a newly joined room carries its history too: commands
        # older than the join are history, not orders.
        self._joined_at: dict[str, int] = {}

    # -- construction (the parts that depend on the ones built before) ---------------

    def _run_manager(self) -> RunManager:
        config = self.config
        return RunManager(
            store=self.store,
            library=self.library,
            rooms=self.rooms,
            dispatcher=self.dispatcher,
            sender=self.sender,
            timers=self.timers,
            notifier=self.notifier,
            clock=self.clock,
            ready=self.sync.ready,
            prepare_seconds=config.dispatch.prepare_seconds,
            expected_msgs_per_second=config.dispatch.expected_msgs_per_second,
            rate_burst=config.dispatch.rate_burst,
            catalogs=self.catalogs,
        )

    def _attach_failsafe(self) -> None:
        """The dead-man's switch (docs/crew.md): delayed events on this bot's own
        homeserver, encrypted by the bot for encrypted rooms."""
        client, lock = self.client, self.sender.keys_lock

        async def seal(room: str, event_type: str, content: dict[str, Any]) -> SealedEvent:
            return await encrypt_for_room(client, room, event_type, content, keys_lock=lock)

        # The flag is asked before every scheduling request (a server without it
        # would send at once): FAILSAFE_FRESH_S = 0.
        self.runs.attach_failsafe(DelayedEvents(client, fresh_for_s=FAILSAFE_FRESH_S), seal)

    async def _failsafe_pass(self) -> None:
        """At start (after the first sync) and every FAILSAFE_EVERY_S: schedule
        what is due, cancel what may no longer fire, and at start orphans."""
        switch = self.runs.failsafe
        if switch is None:
            return
        await self.sync.ready.wait()
        while True:
            try:
                await switch.tick()
            except Exception:
                log.exception("the failsafe's pass failed")  # ids only; retried
            await asyncio.sleep(FAILSAFE_EVERY_S)

    def _crew_control(self, crew: CrewConfig) -> CrewControl:
        control = CrewControl(
            crew=Crew.from_config(crew),
            me=self.config.matrix.user_id,
            control_rooms=self.config.control.rooms,
            port=MatrixCrewState(self.client),
            runs=self.runs,
            library=self.library,
            matrix=self.matrix,
            notifier=self.notifier,
            clock=self.clock,
        )
        # Sending by duty (docs/crew.md): the run manager reads the roster.
        self.runs.attach_crew(CrewLink(roster=control.roster, matrix=self.matrix))
        return control

    def _commands_and_participants(self) -> tuple[Controller, Participants]:
        controller = Controller(
            store=self.store,
            runs=self.runs,
            rooms=self.rooms,
            notifier=self.notifier,
            clock=self.clock,
            crew=self.crew,
        )
        steering = Steering(runs=self.runs, store=self.store, matrix=self.matrix, clock=self.clock)
        steering.register(controller)
        participants = Participants(
            matrix=self.matrix,
            store=self.store,
            runs=self.runs,
            library=self.library,
            dispatcher=self.dispatcher,
            notifier=self.notifier,
            clock=self.clock,
            catalogs=self.catalogs,
            rooms=self.rooms,
            prepare_lead=timedelta(seconds=self.config.dispatch.prepare_seconds),
        )
        return controller, participants

    # -- events ----------------------------------------------------------------------

    async def _route(self, events: Sequence[MatrixEvent]) -> None:
        """One sync's typed events (bot/matrix/events.py, in their order) to
        their handlers: queued, never awaited here (the sync must not wait)."""
        for ev in events:
            match ev:
                case BotJoined():
                    self._joined_at[ev.room_id] = ev.ts
                case Command():
                    self._take_command(ev)
                case Said():
                    self._queue(
                        self.participants.on_message, ev.room_id, ev.event_id, ev.sender, ev.body
                    )
                case Reacted():
                    self._queue(self.participants.on_reaction, ev.room_id, ev.sender, ev.reacts_to)
                case MemberLeft():
                    self._queue(self.participants.on_member_left, ev.room_id, ev.user_id)
                case RoomUpgraded():
                    self._queue(
                        self.rooms.on_tombstone, ev.room_id, ev.successor, ev.by, self._report
                    )
                case Invited():
                    self._queue(self._invited, ev)
                case BotRemoved():
                    self._queue(self._removed, ev)
                case Heartbeats():
                    self._on_heartbeats(ev)
                case Dispatched():
                    if self.crew is not None:
                        self._queue(self.crew.on_dispatched, ev)
                    self._queue(self.doubles.on_dispatched, ev)

    def _queue(self, handler: Callable[..., Awaitable[object]], *args: object) -> None:
        async def job() -> None:
            await handler(*args)

        self._inbox.put_nowait(job)

    def _take_command(self, command: Command) -> None:
        """Queue a control-room command once, however many times it is read."""
        if command.event_id in self._taken:
            return
        self._taken[command.event_id] = None
        if len(self._taken) > _TAKEN_KEPT:
            del self._taken[next(iter(self._taken))]

        async def run() -> None:
            # Checked in the lane: the join comes later in the same timeline.
            if command.ts < self._joined_at.get(command.room_id, 0):
                return
            await self.controller.handle(
                command.room_id,
                command.event_id,
                command.sender,
                command.body,
                sent_ms=command.ts,
            )

        self._commands.put_nowait(run)

    def _on_heartbeats(self, ev: Heartbeats) -> None:
        """The crew's heartbeats, from a sync or the control watch (never raises)."""
        if self.crew is not None:
            self.crew.roster.ingest(ev.room_id, ev.events)
            self.crew.heard()

    async def _on_watched_command(self, command: Command) -> None:
        if self.sync.taking_commands and command.room_id in self.rooms.control_rooms:
            self._take_command(command)

    async def _invited(self, ev: Invited) -> None:
        listed, direct_open = self.library.opt_in_facts()
        # Rooms an armed run names count as listed too (its file may have moved on).
        # Pod rooms included: in a city with pods every room is a pod's.
        listed |= {
            room
            for a in self.runs.armed.values()
            for c in a.scenario.cities
            for _pod, room, _role in lane_entries(c)
        }
        if await self.rooms.on_invite(
            ev.room_id,
            ev.inviter,
            listed_rooms=listed,
            report=self._report,
            is_direct=ev.is_direct,
            direct_open=direct_open,
        ):
            # Opted in again after a removal: stages may go there again.
            self.dispatcher.remember_room(ev.room_id)
            named = ev.room_id in self.rooms.control_rooms or (
                ev.room_id in await self.rooms.resolve_all(listed)
            )
            if self.crew is not None and named:
                await self.crew.invite_crew(ev.room_id)  # the rest of the crew follows

    async def _removed(self, ev: BotRemoved) -> None:
        ours = ev.by == self.matrix.user_id
        if ours and await self.store.rooms.membership(ev.room_id) != "joined":
            # Our own leave: a declined invite, a failed power check, a private
            # chat closed (each recorded before leaving). A leave "by us" of a
            # room still joined is the server's doing: the room was deleted or
            # shut down by an admin.
            return
        self.dispatcher.forget_room(ev.room_id)
        await self.participants.forget_room(ev.room_id)
        await self.rooms.on_removed(ev.room_id, ev.by, ev.membership, self._report)

    async def _report(self, text: str) -> None:
        await self.notifier.report(None, text)

    async def _start_crew(self) -> None:
        """Start the heartbeat once the bot is in its control rooms: the invites
        are handled after the first sync, and a heartbeat sent before the join
        is refused (403) and would be retried only at the heartbeat rate."""
        if self.crew is None:
            return
        await self.sync.ready.wait()
        for room in sorted(self.rooms.control_rooms):
            await self.matrix.wait_in_room(room, WAIT_IN_ROOM_S)
        await self.crew.roster.load()  # bounded; the syncs bring them too
        self.crew.roster.start()

    @staticmethod
    async def _work(queue: asyncio.Queue[Callable[[], Awaitable[None]]]) -> None:
        while True:
            job = await queue.get()
            try:
                await job()
            except Exception:
                # One bad event must never stop the bot; log the kind, not content.
                log.exception("handling a room event failed")

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.timers.start()
        await self.runs.restore()
        crew_start = asyncio.create_task(self._start_crew(), name="crew start")
        failsafe = asyncio.create_task(self._failsafe_pass(), name="failsafe")
        tasks = [
            asyncio.create_task(self.sync.run(), name="sync"),
            asyncio.create_task(self._work(self._inbox), name="inbox"),
            asyncio.create_task(self._work(self._commands), name="commands"),
        ]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception() is not None:
                log.error("task %s died: %r", t.get_name(), t.exception())
        log.info("stopping")
        # Nothing new leaves; the requests in flight finish and are recorded
        # (no delivery is left SENDING by a clean stop). Only then are the
        # timers shut down: that cancels the release jobs still running.
        self.dispatcher.stop()
        await self.runs.wait_idle(SHUTDOWN_GRACE_S)
        if self.crew is not None:
            # After the last send: the others take over at once, with nothing of
            # this member's still in flight (bounded, 5 s).
            await self.crew.roster.stopping()
        self.timers.shutdown()
        await self.notifier.close()
        stuck = await cancel_and_wait(*tasks, stopper, crew_start, failsafe, within_s=TASK_STOP_S)
        for t in stuck:
            log.error("task %s did not stop within %.0fs", t.get_name(), TASK_STOP_S)


async def run_bot(config: Config, clock: Clock, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set, or until SIGTERM/SIGINT when ``stop`` is None."""
    own_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    config.storage.path.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.storage.path / DB_FILE)
    client: AsyncClient | None = None
    try:
        client = await open_session(config)
        await ensure_cross_signing(client, config)  # never raises; see docs/encryption.md
        bot = Bot(config, clock, client, store)
        await bot.run(stop)
    finally:
        if client is not None:
            await client.close()
        await store.close()
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
