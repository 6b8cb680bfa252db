"""The roster: the crew's view of who is up, kept from heartbeats. The shell
around the pure :mod:`bot.crew.heartbeat` and :mod:`bot.crew.duty`.

It publishes this bot's heartbeat in every control room at the rate the pure
policy decides (:func:`~bot.crew.heartbeat.interval`, :func:`~bot.crew.heartbeat.next_due`:
fast while armed or after a control command, slow when idle, at once on a roll
call), reads the other members' heartbeats from the events the caller feeds it
(room state at start, /sync state and timeline afterwards), and answers with a
:class:`~bot.crew.duty.CrewView` for duty decisions. Every event goes through
:func:`~bot.crew.heartbeat.parse_heartbeat`, so nothing malformed, from outside
the crew or in another member's slot is ever taken, and ingesting never raises.

All homeserver I/O is behind :class:`CrewStatePort` (``bot.matrix.crew_state``
implements it with nio; unit tests use a fake). Time comes from the injected
clock, except the bound on :meth:`Roster.stopping`, which is real seconds: a
shutdown must end however the homeserver behaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.clock import Clock
from bot.crew.duty import CrewView, Listening
from bot.crew.heartbeat import (
    MAX_ANSWERS,
    Answer,
    Heartbeat,
    interval,
    missed,
    next_due,
    parse_heartbeat,
    sighting,
)
from bot.crew.members import Crew, Member
from bot.crew.publish import CrewStatePort, HeartbeatFailed, PublishProblem
from bot.crew.rollcall import roll_call_window
from bot.crew.speaker import decided
from bot.retry import GiveUp, RetryPolicy, SendFailure

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
"""How long :meth:`Roster.stopping` may take in all (real seconds)."""
_SEEN_IDS = 256  # event ids remembered against re-feeding (start-up state, then sync)
_PUBLISHED = 8  # own accepted heartbeat times kept for bot.crew.heartbeat.missed
# A heartbeat made this little before this bot started listening is not old: its
# time is in whole milliseconds, and members' clocks differ a little.
_OLD_SLACK = timedelta(seconds=1)


Report = Callable[[PublishProblem], Awaitable[None]]


@dataclass
class _Slot:
    """This bot's heartbeat in one control room."""

    last: Heartbeat | None = None  # the last one the homeserver accepted here
    retry_at: datetime | None = None  # set while failing: when to try again
    failed_at: datetime | None = None  # the last failed attempt
    refused: bool = False  # the last failure was not transient (403, other 4xx)
    attempts: int = 0  # failed attempts in a row
    reported: bool = False  # the problem was reported (once, until it is fixed)


@dataclass(frozen=True)
class _Seen:
    heartbeat: Heartbeat
    member: Member


class Roster:
    """Publishes this bot's heartbeat and keeps every other member's.

    Start one only when the config has a ``crew`` section: a lone bot (a crew of
    one) writes no heartbeat, so its control rooms' history and the power it
    needs stay exactly as before crews. Wiring, for the caller::

        roster = Roster(crew=Crew.from_config(config.crew), me=..., rooms=control_rooms,
                        port=MatrixCrewState(client), clock=clock, version=__version__,
                        armed=<digests of armed scenario files>, report=<tell the control room>)
        await roster.load(); roster.start()
        # each /sync:  for room, events in crew_events(response, control_rooms).items():
        #                  roster.ingest(room, events)
        # each control command read: roster.command_read();  arm/disarm: roster.nudge()
        # duty: roster.view();  clean shutdown: await roster.stopping()
    """

    def __init__(
        self,
        *,
        crew: Crew,
        me: str,
        rooms: Sequence[str],
        port: CrewStatePort,
        clock: Clock,
        version: str,
        armed: Callable[[], Collection[str]] = frozenset,
        answers: Callable[[], Iterable[Answer]] = tuple,
        report: Report | None = None,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if me not in crew:
            raise ValueError("the roster's own user id must be a member of the crew")
        self.crew = crew
        self.me = me
        self.rooms = tuple(dict.fromkeys(rooms))
        self._port = port
        self._clock = clock
        self._version = version
        self._armed = armed
        self._answers = answers
        self._report = report
        self._policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._slots = {room: _Slot() for room in self.rooms}
        self._seen: dict[str, dict[str, _Seen]] = {}  # member -> room -> latest
        self._seen_ids: deque[str] = deque(maxlen=_SEEN_IDS)
        self._published: deque[datetime] = deque(maxlen=_PUBLISHED)
        self._last_command: datetime | None = None
        self._since: datetime | None = None  # when start() was called: listening
        self._answered: datetime | None = None  # the last start of a member answered
        self._answer_again: datetime | None = None  # ... and when to answer it once more
        self._starts: dict[str, datetime] = {}  # member -> its run's "started"
        self._news = asyncio.Event()  # set when a heartbeat is taken
        self._back_at: datetime | None = None  # accepted again after a long gap
        self._last_armed: frozenset[str] = frozenset()
        self._last_answers: tuple[Answer, ...] = ()
        self._reports: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    # -- what the others say --------------------------------------------------------

    def ingest(self, room_id: str, events: Iterable[object]) -> int:
        """Take the heartbeats among ``events`` (raw dicts from /sync's state and
        timeline, in order) seen in control room ``room_id``; how many were taken.

        Never raises. Only the pure parser decides what is a heartbeat; this bot's
        own are skipped (it knows it is up), and an event already taken (the same
        state read at start and again in the first sync) is not taken twice, so
        re-reading old state can never make a member look fresher than it is.
        """
        if room_id not in self._slots:
            return 0
        taken = 0
        try:
            for event in events:
                taken += self._take(room_id, event)
        except Exception:  # a hostile iterable; the parser itself never raises
            log.warning("crew events of %s could not be read", room_id)
        return taken

    def _take(self, room_id: str, event: object, *, baseline: bool = False) -> int:
        beat = parse_heartbeat(event, members=self.crew.members)
        if beat is None or beat.member == self.me:
            return 0
        event_id = event.get("event_id") if isinstance(event, Mapping) else None
        if isinstance(event_id, str):
            if event_id in self._seen_ids:
                return 0
            self._seen_ids.append(event_id)
        rooms = self._seen.setdefault(beat.member, {})
        if baseline and room_id in rooms:
            return 0  # a start-up read never overrides what sync already brought
        now = self._clock.now()
        self._answer_start(beat, now, baseline=baseline)
        # Within a room, the latest delivered is the member's latest (its events
        # there are causally ordered); across rooms see _latest. One made before
        # this bot listened counts from its own time (bot.crew.heartbeat.sighting).
        since = self._since
        old = baseline or since is None or beat.time < since - _OLD_SLACK
        rooms[room_id] = _Seen(beat, sighting(beat, now, old=old))
        self._news.set()
        return 1

    def _answer_start(self, beat: Heartbeat, now: datetime, *, baseline: bool) -> None:
        """A member's run this bot did not know (its ``started``): beat at once,
        so that member hears this one within its start-up window, and once more
        a heartbeat later (made after its start even if this bot's clock lags a
        little behind its own), at the rate this bot announces anyway."""
        if beat.started is None or self._starts.get(beat.member) == beat.started:
            return
        self._starts[beat.member] = beat.started
        if not baseline and self._since is not None:
            self._answered = now
            self._answer_again = now + self.crew.heartbeat
            self._wake.set()

    def _latest(self, user_id: str) -> _Seen | None:
        """A member's newest heartbeat over all control rooms, by its own clock:
        one room's copy delayed by federation must not undo a newer one read in
        another room (say, its "stopping")."""
        rooms = self._seen.get(user_id)
        if not rooms:
            return None
        return max(
            rooms.values(), key=lambda s: (s.heartbeat.time, s.member.seen_at or s.heartbeat.time)
        )

    async def load(self, *, timeout_s: float = 10.0) -> None:
        """Read every member's heartbeat from each control room's state (at start).

        Bounded and never raises: a room that cannot be read is logged, and its
        members are read from the next sync instead (whose first is full-state).
        """
        for room in self.rooms:
            for event in await self._state(room, timeout_s):
                self._take(room, event, baseline=True)

    async def refresh(self, *, timeout_s: float = 5.0) -> None:
        """Read the others' heartbeats from each control room's state now, taken
        as if a sync had brought them (one made long before it arrives still
        counts from its own time). For a decision that counts a member down
        while this bot's own sync may lag: a sync held for a fan-out, or the
        long sync after it. Bounded and never raises; an event already taken
        is not taken again."""
        for room in self.rooms:
            self.ingest(room, await self._state(room, timeout_s))

    async def _state(self, room: str, timeout_s: float) -> list[object]:
        """The heartbeats in ``room``'s state; none (logged) if it cannot be read."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._port.heartbeats(room)
        except HeartbeatFailed as err:
            why = str(err)
        except TimeoutError:
            why = "timed out"
        except Exception as err:  # the caller goes on; the next sync reads them too
            why = err.__class__.__name__
        log.warning("could not read crew heartbeats in %s: %s", room, why)
        return []

    def view(self) -> CrewView:
        """The crew as this bot sees it now, for :mod:`bot.crew.duty`."""
        members = {}
        for user_id in self._seen:
            latest = self._latest(user_id)
            if latest is not None:
                members[user_id] = latest.member
        # Its own start is a roll call too: a member whose only heartbeat
        # predates it (a previous run's, left in the room's state) and that does
        # not answer is down three heartbeats later, whatever rate it announced.
        calls = [t for t in (self._last_command, self._since) if t is not None]
        listening = Listening(self._since, roll_call_window(self.crew.heartbeat))
        return CrewView(
            self.crew, members, me=self.me, roll_call=max(calls, default=None),
            listening=listening,
        )

    def speaker(self) -> str | None:
        """The speaker now, for a caller that cannot wait (a report, ``!crew``'s
        heading): the decided one, else the rule without the start-up window
        (:meth:`bot.crew.duty.CrewView.first_up`)."""
        view, now = self.view(), self._clock.now()
        return view.speaker(now) or view.first_up(now)

    async def decided_speaker(self, *, timeout_s: float) -> str | None:
        """The speaker once decided (:func:`bot.crew.speaker.decided`); at most
        ``timeout_s`` real seconds, then :meth:`speaker`."""
        return await decided(self.view, self._clock, self._news, timeout_s=timeout_s)

    @property
    def since(self) -> datetime | None:
        """When this roster started listening (:meth:`start`); ``None``: not yet."""
        return self._since

    def heartbeat_of(self, user_id: str) -> Heartbeat | None:
        """The latest heartbeat taken from ``user_id`` (for ``!crew``)."""
        latest = self._latest(user_id)
        return latest.heartbeat if latest else None

    # -- what this bot says ---------------------------------------------------------

    def command_read(self, at: datetime | None = None) -> None:
        """A control command was read: beat at once (the roll call), and judge the
        others by it (:meth:`bot.crew.members.Member.is_down`)."""
        self._last_command = at or self._clock.now()
        self._wake.set()

    def nudge(self) -> None:
        """What the heartbeat says may have changed (a scenario armed or
        disarmed): publish at once if so."""
        self._wake.set()

    def missed(self, at: datetime) -> bool:
        """Whether this bot's heartbeats were not reaching the rooms at ``at``."""
        return missed(self._published, at, self.crew.heartbeat)

    def cut_off_since(self, at: datetime) -> bool:
        """Whether this bot's heartbeats were not reaching the rooms at some
        moment after ``at``: now, or a gap of more than three heartbeats
        between accepted ones that ended after ``at``."""
        now = self._clock.now()
        return self.missed(now) or (self._back_at is not None and self._back_at > at)

    def problems(self) -> tuple[str, ...]:
        """The control rooms where this bot's heartbeat is currently failing."""
        return tuple(room for room, slot in self._slots.items() if slot.attempts)

    def _wanted(self, now: datetime, *, stopping: bool = False) -> Heartbeat:
        try:
            self._last_armed = frozenset(self._armed())
        except Exception as err:  # the caller's bug must not end the heartbeat
            log.warning("crew heartbeat: armed digests unreadable: %s", err.__class__.__name__)
        try:
            # Oldest first from the caller: the newest are kept; sorted, so equal
            # answers compare equal (next_due beats at once when they change).
            self._last_answers = tuple(sorted(tuple(self._answers())[-MAX_ANSWERS:]))
        except Exception as err:
            log.warning("crew heartbeat: answers unreadable: %s", err.__class__.__name__)
        armed = self._last_armed
        rate = interval(
            base=self.crew.heartbeat, armed=bool(armed), last_command=self._last_command, now=now
        )
        return Heartbeat(
            self.me, now, rate, self._version, armed, stopping, answers=self._last_answers,
            started=self._since,
        )

    def _called(self) -> datetime | None:
        """The last roll call this bot answers: a command read, or a member's start."""
        calls = [t for t in (self._last_command, self._answered) if t is not None]
        return max(calls, default=None)

    def _due(self, slot: _Slot, wanted: Heartbeat) -> datetime:
        if slot.retry_at is None:
            due = next_due(slot.last, wanted, last_command=self._called())
            again = self._answer_again
            if again is not None and slot.last is not None and slot.last.time < again:
                due = min(due, again)
            return due
        command = self._last_command
        if slot.refused and command is not None and slot.failed_at and command > slot.failed_at:
            # A refusal is retried at once on a roll call (the operator may just
            # have fixed the power levels); a rate limit's wait is kept.
            return wanted.time
        return slot.retry_at

    def start(self) -> asyncio.Task[None]:
        """Start publishing (idempotent); ends with :meth:`stopping` or :meth:`halt`."""
        if self._task is None:
            self._since = self._since or self._clock.now()
            self._task = asyncio.create_task(self._run(), name="crew-heartbeat")
        return self._task

    async def _run(self) -> None:
        if not self._slots:
            return
        while not self._stop:
            self._wake.clear()  # before deciding: a nudge from now on wakes the wait
            now = self._clock.now()
            wanted = self._wanted(now)
            due = [room for room, slot in self._slots.items() if self._due(slot, wanted) <= now]
            if due:
                await asyncio.gather(*(self._beat(room, wanted) for room in due))
                continue
            wake_at = min(self._due(slot, wanted) for slot in self._slots.values())
            await self._sleep(wake_at)

    async def _sleep(self, until: datetime) -> None:
        sleeping = asyncio.ensure_future(self._clock.sleep_until(until))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, woken):
                task.cancel()

    async def _beat(self, room: str, beat: Heartbeat) -> None:
        """One attempt in one room; on failure, when to try again."""
        slot = self._slots[room]
        try:
            await self._port.publish(room, self.me, beat.content())
        except HeartbeatFailed as err:
            await self._failed(room, slot, beat, err.failure)
            return
        except Exception as err:  # a bug in a port must not end the heartbeat
            failure = SendFailure(None, message=err.__class__.__name__)
            await self._failed(room, slot, beat, failure)
            return
        if slot.attempts:
            log.info("crew heartbeat in %s accepted again", room)
        slot.last, slot.retry_at, slot.attempts, slot.reported = beat, None, 0, False
        slot.failed_at, slot.refused = None, False
        if self._published and beat.time - max(self._published) > self.crew.down_after:
            self._back_at = beat.time  # back after a gap the others saw as down
        self._published.append(beat.time)

    async def _failed(self, room: str, slot: _Slot, beat: Heartbeat, failure: SendFailure) -> None:
        slot.attempts += 1
        slot.failed_at = beat.time
        decision = self._policy.decide(
            failure, attempt=slot.attempts, now=beat.time, deadline=None, rng=self._rng
        )
        if isinstance(decision, GiveUp):
            # Power levels (403) and other refusals do not heal by themselves, but
            # an operator may fix them at any moment: try again at the heartbeat
            # rate, and say so once.
            slot.retry_at, slot.refused = beat.time + beat.interval, True
            if not slot.reported:
                slot.reported = True
                problem = PublishProblem(
                    room, self.me, failure.describe(), failure.http_status == 403, beat.interval
                )
                log.warning("%s", problem)
                # In its own task: a report retried for minutes must not hold
                # back the heartbeat in the other rooms.
                task = asyncio.create_task(self._tell(problem))
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)
            return
        # 429, 5xx, network: the retry policy's wait, but never longer than one
        # heartbeat interval, or the others would count this bot down for it.
        slot.retry_at, slot.refused = beat.time + min(decision.delay, beat.interval), False
        log.info("crew heartbeat in %s failed (%s); retrying", room, decision.reason)

    async def _tell(self, problem: PublishProblem) -> None:
        if self._report is None:
            return
        try:
            await self._report(problem)
        except Exception as err:  # the report must never stop the heartbeat
            log.warning("could not report a heartbeat problem: %s", err.__class__.__name__)

    async def halt(self) -> None:
        """Stop publishing without a word (an unclean end, or tests of one)."""
        self._stop = True
        task, self._task = self._task, None
        for pending in (task, *self._reports):
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def stopping(self, *, timeout_s: float = STOP_TIMEOUT_S) -> tuple[str, ...]:
        """On a clean shutdown: stop beating and publish the "stopping" heartbeat
        in every control room, so the others take over at once. The control rooms
        that accepted it.

        Bounded by ``timeout_s`` real seconds in all, whatever the homeserver does
        (dead, slow, rate-limiting): one attempt per room, no retries. Never raises.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._stop = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            # Let a heartbeat in flight land first (for half the budget), so it
            # cannot arrive after the stopping one and make this bot look alive.
            await asyncio.wait((task,), timeout=timeout_s / 2)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        beat = self._wanted(self._clock.now(), stopping=True)
        results = await asyncio.gather(
            *(self._last_word(room, beat, deadline) for room in self.rooms)
        )
        for report in tuple(self._reports):
            report.cancel()
        accepted = tuple(room for room, ok in zip(self.rooms, results, strict=True) if ok)
        log.info(
            "crew heartbeat: stopping published in %d of %d control rooms",
            len(accepted),
            len(self.rooms),
        )
        return accepted

    async def _last_word(self, room: str, beat: Heartbeat, deadline: float) -> bool:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self._port.publish(room, self.me, beat.content())
        except HeartbeatFailed as err:
            log.warning("could not publish the stopping heartbeat in %s: %s", room, err)
            return False
        except TimeoutError:
            log.warning("could not publish the stopping heartbeat in %s: timed out", room)
            return False
        except Exception as err:  # shutdown goes on whatever happens here
            log.warning(
                "could not publish the stopping heartbeat in %s: %s", room, err.__class__.__name__
            )
            return False
        return True
