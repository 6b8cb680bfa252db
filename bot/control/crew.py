"""The crew on the control side (docs/crew.md): one voice, arming across the crew,
``!crew``, the duty line of ``!status``, invites among members, and redacting this
member's own copy of a dispatch another member also delivered.

Built only when the config has a ``crew`` section; without it nothing here runs
and the bot behaves as it did alone. The decisions are pure
(:mod:`bot.crew.duty`, :mod:`bot.crew.rollcall`, :mod:`bot.crew.look`); this is
the shell that feeds them from the roster, the runs and the rooms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from bot import __version__
from bot.clock import Clock
from bot.control.registry import Args, Context, Reply, command
from bot.crew.duty import CrewView
from bot.crew.heartbeat import MAX_ANSWERS, Answer
from bot.crew.look import Copy, resolve
from bot.crew.members import Crew, unknown_members
from bot.crew.publish import CrewStatePort, PublishProblem
from bot.crew.rollcall import (
    ARMED,
    NOT_ARMED,
    REFUSED,
    answered,
    follow,
    roll_call,
    roll_call_window,
)
from bot.crew.roster import Roster
from bot.library import LibraryError, ScenarioLibrary
from bot.matrix.actions import MatrixActions
from bot.matrix.events import Dispatched
from bot.notify import Notifier
from bot.report import text_table
from bot.runs import ArmedRun, ArmError, RunManager
from bot.runs.lanes import all_rooms, city_of
from bot.scenario import Scenario
from bot.text import crew as text

log = logging.getLogger(__name__)

_COPIES_KEPT = 4096  # dispatch parts whose copies are remembered (oldest dropped)
_NO_INVITE = frozenset({"join", "invite", "ban"})  # memberships invite_crew leaves alone
SPEAKER_ONLY = frozenset({"drill"})
"""Commands only the speaker acts on: one drill room, not one per member."""

ArmOnce = Callable[[bool], Awaitable[Reply]]
"""Arms as a lone bot would (``confirmed``); raises ArmError when refused."""


class CrewControl:
    """This member's part in the crew, as the control side sees it."""

    def __init__(
        self,
        *,
        crew: Crew,
        me: str,
        control_rooms: Sequence[str],
        port: CrewStatePort,
        runs: RunManager,
        library: ScenarioLibrary,
        matrix: MatrixActions,
        notifier: Notifier,
        clock: Clock,
    ) -> None:
        self.crew = crew
        self.me = me
        self._runs = runs
        self._library = library
        self._matrix = matrix
        self._notifier = notifier
        self._clock = clock
        self._answers: dict[str, Answer] = {}
        self._follow_ups: set[asyncio.Task[None]] = set()
        self.lane_waiting: Callable[[], bool] = lambda: False
        """Whether a command waits in the command lane (set by the app): the
        speaker's roll call then goes out as a follow-up, not holding it."""
        self._heard = asyncio.Event()
        self._copies: dict[tuple[str, str, str, str, str], set[Copy]] = {}
        self._done: set[str] = set()  # copies redacted, or duplicates reported
        # Runs by run key, kept after they finish: a duplicate may be seen later.
        self._known: dict[str, ArmedRun] = {}
        self.roster = Roster(
            crew=crew,
            me=me,
            rooms=control_rooms,
            port=port,
            clock=clock,
            version=__version__,
            armed=self.armed_digests,
            answers=self.answers,
            report=self._report_problem,
        )

    # -- what the heartbeat says -----------------------------------------------------

    def armed_digests(self) -> set[str]:
        armed = list(self._runs.armed.values())
        for run in armed:  # read at every heartbeat: restored runs are known too
            self._known[run.run_key] = run
        while len(self._known) > MAX_ANSWERS:
            del self._known[next(iter(self._known))]
        return {a.loaded.sha256 for a in armed}

    def answers(self) -> list[Answer]:
        return list(self._answers.values())

    def _answer(self, run_key: str, scenario: str, digest: str, state: str) -> None:
        self._answers[run_key] = Answer(run_key, scenario, digest, state)
        while len(self._answers) > MAX_ANSWERS:
            del self._answers[next(iter(self._answers))]
        self.roster.nudge()

    async def _report_problem(self, problem: PublishProblem) -> None:
        # Said by this member whether or not it speaks: the others only see it
        # down, and only it knows why (ids and the fix, never content).
        await self._notifier.report(None, str(problem), voice=True)

    # -- who speaks --------------------------------------------------------------------

    def is_member(self, user_id: str) -> bool:
        return user_id in self.crew

    def view(self) -> CrewView:
        return self.roster.view()

    def speaker(self) -> str | None:
        """The speaker now, without waiting (see :meth:`decide`)."""
        return self.roster.speaker()

    def speaking(self) -> bool:
        return self.speaker() == self.me

    async def decide(self) -> str | None:
        """The speaker, once decided: right after start-up a member not heard
        yet is unknown (docs/crew.md, the start-up rule), and a command read
        meanwhile waits for it — at most the start-up window, off the sync path
        (in the command lane) — so exactly one member answers it."""
        window = roll_call_window(self.crew.heartbeat).total_seconds()
        return await self.roster.decided_speaker(timeout_s=2 * window)

    def command_read(self) -> None:
        self.roster.command_read()

    def heard(self) -> None:
        """Heartbeats were ingested: wake whoever waits for an answer."""
        self._heard.set()

    async def _until(self, done: Callable[[], bool], deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._heard.clear()
            if done():
                return True
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._heard.wait()
            except TimeoutError:
                pass  # check again: a member may have gone down meanwhile
        return True

    def _answer_of(self, member: str, run_key: str) -> Answer | None:
        if member == self.me:
            return self._answers.get(run_key)
        beat = self.roster.heartbeat_of(member)
        return beat.answer(run_key) if beat is not None else None

    # -- !arm across the crew --------------------------------------------------------------

    def _digest(self, scenario_id: str) -> tuple[str, Scenario | None]:
        try:
            loaded = self._library.find(scenario_id)
        except LibraryError:
            return "", None
        return loaded.sha256, loaded.scenario

    async def arm(self, ctx: Context, scenario_id: str, arm_once: ArmOnce) -> Reply:
        """``!arm`` as a crew member: the speaker decides and lists the roll call;
        the others follow the speaker's answer (:func:`bot.crew.rollcall.follow`)."""
        digest, scenario = self._digest(scenario_id)
        reference = await self.decide()
        window = roll_call_window(self.crew.heartbeat).total_seconds()
        deadline = asyncio.get_running_loop().time() + window
        problems = unknown_members(scenario, self.crew) if scenario is not None else []
        if problems:
            self._answer(ctx.event_id, scenario_id, digest, REFUSED)
            raise ArmError("; ".join(str(p) for p in problems) + ". Nothing was armed.")
        if reference != self.me:
            return await self._follow(ctx, scenario_id, digest, reference, arm_once, deadline)
        reply = await self._arm_here(ctx, scenario_id, digest, arm_once, confirmed=ctx.confirmed)
        key = ctx.event_id
        await self._until(lambda: self._all_answered(key) or self.lane_waiting(), deadline)
        if self._all_answered(key) or asyncio.get_running_loop().time() >= deadline:
            listed = self._listing(key)
        else:
            # Another command waits behind this one: answer now, and list the
            # crew in a follow-up once it has answered (the lane is not held).
            self._list_later(ctx, deadline)
            listed = text.roll_call_follows(window)
        return Reply(f"{reply.text}\n{listed}", reply.table, result=reply.result, ask=reply.ask)

    def _listing(self, run_key: str) -> str:
        answers = {m: self._answer_of(m, run_key) for m in self.crew.members}
        return text.roll_call(roll_call(self.view(), answers, self._clock.now()), self.me)

    def _list_later(self, ctx: Context, deadline: float) -> None:
        async def follow_up() -> None:
            await self._until(lambda: self._all_answered(ctx.event_id), deadline)
            await self._notifier.reply(ctx.room_id, ctx.event_id, self._listing(ctx.event_id))

        task = asyncio.create_task(follow_up(), name="crew roll call")
        self._follow_ups.add(task)
        task.add_done_callback(self._follow_ups.discard)

    def _all_answered(self, run_key: str) -> bool:
        answers = {m: self._answer_of(m, run_key) for m in self.crew.members}
        return answered(self.view(), answers, self._clock.now())

    async def _arm_here(
        self, ctx: Context, scenario_id: str, digest: str, arm_once: ArmOnce, *, confirmed: bool
    ) -> Reply:
        before = self._armed_run(scenario_id)
        try:
            reply = await arm_once(confirmed)
        except ArmError as err:
            self._answer(ctx.event_id, scenario_id, digest, REFUSED)
            return Reply(str(err), result=f"refused: {err}")
        armed = self._armed_run(scenario_id)
        state = ARMED if armed is not None and armed is not before else NOT_ARMED
        if armed is not None:
            self._known[armed.run_key] = armed
        self._answer(ctx.event_id, scenario_id, digest, state)
        return reply

    def _armed_run(self, scenario_id: str) -> ArmedRun | None:
        return self._runs.by_scenario(scenario_id)

    async def _follow(
        self,
        ctx: Context,
        scenario_id: str,
        digest: str,
        reference: str | None,
        arm_once: ArmOnce,
        deadline: float,
    ) -> Reply:
        assert reference is not None  # this member is up, so someone speaks
        await self._until(lambda: self._answer_of(reference, ctx.event_id) is not None, deadline)
        decision = follow(digest, self._answer_of(reference, ctx.event_id))
        if decision.arm:
            # The speaker showed the plan and asked whatever had to be asked; this
            # member's own preview (rooms it is not in) is the crew's coverage.
            return await self._arm_here(ctx, scenario_id, digest, arm_once, confirmed=True)
        self._answer(ctx.event_id, scenario_id, digest, decision.state)
        log.info("!arm %s not armed here: %s (speaker %s)", scenario_id, decision.state, reference)
        # The speaker may have asked to confirm: take a "confirm" too, and answer
        # it as the speaker's answer to it says (this member never arms on its
        # own; one whose file differs answers "differs" again).
        return Reply(
            f"not armed here: {decision.state}", result=f"refused: {decision.state}", ask=True
        )

    # -- duty --------------------------------------------------------------------------

    async def _joined(self, rooms: Sequence[str]) -> dict[str, frozenset[str]]:
        """Crew members joined to each room (resolved ids), as the homeserver says."""
        out: dict[str, frozenset[str]] = {}
        for room in rooms:
            members = await self._matrix.members(room) if room.startswith("!") else None
            out[room] = frozenset(m for m in members or () if m in self.crew)
        return out

    async def on_duty(self, armed: ArmedRun) -> dict[str, list[str]]:
        """For each city of ``armed``, the members on duty for its rooms now."""
        view, now = self.view(), self._clock.now()
        out: dict[str, list[str]] = {}
        for city in armed.scenario.cities:
            joined = await self._joined(all_rooms(city))
            order = self.crew.order_for(city)
            found = [view.on_duty(order, j, now, armed.loaded.sha256) for j in joined.values()]
            out[city.id] = list(dict.fromkeys(m for m in found if m is not None))
        return out

    async def duty_line(self, runs: Sequence[ArmedRun]) -> str | None:
        """``!status``'s line per run shown: the member on duty per city."""
        lines = []
        for armed in runs:
            if armed.drill_room is None:
                lines.append(text.duty_line(await self.on_duty(armed)))
        return "\n".join(lines) or None

    # -- !crew ---------------------------------------------------------------------------

    async def failsafe_line(self) -> str | None:
        """This member's delayed events per armed run (counts; docs/crew.md)."""
        return await self._runs.failsafe_line(list(self._runs.armed.values()))

    def _scenarios(self) -> list[tuple[Scenario, str | None]]:
        armed: list[tuple[Scenario, str | None]] = [
            (a.scenario, a.loaded.sha256) for a in self._runs.armed.values()
        ]
        if armed:
            return armed
        return [(ls.scenario, None) for ls in self._library.all_valid()]

    async def crew_table(self) -> str:
        view, now = self.view(), self._clock.now()
        rows: list[tuple[str, ...]] = [text.CREW_COLUMNS]
        rooms: dict[str, dict[str, tuple[int, int]]] = {m: {} for m in self.crew.members}
        duty: dict[str, list[str]] = {m: [] for m in self.crew.members}
        for scenario, digest in self._scenarios():
            for city in scenario.cities:
                joined = await self._joined(all_rooms(city))
                for m in self.crew.members:
                    n = sum(m in j for j in joined.values())
                    rooms[m][city.id] = (n, len(joined))
                order = self.crew.order_for(city)
                for j in joined.values():
                    who = view.on_duty(order, j, now, digest)
                    if who is not None and city.id not in duty[who]:
                        duty[who].append(city.id)
        for m in self.crew.members:
            rows.append(self._row(m, view, now, rooms[m], duty[m]))
        return text_table(rows)

    def _row(
        self,
        member: str,
        view: CrewView,
        now: datetime,
        rooms: dict[str, tuple[int, int]],
        duty: list[str],
    ) -> tuple[str, ...]:
        if member == self.me:
            age, version, armed = "this bot", __version__, self.armed_digests()
        else:
            beat, seen = self.roster.heartbeat_of(member), view.members.get(member)
            seconds = (now - seen.seen_at).total_seconds() if seen and seen.seen_at else None
            status = view.status(member, now)
            age = text.age(seconds) + text.status_mark(status)
            version = beat.version if beat else "?"
            armed = set(beat.armed) if beat else set()
        return (
            member,
            text.homeserver(member),
            age,
            version,
            ", ".join(sorted(text.short(d) for d in armed)) or "-",
            text.rooms_cell(rooms),
            ", ".join(duty) or "-",
        )

    # -- invites ---------------------------------------------------------------------------

    async def invite_crew(self, room_id: str) -> None:
        """This member is in ``room_id`` (opted in): invite the rest of the crew.

        Not a member this homeserver shows invited or joined: its view may lag
        (a join made on another server not yet across), and an invite
        concurrent with a join can win the room's state resolution, turning
        the joined member back into an invited one that may not send there."""
        for member in self.crew.members:
            if member == self.me:
                continue
            state = await self._matrix.state_event(room_id, "m.room.member", member)
            if state is not None and state.get("membership") in _NO_INVITE:
                continue
            ok = await self._matrix.invite(room_id, member)
            log.info("invited %s to %s: %s", member, room_id, "ok" if ok else "failed")

    # -- duplicates --------------------------------------------------------------------

    async def on_dispatched(self, ev: Dispatched) -> None:
        """A crew member's copy of a dispatch part in a room: if another member's
        copy of the same part is visible too, the one later in the city's order
        redacts its own (:func:`bot.crew.look.resolve`), and the speaker says so."""
        tag = ev.tag
        key = (ev.room_id, tag.run, tag.city, tag.stage, tag.part)
        copies = self._copies.setdefault(key, set())
        copies.add(Copy(ev.ts, ev.event_id, ev.sender))
        while len(self._copies) > _COPIES_KEPT:
            del self._copies[next(iter(self._copies))]
        if len({c.sender for c in copies}) < 2:
            return
        armed = next((a for a in self._runs.armed.values() if a.run_key == tag.run), None)
        armed = armed or self._known.get(tag.run)
        city = armed.scenario.city(city_of(tag.city)) if armed is not None else None
        order = self.crew.order_for(city) if city is not None else self.crew.members
        resolution = resolve(copies, order)
        for copy in resolution.for_member(self.me):
            if copy.event_id not in self._done:
                self._done.add(copy.event_id)
                ok = await self._matrix.redact(ev.room_id, copy.event_id, "duplicate copy")
                log.info("redacted own duplicate %s in %s: %s", copy.event_id, ev.room_id, ok)
        kept = resolution.keep
        said = f"told:{'/'.join(key)}"
        if kept is None or said in self._done:
            return
        self._done.add(said)
        redactors = ", ".join(sorted({c.sender for c in resolution.redact}))
        run_id = armed.run.id if armed is not None else None
        room = armed.run.control_room if armed is not None else None
        message = text.duplicate_removed(
            ev.room_id, run_id, tag.city, tag.stage, tag.part, kept.sender, redactors
        )
        await self._notifier.report(room, message)


class CrewCommands:
    """``!crew`` (registered only when the config has a crew)."""

    def __init__(self, crew: CrewControl) -> None:
        self._crew = crew

    @command(
        "crew",
        "The crew: each member's homeserver, heartbeat, version, armed files, rooms per "
        "city and where it is on duty.",
        example="!crew",
    )
    async def crew(self, ctx: Context, args: Args) -> Reply:
        speaker = await self._crew.decide()  # the heading names who answers
        head = f"Crew of {len(self._crew.crew.members)}; speaker {speaker}:"
        # This member's own delayed events (the others' are on their homeservers).
        failsafe = await self._crew.failsafe_line()
        return Reply(head + (f"\n{failsafe}" if failsafe else ""), await self._crew.crew_table())
