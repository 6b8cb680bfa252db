"""Release a stage: fan out to every served room, exactly once, with retries.

The dispatcher owns the ledger transitions of deliveries. For each room the
parts go in order (text, then location) and a room's later stage waits for its
earlier one (a per-room FIFO lock), so every room sees stages in order. Rooms
are independent: a bounded number of requests are in flight, a room waiting
out a 429 or a backoff holds no slot, and one slow room holds up no other.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from bot import DISPATCH_KEY
from bot.clock import Clock
from bot.delivery import COVERED, Message, Outcome, Release, interleave
from bot.lane import Lane
from bot.ledger import TERMINAL, DeliveryKey, DeliveryState
from bot.matrix.sender import Sender, SendFailed
from bot.retry import GiveUp, RetryPolicy, SendFailure
from bot.store import DeliveryRow, Store

__all__ = ["Cancelled", "Dispatcher", "Message", "Outcome", "Release", "interleave"]

log = logging.getLogger(__name__)

# How long a prepared release's ledger snapshot is kept if it is never released.
_KNOWN_FOR = timedelta(hours=1)
# Room tasks started per event-loop turn when a release begins.
_START_BATCH = 32
# Rooms whose encryption keys are shared at once during prepare: enough to keep
# the homeserver busy, few enough that the first rooms in release order finish first.
_SHARE_AT_ONCE = 8


class Cancelled(Exception):
    """The release was cancelled (abort/disarm) before this delivery was sent."""


class Dispatcher:
    def __init__(
        self,
        store: Store,
        sender: Sender,
        clock: Clock,
        *,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._clock = clock
        self._policy = policy or RetryPolicy()
        self._slots = asyncio.Semaphore(max_in_flight)
        # Aborts get their own slots, so they do not queue behind other traffic.
        self._priority_slots = asyncio.Semaphore(max_in_flight)
        # Rooms that must get nothing more (a participant left, the bot was removed).
        self._gone: set[str] = set()
        self._room_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Ledger rows read when their release was prepared, so the instant itself
        # reads nothing: each delivery's first write is its SENDING. A row changed
        # meanwhile is caught by that write's ``WHERE state = ...`` and read again.
        self._known: dict[DeliveryKey, DeliveryRow] = {}
        # Deliveries waiting for a slot or holding one (rooms backing off are not
        # counted), and an event set while there are none: the sync loop waits on it.
        self._pushing = 0
        self._no_traffic = asyncio.Event()
        self._no_traffic.set()
        self._rng = rng or random.Random()
        # (run_id, city_id) -> set when that city's pending deliveries must stop.
        self._cancel: dict[tuple[int, str], asyncio.Event] = {}
        self._stopping = asyncio.Event()
        # Background key sharing started by prepare().
        self._sharing: set[asyncio.Future[None]] = set()

    # -- control -----------------------------------------------------------------

    def _cancel_event(self, run_id: int, city_id: str) -> asyncio.Event:
        return self._cancel.setdefault((run_id, city_id), asyncio.Event())

    def cancel(self, run_id: int, city_ids: Iterable[str]) -> None:
        """Stop pending deliveries of these cities: requests already in flight
        finish; nothing new leaves. Abort and disarm use this."""
        for city in city_ids:
            self._cancel_event(run_id, city).set()

    def forget_room(self, room_id: str) -> None:
        """Send nothing more to this room: pending deliveries there are skipped,
        even those already prepared (a participant sent !stop or left)."""
        self._gone.add(room_id)

    def remember_room(self, room_id: str) -> None:
        self._gone.discard(room_id)

    def _push(self, delta: int) -> None:
        self._pushing += delta
        if self._pushing:
            self._no_traffic.clear()
        else:
            self._no_traffic.set()

    async def quiet(self) -> None:
        """Return when no fan-out has requests waiting or in flight. The sync loop
        waits for this (bounded) before its next long-poll: on a single Synapse the
        bot's own /sync during a fan-out costs the homeserver about as much CPU as
        the sends (every message wakes it, and each room is then synced), so
        syncing after the burst instead makes the burst ~20-40% faster."""
        await self._no_traffic.wait()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Shutdown: nothing new leaves; rows not yet SENDING stay PENDING."""
        self._stopping.set()

    # -- preparation ---------------------------------------------------------------

    async def prepare(self, releases: Sequence[Release]) -> None:
        """Before the instant: create ledger rows (done on return) and start
        sharing encryption keys (in the background), so the instant itself
        mostly only sends.

        Key sharing is not awaited: measured on 100 encrypted rooms with 5
        devices each, it can take longer than ``prepare_seconds`` on a busy
        homeserver, and awaiting it made the *first* message seconds late. The
        rooms are shared in release order, a few at a time, so the first rooms
        to be sent to are the first ready; a room still being shared when its
        turn comes waits for that (matrix-nio's room_send does), and no other."""
        now = self._clock.now()
        stale = now - _KNOWN_FOR
        for k in [k for k, row in self._known.items() if row.due_at < stale]:
            del self._known[k]  # prepared but never released (skipped, cancelled)
        for r in releases:
            await self._ensure(r, now)
        order = list(dict.fromkeys(room for _, room in interleave(releases)))
        task = asyncio.ensure_future(self._share_keys(order))
        self._sharing.add(task)
        task.add_done_callback(self._sharing.discard)

    async def _share_keys(self, rooms: Sequence[str]) -> None:
        slots = asyncio.Semaphore(_SHARE_AT_ONCE)

        async def one(room: str) -> None:
            async with slots:
                await self._sender.prepare(room)

        # MatrixSender.prepare logs and swallows its own errors; nothing to collect.
        await asyncio.gather(*(one(room) for room in rooms), return_exceptions=True)

    async def keys_shared(self) -> None:
        """Wait for background key sharing started by prepare() (for tests)."""
        while self._sharing:
            await asyncio.gather(*list(self._sharing), return_exceptions=True)

    async def _ensure(
        self, release: Release, now: datetime, skip: frozenset[DeliveryKey] = frozenset()
    ) -> None:
        """Create the release's missing ledger rows and remember its rows' states
        (not those of ``skip``, already written and read by their own task)."""
        missing = [k for k in release.keys() if k not in skip]  # noqa: SIM118 (a method)
        await self._store.ledger.ensure_deliveries(missing, release.due_at, now)
        for row in await self._store.ledger.deliveries(
            release.run_id, release.city_id, release.stage_id
        ):
            if row.key not in skip:
                self._known[row.key] = row

    # -- release -------------------------------------------------------------------

    async def release(
        self,
        releases: Sequence[Release],
        *,
        priority: bool = False,
        started: asyncio.Event | None = None,
    ) -> list[Outcome]:
        """Deliver every release; returns when each delivery is terminal (or the
        bot is stopping). Safe to call again for the same releases: rows already
        SENT are not sent again.

        Within a room, releases given earlier in ``releases`` go first; across
        calls, the call whose ``started`` is set first goes first: it is set once
        every room of this call has taken its place in its room's queue."""
        now = self._clock.now()
        unprepared = [r for r in releases if not self._known.keys() >= set(r.keys())]
        order = list(interleave(releases))
        # Not prepared (an abort's stop messages, !release): only the first room's
        # rows are written before its request leaves; the other rooms' tasks queue
        # in their rooms and wait for theirs. Writing every row first (1,000 rooms,
        # on the connection a cancelled fan-out is skipping on) held an abort's
        # first stop message ~0.5 s behind its reply (benchmarks.fanout).
        head = frozenset(await self._ensure_first(*order[0], now) if unprepared else ())
        rows = asyncio.Event()  # set once every unprepared row is written
        outcomes = {id(r): Outcome(r) for r in releases}
        lane = Lane(self._priority_slots if priority else self._slots)
        # One task per room, started a batch at a time: the first requests leave
        # while later rooms' tasks are still being created.
        tasks: list[asyncio.Task[None]] = []
        self._push(1)  # until every room's task exists and is counted itself
        pushed = False
        try:
            for i, (r, room) in enumerate(order):
                wait = rows if unprepared and i else None
                tasks.append(
                    asyncio.ensure_future(self._deliver_room(r, room, outcomes[id(r)], lane, wait))
                )
                if i % _START_BATCH == _START_BATCH - 1:
                    await asyncio.sleep(0)
            await asyncio.sleep(0)  # every room task has run to its room's lock
            if started is not None:
                started.set()
            if unprepared:
                for r in unprepared:
                    # The first room's task reads its own rows: a copy here is stale.
                    await self._ensure(r, now, skip=head)
                rows.set()
                await asyncio.sleep(0)  # the woken rooms count themselves (quiet())
            await lane.opened.wait()  # by then every room's task has counted itself
            self._push(-1)
            pushed = True
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        finally:
            lane.open()
            if not pushed:
                self._push(-1)
        return [outcomes[id(r)] for r in releases]

    async def _ensure_first(self, first: Release, room: str, now: datetime) -> list[DeliveryKey]:
        """Write the first room's missing rows (its keys), for release()."""
        keys = [first.key(room, m.part) for m in first.messages]
        if not self._known.keys() >= set(keys):
            await self._store.ledger.ensure_deliveries(keys, first.due_at, now)
        return keys

    async def _deliver_room(
        self,
        release: Release,
        room: str,
        outcome: Outcome,
        lane: Lane,
        rows: asyncio.Event | None = None,
    ) -> None:
        async with self._room_locks[room]:
            if rows is not None:
                await rows.wait()  # this room's ledger rows are written
            for message in release.messages:
                key = release.key(room, message.part)
                try:
                    state, detail = await self._deliver(release, key, message, lane)
                except Cancelled as why:
                    reason = str(why) or "cancelled"
                    # This part and the ones after it: none is left PENDING.
                    for rest in release.messages[release.messages.index(message) :]:
                        await self._skip(release.key(room, rest.part), reason)
                    outcome.skipped[room] = reason
                    return
                if state is DeliveryState.SENT:
                    continue
                if state is DeliveryState.PENDING:
                    return  # stopping: the rest stays pending for the restart
                if state is DeliveryState.FAILED:
                    outcome.failed[room] = detail
                elif state is DeliveryState.SKIPPED:
                    outcome.skipped[room] = detail
                # A later part is pointless (and out of order) without the first.
                for rest in release.messages[release.messages.index(message) + 1 :]:
                    await self._skip(
                        release.key(room, rest.part), f"{message.part} part not delivered"
                    )
                return
            if not self._stopping.is_set():
                outcome.delivered.append(room)
                sent = self._clock.now()
                outcome.first_sent = outcome.first_sent or sent
                outcome.last_sent = sent

    async def _skip(self, key: DeliveryKey, reason: str) -> None:
        row = await self._store.ledger.delivery(key)
        if row is not None and row.state is DeliveryState.PENDING:
            await self._store.ledger.transition(
                key, DeliveryState.SKIPPED, now=self._clock.now(), error=reason
            )

    def _check_cancelled(self, release: Release, key: DeliveryKey) -> None:
        if key.room_id in self._gone:
            raise Cancelled("the room left")
        if release.final:
            return
        event = self._cancel.get((key.run_id, key.city_id))
        if event is not None and event.is_set():
            raise Cancelled()

    async def _wait(self, delay: timedelta, key: DeliveryKey, final: bool) -> None:
        """Sleep for a retry, waking early if the release is cancelled or the bot stops."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if not final:
            waiters.append(
                asyncio.ensure_future(self._cancel_event(key.run_id, key.city_id).wait())
            )
        try:
            # FIRST_COMPLETED: either one wakes the wait (the default, ALL_COMPLETED,
            # slept out the whole backoff unless the bot stopped *and* was cancelled).
            await asyncio.wait(
                waiters, timeout=delay.total_seconds(), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()

    async def _deliver(
        self, release: Release, key: DeliveryKey, message: Message, lane: Lane
    ) -> tuple[DeliveryState, str]:
        row = self._known.pop(key, None)
        if row is None or row.state is not DeliveryState.PENDING:
            row = await self._store.ledger.delivery(key)  # only a PENDING snapshot is trusted
        assert row is not None, "prepare/release creates the rows first"
        if row.state in TERMINAL:
            return row.state, row.last_error or ""
        if row.state is DeliveryState.SENDING and await self._recover(key):
            return DeliveryState.SENT, ""
        content = {**message.content, DISPATCH_KEY: key.content_tag()}
        attempts = row.attempts
        retry = attempts > 0
        while True:
            self._check_cancelled(release, key)
            if self._stopping.is_set():
                return DeliveryState.PENDING, "bot stopping"
            if retry and (by := await self._covered_meanwhile(release, key)) is not None:
                return DeliveryState.SKIPPED, by
            retry = True
            sent = await self._attempt(release, key, message.event_type, content, lane)
            if sent is None:
                # Someone else moved the row since it was read: decide again from the row.
                return await self._deliver(release, key, message, lane)
            if isinstance(sent, DeliveryState):  # a StrEnum: before the str check
                return sent, "bot stopping"
            if isinstance(sent, str):
                await self._move(key, DeliveryState.SENT, event_id=sent)
                log.info(
                    "sent %s/%s/%s part=%s to %s as %s",
                    key.scenario_id,
                    key.city_id,
                    key.stage_id,
                    key.part,
                    key.room_id,
                    sent,
                )
                return DeliveryState.SENT, ""
            attempts += 1
            outcome = await self._after_failure(release, key, sent, attempts)
            if outcome is not None:
                return outcome

    async def _covered_meanwhile(self, release: Release, key: DeliveryKey) -> str | None:
        """A crew's retry later than grace after the instant looks first: another
        member may have covered the room meanwhile. The SKIPPED reason, or None."""
        if release.look is None or release.look_after is None:
            return None
        if self._clock.now() < release.look_after:
            return None
        member = await release.look(key)
        if member is None:
            return None
        why = f"{COVERED} {member}"
        now = self._clock.now()
        await self._store.ledger.transition(key, DeliveryState.SKIPPED, now=now, error=why)
        log.info(
            "not retrying %s/%s/%s to %s: %s",
            key.scenario_id,
            key.city_id,
            key.stage_id,
            key.room_id,
            why,
        )
        return why

    async def _recover(self, key: DeliveryKey) -> bool:
        """A row left SENDING by a crash: the request may have landed. Look in the
        room for an event with this delivery's tag — the same run, not merely the
        same scenario and stage — before resending (the txn id would dedup within
        the homeserver's window anyway; this covers a resend after that window,
        or another device). True if found (the row is SENT now)."""
        try:
            found = await self._sender.find_dispatch(key.room_id, key.content_tag())
        except SendFailed:
            found = None
        now = self._clock.now()
        if found is not None:
            await self._store.ledger.transition(key, DeliveryState.SENT, now=now, event_id=found)
            return True
        await self._store.ledger.transition(
            key, DeliveryState.PENDING, now=now, error="unconfirmed after restart"
        )
        return False

    async def _attempt(
        self,
        release: Release,
        key: DeliveryKey,
        event_type: str,
        content: Mapping[str, Any],
        lane: Lane,
    ) -> str | SendFailure | DeliveryState | None:
        """One request in a slot: the event id, the failure, PENDING if the bot is
        stopping, or None if the row was no longer PENDING (nothing was sent)."""
        pilot = not lane.pilot_taken
        lane.pilot_taken = True
        self._push(1)
        try:
            if not pilot:
                await lane.opened.wait()
            async with lane.slots:
                self._check_cancelled(release, key)
                if self._stopping.is_set():
                    return DeliveryState.PENDING
                # SENDING is committed before the request leaves (exactly once).
                moved = await self._store.ledger.advance(
                    key,
                    DeliveryState.PENDING,
                    DeliveryState.SENDING,
                    now=self._clock.now(),
                    count_attempt=True,
                )
                if not moved:
                    return None
                try:
                    return await self._sender.send(key.room_id, event_type, content, key.txn_id())
                except SendFailed as err:
                    return err.failure
        finally:
            # The slot is free again: the request is over; recording it is not a request.
            self._push(-1)
            if pilot:
                lane.open()

    async def _after_failure(
        self, release: Release, key: DeliveryKey, failure: SendFailure, attempts: int
    ) -> tuple[DeliveryState, str] | None:
        """Give up (FAILED) or wait for the retry (None: try again)."""
        decision = self._policy.decide(
            failure,
            attempt=attempts,
            now=self._clock.now(),
            deadline=release.deadline,
            rng=self._rng,
        )
        if isinstance(decision, GiveUp):
            await self._move(key, DeliveryState.FAILED, error=decision.reason)
            log.warning(
                "gave up %s/%s/%s part=%s to %s: %s",
                key.scenario_id,
                key.city_id,
                key.stage_id,
                key.part,
                key.room_id,
                decision.reason,
            )
            return DeliveryState.FAILED, decision.reason
        await self._move(key, DeliveryState.PENDING, error=decision.reason)
        log.info(
            "retrying %s/%s/%s to %s in %.1fs: %s",
            key.scenario_id,
            key.city_id,
            key.stage_id,
            key.room_id,
            decision.delay.total_seconds(),
            decision.reason,
        )
        await self._wait(decision.delay, key, release.final)
        return None

    async def _move(
        self,
        key: DeliveryKey,
        new: DeliveryState,
        *,
        event_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """SENDING -> ``new`` for a row this task put in SENDING: one statement; the
        checked read-then-write path only if the row is somehow not SENDING."""
        now = self._clock.now()
        if not await self._store.ledger.advance(
            key, DeliveryState.SENDING, new, now=now, event_id=event_id, error=error
        ):
            await self._store.ledger.transition(key, new, now=now, event_id=event_id, error=error)
