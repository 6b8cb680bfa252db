"""The dispatcher against a real SQLite ledger and a fake sender: exactly-once rules
of the fast path (ledger snapshot at prepare, one UPDATE per transition)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.clock import SystemClock
from bot.dispatch import Dispatcher, Message, Release
from bot.ledger import DeliveryKey, DeliveryState, IllegalTransition, Part
from bot.matrix.sender import SendFailed
from bot.retry import RetryPolicy, SendFailure
from bot.store import PlannedDispatch, Store

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
        row = await self.store.delivery(self.keys[txn_id])
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
    run = await store.create_run(
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
    return [row.state for r in rels for row in await store.deliveries(r.run_id, r.city_id)]


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
    assert await store.advance(sent_key, DeliveryState.PENDING, DeliveryState.SENDING, now=now)
    assert await store.advance(
        sent_key, DeliveryState.SENDING, DeliveryState.SENT, now=now, event_id="$x"
    )
    await store.transition(skipped_key, DeliveryState.SKIPPED, now=now, error="left")
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
    row = await store.delivery(rels[0].keys()[1])
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


async def test_advance_is_conditional_and_checked(store: Store) -> None:
    rels = await releases(store, 1, 1)
    (key,) = rels[0].keys()
    now = datetime.now(UTC)
    await store.ensure_deliveries([key], now, now)
    assert not await store.advance(key, DeliveryState.SENDING, DeliveryState.SENT, now=now)
    assert await store.advance(key, DeliveryState.PENDING, DeliveryState.SENDING, now=now)
    assert not await store.advance(key, DeliveryState.PENDING, DeliveryState.SENDING, now=now)
    assert await store.advance(
        key, DeliveryState.SENDING, DeliveryState.SENT, now=now, event_id="$e"
    )
    with pytest.raises(IllegalTransition):
        await store.advance(key, DeliveryState.SENT, DeliveryState.SENDING, now=now)
    row = await store.delivery(key)
    assert row is not None and row.state is DeliveryState.SENT and row.event_id == "$e"
