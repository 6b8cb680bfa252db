"""The dispatcher against a real SQLite ledger and a fake sender: exactly-once rules
of the fast path (ledger snapshot at prepare, one UPDATE per transition)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot import DISPATCH_KEY
from bot.clock import ManualClock, SystemClock
from bot.dispatch import Dispatcher, Message, Release, interleave
from bot.ledger import DeliveryKey, DeliveryState, IllegalTransition, Part
from bot.matrix.sender import SendFailed
from bot.retry import RetryPolicy, SendFailure
from bot.store import DeliveryRow, PlannedDispatch, Store

TEXT = (Message(Part.TEXT, "m.room.message", {"msgtype": "m.text", "body": "go"}),)


class FakeSender:
    """Records each request, checks the ledger says SENDING while it is in flight."""

    def __init__(self, store: Store, *, latency: float = 0.002) -> None:
        self.store = store
        self.latency = latency
        self.sent: list[tuple[str, str]] = []  # (room, txn)
        self.states_at_send: list[DeliveryState] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_first: dict[str, SendFailure] = {}
        self.keys: dict[str, DeliveryKey] = {}

    async def send(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str:
        row = await self.store.ledger.delivery(self.keys[txn_id])
        assert row is not None
        self.states_at_send.append(row.state)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        failure = self.fail_first.pop(room_id, None)
        if failure is not None:
            raise SendFailed(failure)
        self.sent.append((room_id, txn_id))
        return f"$event-{len(self.sent)}"

    async def prepare(self, room_id: str) -> None:
        return None

    async def find_dispatch(self, room_id: str, tag: Mapping[str, str]) -> str | None:
        return None


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "blossom.db")
    try:
        yield s
    finally:
        await s.close()


async def releases(store: Store, cities: int, rooms_per_city: int) -> list[Release]:
    now = datetime.now(UTC)
    run = await store.runs.create(
        scenario_id="bench",
        source_path="/x.yaml",
        source_sha256="0" * 64,
        armed_by="@org:x",
        control_room="!control:x",
        now=now,
        dispatches=[PlannedDispatch(f"c{c}", "go", 0, now) for c in range(cities)],
    )
    return [
        Release(
            run_id=run,
            scenario_id="bench",
            city_id=f"c{c}",
            stage_id="go",
            due_at=now,
            rooms=tuple(f"!r{c}-{i}:x" for i in range(rooms_per_city)),
            messages=TEXT,
        )
        for c in range(cities)
    ]


def dispatcher(store: Store, sender: FakeSender, rels: list[Release], **kw: Any) -> Dispatcher:
    sender.keys.update({k.txn_id(): k for r in rels for k in Release.keys(r)})
    return Dispatcher(store, sender, SystemClock(), **kw)


async def states(store: Store, rels: list[Release]) -> list[DeliveryState]:
    return [row.state for r in rels for row in await store.ledger.deliveries(r.run_id, r.city_id)]


async def test_prepared_release_sends_each_room_once_and_sending_first(store: Store) -> None:
    rels = await releases(store, 3, 20)
    sender = FakeSender(store)
    d = dispatcher(store, sender, rels, max_in_flight=8)
    await d.prepare(rels)
    outcomes = await d.release(rels)
    assert sorted(room for room, _ in sender.sent) == sorted(r for x in rels for r in x.rooms)
    assert set(sender.states_at_send) == {DeliveryState.SENDING}
    assert sender.max_in_flight <= 8
    assert all(len(o.delivered) == 20 for o in outcomes)
    assert set(await states(store, rels)) == {DeliveryState.SENT}
    # Again: nothing leaves a second time.
    await d.prepare(rels)
    await d.release(rels)
    assert len(sender.sent) == 60


async def test_unprepared_release_works(store: Store) -> None:
    rels = await releases(store, 2, 5)
    sender = FakeSender(store)
    await dispatcher(store, sender, rels).release(rels)
    assert len(sender.sent) == 10
    assert set(await states(store, rels)) == {DeliveryState.SENT}


async def test_rows_changed_after_prepare_are_read_again(store: Store) -> None:
    """The snapshot taken at prepare is stale: one row was sent and one skipped by
    another path meanwhile. Neither leaves again; the rest do."""
    rels = await releases(store, 1, 4)
    sender = FakeSender(store)
    d = dispatcher(store, sender, rels)
    await d.prepare(rels)
    sent_key, skipped_key = rels[0].keys()[:2]
    now = datetime.now(UTC)
    assert await store.ledger.advance(
        sent_key, DeliveryState.PENDING, DeliveryState.SENDING, now=now
    )
    assert await store.ledger.advance(
        sent_key, DeliveryState.SENDING, DeliveryState.SENT, now=now, event_id="$x"
    )
    await store.ledger.transition(skipped_key, DeliveryState.SKIPPED, now=now, error="left")
    (outcome,) = await d.release(rels)
    assert sorted(room for room, _ in sender.sent) == sorted(rels[0].rooms[2:])
    assert sent_key.room_id in outcome.delivered
    assert outcome.skipped == {skipped_key.room_id: "left"}


async def test_retry_after_a_rate_limit(store: Store) -> None:
    rels = await releases(store, 1, 3)
    sender = FakeSender(store)
    sender.fail_first[rels[0].rooms[1]] = SendFailure(429, "M_LIMIT_EXCEEDED", retry_after_ms=10)
    d = dispatcher(store, sender, rels, policy=RetryPolicy())
    await d.prepare(rels)
    (outcome,) = await d.release(rels)
    assert sorted(outcome.delivered) == sorted(rels[0].rooms)
    row = await store.ledger.delivery(rels[0].keys()[1])
    assert row is not None and row.state is DeliveryState.SENT and row.attempts == 2
    assert set(sender.states_at_send) == {DeliveryState.SENDING}


async def test_permanent_failure_is_failed_not_resent(store: Store) -> None:
    rels = await releases(store, 1, 2)
    sender = FakeSender(store)
    sender.fail_first[rels[0].rooms[0]] = SendFailure(403, "M_FORBIDDEN")
    d = dispatcher(store, sender, rels)
    await d.prepare(rels)
    (outcome,) = await d.release(rels)
    assert list(outcome.failed) == [rels[0].rooms[0]]
    await d.release(rels)
    assert [room for room, _ in sender.sent] == [rels[0].rooms[1]]


async def test_cities_due_together_are_interleaved(store: Store) -> None:
    rels = await releases(store, 3, 4)
    sender = FakeSender(store, latency=0)
    d = dispatcher(store, sender, rels, max_in_flight=1)
    await d.prepare(rels)
    await d.release(rels)
    cities = [room.split("-")[0] for room, _ in sender.sent]
    assert cities == ["!r0", "!r1", "!r2"] * 4


def test_interleave_keeps_each_rooms_releases_in_the_given_order() -> None:
    """A room listed at different positions in two releases (a resumed release
    keeps its old rooms at the end) still gets the earlier release first."""
    now = datetime.now(UTC)
    first = Release(1, "s", "c", "one", now, ("!x", "!y", "!z"), TEXT)
    second = Release(1, "s", "c", "two", now, ("!z", "!y", "!x"), TEXT)
    pairs = interleave([first, second])
    for room in ("!x", "!y", "!z"):
        assert [r.stage_id for r, rm in pairs if rm == room] == ["one", "two"]
    assert sorted(rm for _, rm in pairs) == sorted(first.rooms + second.rooms)


async def test_advance_is_conditional_and_checked(store: Store) -> None:
    rels = await releases(store, 1, 1)
    (key,) = rels[0].keys()
    now = datetime.now(UTC)
    await store.ledger.ensure_deliveries([key], now, now)
    assert not await store.ledger.advance(key, DeliveryState.SENDING, DeliveryState.SENT, now=now)
    assert await store.ledger.advance(key, DeliveryState.PENDING, DeliveryState.SENDING, now=now)
    assert not await store.ledger.advance(
        key, DeliveryState.PENDING, DeliveryState.SENDING, now=now
    )
    assert await store.ledger.advance(
        key, DeliveryState.SENDING, DeliveryState.SENT, now=now, event_id="$e"
    )
    with pytest.raises(IllegalTransition):
        await store.ledger.advance(key, DeliveryState.SENT, DeliveryState.SENDING, now=now)
    row = await store.ledger.delivery(key)
    assert row is not None and row.state is DeliveryState.SENT and row.event_id == "$e"


# -- the dispatcher's contract, room by room ------------------------------------------
#
# A scripted sender: each room answers from a script (failures, then success), with
# a per-room latency; every request is logged with its monotonic start and end.

LOCATED = (
    Message(Part.TEXT, "m.room.message", {"msgtype": "m.text", "body": "walk"}),
    Message(Part.LOCATION, "m.room.message", {"msgtype": "m.location", "geo_uri": "geo:1,2"}),
)


@dataclass
class Request:
    room: str
    stage: str
    part: str
    txn: str
    start: float
    end: float = 0.0
    ok: bool = False


class ScriptedSender:
    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.room_latency: dict[str, float] = {}
        self.script: dict[str, list[SendFailure]] = {}
        self.always: dict[str, SendFailure] = {}
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.found: dict[str, str] = {}  # room -> event id find_dispatch reports
        self.find_fails = False
        self.finds: list[tuple[str, dict[str, str]]] = []
        self._new_request = asyncio.Event()

    async def wait_requests(self, count: int) -> None:
        while len(self.requests) < count:
            self._new_request.clear()
            await asyncio.wait_for(self._new_request.wait(), 5)

    def delivered(self) -> list[Request]:
        return [r for r in self.requests if r.ok]

    async def send(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str:
        tag = content[DISPATCH_KEY]
        req = Request(room_id, tag["stage"], tag["part"], txn_id, time.monotonic())
        self.requests.append(req)
        self._new_request.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.room_latency.get(room_id, self.latency))
        finally:
            self.in_flight -= 1
            req.end = time.monotonic()
        script = self.script.get(room_id)
        if script:
            raise SendFailed(script.pop(0))
        if room_id in self.always:
            raise SendFailed(self.always[room_id])
        req.ok = True
        return f"$ev-{len(self.requests)}"

    async def prepare(self, room_id: str) -> None:
        return None

    async def find_dispatch(self, room_id: str, tag: Mapping[str, str]) -> str | None:
        self.finds.append((room_id, dict(tag)))
        if self.find_fails:
            raise SendFailed(SendFailure(None, message="ClientConnectorError"))
        return self.found.get(room_id)


FAST = RetryPolicy(base_s=0.01, cap_s=0.02, default_rate_limit_s=0.05)


async def make_run(
    store: Store, stages: tuple[str, ...] = ("go",), cities: tuple[str, ...] = ("c",)
) -> int:
    now = datetime.now(UTC)
    return await store.runs.create(
        scenario_id="s",
        source_path="/s.yaml",
        source_sha256="0" * 64,
        armed_by="@org:x",
        control_room="!control:x",
        now=now,
        dispatches=[
            PlannedDispatch(city, stage, i, now)
            for city in cities
            for i, stage in enumerate(stages)
        ],
    )


def release(
    run_id: int,
    rooms: Sequence[str],
    *,
    stage: str = "go",
    city: str = "c",
    messages: tuple[Message, ...] = LOCATED,
    deadline: datetime | None = None,
    final: bool = False,
) -> Release:
    return Release(
        run_id=run_id,
        scenario_id="s",
        city_id=city,
        stage_id=stage,
        due_at=datetime.now(UTC),
        rooms=tuple(rooms),
        messages=messages,
        deadline=deadline,
        final=final,
    )


async def row_of(store: Store, rel: Release, room: str, part: Part = Part.TEXT) -> DeliveryRow:
    row = await store.ledger.delivery(
        DeliveryKey(rel.run_id, rel.scenario_id, rel.city_id, rel.stage_id, room, part)
    )
    assert row is not None
    return row


async def test_each_room_gets_its_stages_and_parts_in_order(store: Store) -> None:
    """Stage 2 is released while stage 1 is still going out to a slow room: that room
    still gets stage 1 (text, location) before stage 2, and the other rooms are not
    held up by the slow one."""
    run = await make_run(store, ("one", "two"))
    rooms = [f"!r{i}:x" for i in range(6)]
    sender = ScriptedSender(latency=0.005)
    sender.room_latency["!r0:x"] = 0.3
    d = Dispatcher(store, sender, SystemClock(), policy=FAST, max_in_flight=4)
    first = asyncio.create_task(d.release([release(run, rooms, stage="one")]))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(d.release([release(run, rooms, stage="two")]))
    await asyncio.gather(first, second)
    for room in rooms:
        seen = [(r.stage, r.part) for r in sender.delivered() if r.room == room]
        assert seen == [
            ("one", "text"),
            ("one", "location"),
            ("two", "text"),
            ("two", "location"),
        ], (room, seen)
    # Every fast room had both stages before the slow room finished its first request.
    slow_first_end = next(r.end for r in sender.requests if r.room == "!r0:x")
    fast_last_end = max(r.end for r in sender.requests if r.room != "!r0:x")
    assert fast_last_end < slow_first_end


async def test_bounded_concurrency(store: Store) -> None:
    run = await make_run(store)
    rooms = [f"!r{i}:x" for i in range(40)]
    sender = ScriptedSender(latency=0.01)
    d = Dispatcher(store, sender, SystemClock(), max_in_flight=5)
    (outcome,) = await d.release([release(run, rooms, messages=TEXT)])
    assert sender.max_in_flight == 5
    assert sorted(outcome.delivered) == sorted(rooms)
    assert len(sender.requests) == 40


async def test_429_waits_retry_after_and_holds_no_slot(store: Store) -> None:
    """A throttled room waits what the server says, and meanwhile the single slot
    serves the other rooms."""
    run = await make_run(store)
    rooms = ["!slow:x", "!a:x", "!b:x", "!c:x"]
    sender = ScriptedSender(latency=0.005)
    sender.script["!slow:x"] = [SendFailure(429, "M_LIMIT_EXCEEDED", retry_after_ms=300)]
    d = Dispatcher(store, sender, SystemClock(), policy=RetryPolicy(), max_in_flight=1)
    rel = release(run, rooms, messages=TEXT)
    (outcome,) = await d.release([rel])
    assert sorted(outcome.delivered) == sorted(rooms)
    slow = [r for r in sender.requests if r.room == "!slow:x"]
    assert len(slow) == 2 and not slow[0].ok and slow[1].ok
    assert slow[1].start - slow[0].end >= 0.29
    # Both attempts used the same transaction id (the homeserver dedups a resend).
    assert slow[0].txn == slow[1].txn
    others = [r for r in sender.requests if r.room != "!slow:x"]
    assert all(r.end <= slow[1].start for r in others)
    row = await row_of(store, rel, "!slow:x")
    assert row.state is DeliveryState.SENT and row.attempts == 2
    assert row.last_error == "rate limited"


async def test_5xx_backs_off_then_succeeds(store: Store) -> None:
    run = await make_run(store)
    sender = ScriptedSender()
    sender.script["!r:x"] = [
        SendFailure(502),
        SendFailure(None, message="timeout"),
        SendFailure(503),
    ]
    d = Dispatcher(store, sender, SystemClock(), policy=FAST, rng=random.Random(1))
    rel = release(run, ["!r:x"])
    (outcome,) = await d.release([rel])
    assert outcome.delivered == ["!r:x"] and not outcome.failed
    assert [(r.part, r.ok) for r in sender.requests] == [
        ("text", False),
        ("text", False),
        ("text", False),
        ("text", True),
        ("location", True),
    ]
    row = await row_of(store, rel, "!r:x")
    assert row.state is DeliveryState.SENT and row.attempts == 4
    assert len({r.txn for r in sender.requests if r.part == "text"}) == 1


async def test_4xx_fails_the_room_at_once_and_skips_its_location(store: Store) -> None:
    run = await make_run(store)
    sender = ScriptedSender()
    sender.always["!banned:x"] = SendFailure(403, "M_FORBIDDEN")
    d = Dispatcher(store, sender, SystemClock(), policy=FAST)
    rel = release(run, ["!banned:x", "!ok:x"])
    (outcome,) = await d.release([rel])
    assert outcome.delivered == ["!ok:x"]
    assert outcome.failed == {"!banned:x": "HTTP 403 M_FORBIDDEN"}
    assert [r.room for r in sender.requests].count("!banned:x") == 1
    text = await row_of(store, rel, "!banned:x")
    assert text.state is DeliveryState.FAILED and text.attempts == 1
    loc = await row_of(store, rel, "!banned:x", Part.LOCATION)
    assert loc.state is DeliveryState.SKIPPED and loc.last_error == "text part not delivered"


async def test_deadline_gives_up(store: Store) -> None:
    """Transient errors are retried until the late policy's deadline, then the room
    fails; other rooms are unaffected."""
    run = await make_run(store)
    sender = ScriptedSender()
    sender.always["!down:x"] = SendFailure(503)
    d = Dispatcher(store, sender, SystemClock(), policy=FAST)
    started = time.monotonic()
    rel = release(run, ["!down:x", "!ok:x"], deadline=datetime.now(UTC) + timedelta(seconds=0.3))
    (outcome,) = await d.release([rel])
    took = time.monotonic() - started
    assert 0.25 < took < 2, took
    assert outcome.delivered == ["!ok:x"]
    assert "deadline" in outcome.failed["!down:x"]
    row = await row_of(store, rel, "!down:x")
    assert row.state is DeliveryState.FAILED and row.attempts > 3


async def test_deadline_already_passed_on_a_manual_clock(store: Store) -> None:
    run = await make_run(store)
    clock = ManualClock(datetime.now(UTC))
    sender = ScriptedSender()
    sender.script["!r:x"] = [SendFailure(429, retry_after_ms=1000)]
    d = Dispatcher(store, sender, clock, policy=FAST)
    rel = release(run, ["!r:x"], deadline=clock.now() + timedelta(milliseconds=500))
    (outcome,) = await d.release([rel])
    assert len(sender.requests) == 1
    assert outcome.failed["!r:x"].startswith("HTTP 429")
    clock.advance(timedelta(seconds=1))  # nothing is left waiting on the clock


async def test_cancel_stops_retries_and_skips(store: Store) -> None:
    run = await make_run(store, cities=("c", "other"))
    sender = ScriptedSender()
    sender.always["!down:x"] = SendFailure(503)
    d = Dispatcher(store, sender, SystemClock(), policy=RetryPolicy(base_s=5, cap_s=5))
    rel = release(run, ["!down:x"])
    task = asyncio.create_task(d.release([rel]))
    await sender.wait_requests(1)
    d.cancel(run, ["c"])
    (outcome,) = await asyncio.wait_for(task, 2)  # wakes from the 5 s backoff at once
    assert outcome.skipped == {"!down:x": "cancelled"}
    assert len(sender.requests) == 1
    assert (await row_of(store, rel, "!down:x")).state is DeliveryState.SKIPPED
    assert (await row_of(store, rel, "!down:x", Part.LOCATION)).state is DeliveryState.SKIPPED
    # A cancelled city sends nothing more; another city is not affected, and an
    # abort (final) release still goes out to the cancelled city.
    other = release(run, ["!o:x"], city="other", messages=TEXT)
    abort = release(run, ["!a:x"], stage="go", city="c", messages=TEXT, final=True)
    sender.always.clear()
    (o1,) = await d.release([other])
    assert o1.delivered == ["!o:x"]
    (o2,) = await d.release([release(run, ["!late:x"], messages=TEXT)])
    assert o2.skipped == {"!late:x": "cancelled"}
    (o3,) = await d.release([abort])
    assert o3.delivered == ["!a:x"]


async def test_stop_leaves_unsent_rows_pending(store: Store) -> None:
    run = await make_run(store)
    rooms = [f"!r{i}:x" for i in range(10)]
    sender = ScriptedSender(latency=0.05)
    sender.always["!r9:x"] = SendFailure(503)
    d = Dispatcher(
        store, sender, SystemClock(), policy=RetryPolicy(base_s=5, cap_s=5), max_in_flight=1
    )
    rel = release(run, rooms, messages=TEXT)
    task = asyncio.create_task(d.release([rel]))
    await sender.wait_requests(3)
    d.stop()
    await asyncio.wait_for(task, 2)
    states = {room: (await row_of(store, rel, room)).state for room in rooms}
    sent = [room for room, s in states.items() if s is DeliveryState.SENT]
    # The request in flight when stop() came finished and was recorded; nothing new left.
    assert len(sender.requests) == len(sent) + ("!r9:x" in {r.room for r in sender.requests})
    assert 3 <= len(sent) < 10
    assert {s for s in states.values() if s is not DeliveryState.SENT} == {DeliveryState.PENDING}
    assert d.stopping


async def test_sending_row_after_a_crash_is_looked_up_not_resent(tmp_path: Path) -> None:
    """A row left SENDING by a crash: on restart the dispatcher asks the room. Found:
    the row is SENT with that event and nothing is sent. Not found, or the lookup
    fails: it is sent again, with the same transaction id."""
    path = tmp_path / "crash.db"
    s = await Store.open(path)
    run = await make_run(s)
    rooms = ["!found:x", "!lost:x", "!unknown:x", "!fresh:x"]
    rel = release(run, rooms, messages=TEXT)
    now = datetime.now(UTC)
    await s.ledger.ensure_deliveries(rel.keys(), now, now)
    for key in rel.keys()[:3]:
        await s.ledger.transition(key, DeliveryState.SENDING, now=now, count_attempt=True)
    await s.close()  # the crash

    s = await Store.open(path)
    try:
        sender = ScriptedSender()
        sender.found["!found:x"] = "$already"
        d = Dispatcher(s, sender, SystemClock(), policy=FAST)
        await d.prepare([rel])
        (outcome,) = await d.release([rel])
        assert sorted(outcome.delivered) == sorted(rooms)
        assert sorted(r.room for r in sender.requests) == ["!fresh:x", "!lost:x", "!unknown:x"]
        # Only rows left SENDING were looked up, with the global dispatch tag.
        assert sorted(room for room, _ in sender.finds) == ["!found:x", "!lost:x", "!unknown:x"]
        assert all(
            tag == {"scenario": "s", "city": "c", "stage": "go", "part": "text"}
            for _, tag in sender.finds
        )
        found = await row_of(s, rel, "!found:x")
        assert found.state is DeliveryState.SENT and found.event_id == "$already"
        assert found.attempts == 1
        lost = await row_of(s, rel, "!lost:x")
        assert lost.state is DeliveryState.SENT and lost.attempts == 2
        assert next(r.txn for r in sender.requests if r.room == "!lost:x") == lost.txn_id
    finally:
        await s.close()


async def test_sending_row_lookup_failure_resends_with_the_same_txn(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "crash.db")
    try:
        run = await make_run(s)
        rel = release(run, ["!r:x"], messages=TEXT)
        now = datetime.now(UTC)
        await s.ledger.ensure_deliveries(rel.keys(), now, now)
        await s.ledger.transition(rel.keys()[0], DeliveryState.SENDING, now=now, count_attempt=True)
        sender = ScriptedSender()
        sender.find_fails = True
        d = Dispatcher(s, sender, SystemClock(), policy=FAST)
        (outcome,) = await d.release([rel])
        assert outcome.delivered == ["!r:x"]
        assert [r.txn for r in sender.requests] == [rel.keys()[0].txn_id()]
    finally:
        await s.close()


async def test_first_request_goes_alone_then_the_rest_in_parallel(store: Store) -> None:
    """The pilot: the release's first request is answered before any other leaves
    (so the homeserver stamps the first message at once), then up to max_in_flight."""
    run = await make_run(store)
    sender = ScriptedSender(latency=0.02)
    d = Dispatcher(store, sender, SystemClock(), max_in_flight=8, policy=FAST)
    rel = release(run, [f"!r{i}:x" for i in range(24)], messages=TEXT)
    await d.prepare([rel])
    (outcome,) = await d.release([rel])
    assert len(outcome.delivered) == 24
    first, *rest = sorted(sender.requests, key=lambda r: r.start)
    assert first.room == "!r0:x"
    assert all(r.start >= first.end for r in rest)
    assert sender.max_in_flight == 8


async def test_a_failing_pilot_opens_the_way(store: Store) -> None:
    run = await make_run(store)
    sender = ScriptedSender(latency=0.005)
    sender.always["!r0:x"] = SendFailure(403, "M_FORBIDDEN")
    d = Dispatcher(store, sender, SystemClock(), max_in_flight=4, policy=FAST)
    rel = release(run, [f"!r{i}:x" for i in range(6)], messages=TEXT)
    (outcome,) = await d.release([rel])
    assert list(outcome.failed) == ["!r0:x"] and len(outcome.delivered) == 5


async def test_quiet_while_sending_not_while_backing_off(store: Store) -> None:
    """The sync loop waits on quiet(): it holds while requests are waiting or in
    flight, and not while the only room left is waiting out a 429."""
    run = await make_run(store)
    sender = ScriptedSender(latency=0.02)
    sender.script["!r5:x"] = [SendFailure(429, "M_LIMIT_EXCEEDED", retry_after_ms=400)]
    d = Dispatcher(store, sender, SystemClock(), max_in_flight=2, policy=FAST)
    await asyncio.wait_for(d.quiet(), 0.1)  # idle
    rel = release(run, [f"!r{i}:x" for i in range(6)], messages=TEXT)
    task = asyncio.create_task(d.release([rel]))
    await sender.wait_requests(1)
    t0 = time.monotonic()
    await asyncio.wait_for(d.quiet(), 2)
    quiet_after = time.monotonic() - t0
    assert not task.done()  # !r5 is still backing off
    (outcome,) = await task
    assert len(outcome.delivered) == 6
    assert 0.03 < quiet_after < 0.35  # after the first pass, before the retry


class SlowKeysSender(FakeSender):
    """Key sharing that takes a while per room, recording the order."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.shared: list[str] = []

    async def prepare(self, room_id: str) -> None:
        await asyncio.sleep(0.02)
        self.shared.append(room_id)


async def test_prepare_does_not_wait_for_key_sharing_which_follows_release_order(
    store: Store,
) -> None:
    """Awaiting key sharing made the first message seconds late when sharing
    outlasted prepare_seconds; it now runs behind, first rooms first."""
    rels = await releases(store, 3, 10)
    sender = SlowKeysSender(store)
    d = dispatcher(store, sender, rels)
    await asyncio.wait_for(d.prepare(rels), 0.1)  # 30 rooms x 20 ms would be 0.6 s
    assert len(sender.shared) < 30
    await d.keys_shared()
    assert sender.shared == [room for _, room in interleave(rels)]


async def test_an_unprepared_release_sends_its_first_room_before_writing_the_rest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abort's stop messages are not prepared: the first stop request must not
    wait for the rows of every other room (measured ~0.5 s at 1,000 rooms behind
    a cancelled fan-out). The bulk write is held here until the first room is sent."""
    rels = await releases(store, 3, 50)
    sender = FakeSender(store)
    d = dispatcher(store, sender, rels, max_in_flight=8)
    write = store.ledger.ensure_deliveries
    bulk_writes = 0
    first_sent = asyncio.Event()

    async def held(keys: Any, due_at: datetime, now: datetime) -> None:
        nonlocal bulk_writes
        keys = list(keys)
        if len(keys) > 1:
            bulk_writes += 1
            await asyncio.wait_for(first_sent.wait(), 2)
        await write(keys, due_at, now)

    async def send(room_id: str, *args: Any) -> str:
        event = await FakeSender.send(sender, room_id, *args)
        first_sent.set()
        return event

    monkeypatch.setattr(store.ledger, "ensure_deliveries", held)
    monkeypatch.setattr(sender, "send", send)
    outcomes = await d.release(rels, priority=True)
    assert sender.sent[0][0] == rels[0].rooms[0]
    assert bulk_writes == 3
    assert all(len(o.delivered) == 50 for o in outcomes)
    assert set(await states(store, rels)) == {DeliveryState.SENT}
    assert set(sender.states_at_send) == {DeliveryState.SENDING}
    # Again: nothing leaves a second time, and no copy of a row was left behind stale.
    await d.release(rels, priority=True)
    assert len(sender.sent) == 150
