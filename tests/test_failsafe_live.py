"""Delayed events (MSC4140) on a real Synapse, through bot.matrix.delayed: the
server sends a scheduled event by itself, once, at its due time, with the content
and tag given (decryptable in an encrypted room); a cancelled one never arrives;
the list shows what is pending; a homeserver without the feature is refused before
anything is sent; the per-user cap and the maximum delay are clear refusals; the
delay id never reaches a log line or an exception.

One Synapse per session with ``max_event_delay_duration`` set (1 h) and a small
cap of delayed events per user (tests/conftest.py, ``delayed_homeserver``);
every test has its own users and rooms. The
shared session homeserver (delayed events off) is the "without the feature" one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import DELAYED_CAP
from matrix_helpers import (
    ClientPool,
    collect_messages,
    content_of,
    create_room,
    join,
    room_messages,
    sync_until,
    with_content_key,
)
from nio import AsyncClient, RoomSendResponse

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver, free_loopback_port
from bot.failsafe import (
    Limits,
    Target,
    after_release,
    delayed_content,
    delayed_txn_id,
    plan_failsafe,
)
from bot.failsafe.switch import cancel, cancel_orphans, schedule_due
from bot.ledger import DeliveryKey, Part
from bot.matrix.delayed import (
    DelayedEvents,
    DelayedEventsUnsupported,
    DelayedRequestFailed,
    DelayTooLong,
    TooManyDelayedEvents,
    encrypt_for_room,
)
from bot.store import PlannedDispatch, Store

pytestmark = pytest.mark.homeserver

CAP = DELAYED_CAP
DELAY_MS = 2500


@pytest_asyncio.fixture
async def delayed_hs(delayed_homeserver: EmbeddedHomeserver) -> EmbeddedHomeserver:
    # The session's failsafe homeserver (tests/conftest.py), shared with the bot's
    # switch tests (tests/test_failsafe_bot_live.py).
    assert delayed_homeserver.max_delayed_events_per_user == CAP
    return delayed_homeserver


@pytest_asyncio.fixture
async def pool(delayed_hs: EmbeddedHomeserver, tmp_path: Path) -> AsyncIterator[ClientPool]:
    async with ClientPool(delayed_hs, tmp_path / "stores") as clients:
        yield clients


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def bot_and_participant(
    hs: EmbeddedHomeserver, pool: ClientPool, *, encrypted: bool = False
) -> tuple[AsyncClient, AsyncClient, str]:
    """A bot (rate limits lifted, as an operator would) and a participant in one room."""
    bot_user = await hs.register(_name("bot"))
    await hs.exempt_from_rate_limits(bot_user.user_id)
    bot = await pool.participant(bot_user)
    alice = await pool.participant(await hs.register(_name("alice")))
    room_id = await create_room(bot, name="city", encrypted=encrypted, invite=[alice.user_id])
    await join(alice, room_id)
    # The bot learns the member list (and, encrypted, alice's device keys).
    await sync_until(bot, lambda: alice.user_id in bot.rooms[room_id].users)
    return bot, alice, room_id


def key_for(room_id: str, stage: str = "go") -> DeliveryKey:
    return DeliveryKey(1, "fs", "north", stage, room_id, Part.TEXT)


def stage_content(key: DeliveryKey, body: str = "Go to the square") -> dict[str, object]:
    return delayed_content({"msgtype": "m.text", "body": body}, key)


async def tagged(client: AsyncClient, room_id: str) -> list[dict[str, object]]:
    """The contents of every event in the room that carries a dispatch tag."""
    return [
        content_of(e) for e in with_content_key(await room_messages(client, room_id), DISPATCH_KEY)
    ]


async def test_the_server_sends_it_once_at_its_due_time(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool
) -> None:
    bot, alice, room_id = await bot_and_participant(delayed_hs, pool)
    delayed = DelayedEvents(bot)
    assert await delayed.supports_delayed_events()
    key = key_for(room_id)
    # Whole milliseconds, as the server stamps: a float here made the test fail by a
    # fraction of a millisecond when the request reached the server within that ms.
    asked_ms = int(time.time() * 1000)
    started = time.monotonic()
    delay_id = await delayed.schedule(
        room_id,
        "m.room.message",
        stage_content(key),
        txn_id=delayed_txn_id(key, 1),
        delay_ms=DELAY_MS,
    )
    (listed,) = await delayed.scheduled()
    assert (listed.delay_id, listed.room_id, listed.delay_ms) == (delay_id, room_id, DELAY_MS)
    assert listed.tag == key.content_tag()

    # The bot sends nothing more; alice gets the event from the server alone.
    got = await collect_messages(alice, room_id, until=lambda ms: len(ms) >= 1, timeout=15)
    assert time.monotonic() - started >= DELAY_MS / 1000
    (event,) = got
    assert event.sender == bot.user_id
    assert event.server_timestamp >= asked_ms + DELAY_MS  # the server stamps it at due time
    assert content_of(event) == stage_content(key)

    # Once: nothing more arrives, and the server's list is empty.
    await asyncio.sleep(1)
    assert await tagged(alice, room_id) == [stage_content(key)]
    assert await delayed.scheduled() == []
    assert await delayed.cancel(delay_id) is False  # gone: it was sent


async def test_a_cancelled_event_never_arrives(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool
) -> None:
    bot, alice, room_id = await bot_and_participant(delayed_hs, pool)
    delayed = DelayedEvents(bot)
    key = key_for(room_id)
    started = time.monotonic()
    delay_id = await delayed.schedule(
        room_id, "m.room.message", stage_content(key), txn_id=delayed_txn_id(key, 1), delay_ms=2000
    )
    assert [e.delay_id for e in await delayed.scheduled()] == [delay_id]
    assert await delayed.cancel(delay_id) is True
    assert await delayed.scheduled() == []
    await asyncio.sleep(max(0, started + 3 - time.monotonic()))  # just past due
    await sync_until(alice, lambda: True)
    assert await tagged(alice, room_id) == []
    assert await delayed.cancel(delay_id) is False


async def test_txn_ids_as_synapse_treats_them(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool
) -> None:
    """Why delayed txn ids are their own and new per generation (Synapse 1.163):
    the same txn id returns the first delay id whatever the content, even after it
    was cancelled; and a real send with a delayed send's txn id sends nothing."""
    bot, alice, room_id = await bot_and_participant(delayed_hs, pool)
    delayed = DelayedEvents(bot)
    key = key_for(room_id)
    txn = delayed_txn_id(key, 1)
    first = await delayed.schedule(
        room_id, "m.room.message", stage_content(key), txn_id=txn, delay_ms=600_000
    )
    again = await delayed.schedule(
        room_id, "m.room.message", stage_content(key, "other"), txn_id=txn, delay_ms=600_000
    )
    assert again == first and len(await delayed.scheduled()) == 1
    real = await bot.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "x"}, tx_id=txn
    )
    assert not (isinstance(real, RoomSendResponse) and real.event_id)  # answered from the cache
    assert await delayed.cancel(first)
    assert (
        await delayed.schedule(
            room_id, "m.room.message", stage_content(key), txn_id=txn, delay_ms=600_000
        )
        == first
    )
    assert await delayed.scheduled() == []  # the cancelled one was not scheduled again
    second = await delayed.schedule(
        room_id,
        "m.room.message",
        stage_content(key),
        txn_id=delayed_txn_id(key, 2),
        delay_ms=600_000,
    )
    assert second != first and len(await delayed.scheduled()) == 1
    assert await delayed.cancel(second)
    await sync_until(alice, lambda: True)
    assert await tagged(alice, room_id) == []


async def test_an_encrypted_delayed_event_is_decrypted_by_the_participant(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool
) -> None:
    bot, alice, room_id = await bot_and_participant(delayed_hs, pool, encrypted=True)
    delayed = DelayedEvents(bot)
    key = key_for(room_id)
    event_type, sealed = await encrypt_for_room(bot, room_id, "m.room.message", stage_content(key))
    assert event_type == "m.room.encrypted" and "Go to the square" not in str(sealed)
    await delayed.schedule(
        room_id, event_type, sealed, txn_id=delayed_txn_id(key, 1), delay_ms=2000
    )
    (listed,) = await delayed.scheduled()
    assert listed.tag is None  # the server holds only ciphertext

    got = await collect_messages(alice, room_id, until=lambda ms: len(ms) >= 1, timeout=15)
    (event,) = got
    assert event.decrypted
    assert content_of(event) == stage_content(key)


async def test_a_homeserver_without_the_feature_is_refused_and_nothing_is_sent(
    homeserver: EmbeddedHomeserver, tmp_path: Path
) -> None:
    async with ClientPool(homeserver, tmp_path / "stores") as plain:
        bot, alice, room_id = await bot_and_participant(homeserver, plain)
        delayed = DelayedEvents(bot)
        assert await delayed.supports_delayed_events() is False
        key = key_for(room_id)
        with pytest.raises(DelayedEventsUnsupported) as refused:
            await delayed.schedule(
                room_id,
                "m.room.message",
                stage_content(key),
                txn_id=delayed_txn_id(key, 1),
                delay_ms=2000,
            )
        assert "does not advertise delayed events" in str(refused.value)
        await asyncio.sleep(0.5)
        await sync_until(alice, lambda: True)
        assert await tagged(alice, room_id) == []


async def test_the_cap_and_the_maximum_are_clear_refusals(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool
) -> None:
    bot, _alice, room_id = await bot_and_participant(delayed_hs, pool)
    delayed = DelayedEvents(bot)
    support = await delayed.probe()
    assert (support.max_delay_ms, support.max_scheduled) == (3_600_000, CAP)
    key = key_for(room_id)
    with pytest.raises(DelayTooLong, match=r"over the homeserver's maximum \(3600000 ms\)"):
        await delayed.schedule(
            room_id,
            "m.room.message",
            stage_content(key),
            txn_id=delayed_txn_id(key, 1),
            delay_ms=7_200_000,
        )
    ids = []
    for n in range(CAP):
        k = key_for(room_id, f"s{n}")
        ids.append(
            await delayed.schedule(
                room_id,
                "m.room.message",
                stage_content(k),
                txn_id=delayed_txn_id(k, 1),
                delay_ms=600_000,
            )
        )
    over = key_for(room_id, "over")
    with pytest.raises(TooManyDelayedEvents) as refused:
        await delayed.schedule(
            room_id,
            "m.room.message",
            stage_content(over),
            txn_id=delayed_txn_id(over, 1),
            delay_ms=600_000,
        )
    assert str(refused.value) == (
        f"the homeserver's limit of delayed events per user ({CAP}) is reached "
        "(experimental_features.msc4140_max_delayed_events_per_user)"
    )
    for delay_id in ids:
        assert await delayed.cancel(delay_id)


async def test_the_delay_id_never_reaches_a_log_or_an_exception(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool, caplog: pytest.LogCaptureFixture
) -> None:
    bot, _alice, room_id = await bot_and_participant(delayed_hs, pool)
    delayed = DelayedEvents(bot)
    key = key_for(room_id)
    caplog.set_level(logging.DEBUG)  # every logger: nio, aiohttp, asyncio, ours
    messages: list[str] = []
    delay_id = await delayed.schedule(
        room_id,
        "m.room.message",
        stage_content(key),
        txn_id=delayed_txn_id(key, 1),
        delay_ms=600_000,
    )
    logging.getLogger("bot.test").info("scheduled %s (%r) for %s", delay_id, delay_id, key)
    await delayed.scheduled()
    # A request that fails on the way: nothing listens where the bot now points.
    real_homeserver = bot.homeserver
    bot.homeserver = f"http://127.0.0.1:{free_loopback_port()}"
    try:
        with pytest.raises(DelayedRequestFailed) as failed:
            await delayed.cancel(delay_id)
        messages.append(str(failed.value))
        messages.append(repr(failed.value.failure))
    finally:
        bot.homeserver = real_homeserver
    assert await delayed.cancel(delay_id)
    # Gone now: a refused restart says so without the id.
    assert await delayed.restart(delay_id) is False
    secret = delay_id.reveal()
    assert secret.startswith("syd_")  # Synapse's form, so the search below means something
    assert secret not in caplog.text
    assert all(secret not in m for m in messages)
    assert "DelayId(<secret>)" in caplog.text


async def test_the_switch_schedules_from_the_table_and_cancels_what_was_released(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool, tmp_path: Path
) -> None:
    """The sequence arming and releasing will call: plan, record, schedule_due;
    after_release + cancel for a room the bot served; the other room is served by
    the server alone, once, and cancelling it afterwards finds it gone."""
    bot, alice, served = await bot_and_participant(delayed_hs, pool)
    unserved = await create_room(bot, name="other", invite=[alice.user_id])
    await join(alice, unserved)
    delayed = DelayedEvents(bot)
    store = await Store.open(tmp_path / "blossom.db")
    try:
        now = datetime.now(UTC)
        run_id = await store.runs.create(
            scenario_id="fs",
            source_path="/s/fs.yaml",
            source_sha256="0" * 64,
            armed_by="@org:x",
            control_room="!c:x",
            now=now,
            dispatches=[PlannedDispatch("north", "go", 0, now + timedelta(seconds=1))],
        )
        keys = {
            room: DeliveryKey(run_id, "fs", "north", "go", room, Part.TEXT)
            for room in (served, unserved)
        }
        plan = plan_failsafe(
            [Target(k, now + timedelta(seconds=1)) for k in keys.values()],
            after=timedelta(seconds=2),
            now=now,
            limits=Limits(timedelta(hours=1), CAP),
            min_lead=timedelta(seconds=1),
        )
        table = store.delayed
        await table.add(plan.now, now)

        async def content_for(key: DeliveryKey) -> tuple[str, dict[str, Any]]:
            return await encrypt_for_room(bot, key.room_id, "m.room.message", stage_content(key))

        outcome = await schedule_due(table, delayed, content_for, lambda: datetime.now(UTC))
        assert sorted(outcome.done) == sorted(keys.values()) and outcome.refused is None
        assert sorted(e.room_id for e in await delayed.scheduled()) == sorted(keys)

        # The bot sends to `served` itself (not shown), then cancels its switch there.
        rows = [s.row for s in await table.rows(run_id)]
        cancelled = await cancel(
            table, delayed, after_release(rows, keys[served]), lambda: datetime.now(UTC)
        )
        assert cancelled.done == [keys[served]]
        assert [e.room_id for e in await delayed.scheduled()] == [unserved]
        assert await table.live_counts(run_id) == {("north", "go"): 1}

        got = await collect_messages(alice, unserved, until=lambda ms: len(ms) >= 1, timeout=15)
        assert [content_of(e) for e in got] == [stage_content(keys[unserved])]
        await asyncio.sleep(0.5)
        assert await tagged(alice, served) == []
        assert await tagged(alice, unserved) == [stage_content(keys[unserved])]
        late = await cancel(
            table, delayed, [s.row for s in await table.rows(run_id)], lambda: datetime.now(UTC)
        )
        assert late.gone == [keys[unserved]]  # the server had sent it: look in the room
        assert await table.known_ids() == set()
    finally:
        await store.close()


async def test_orphans_unknown_to_the_table_are_cancelled_at_start(
    delayed_hs: EmbeddedHomeserver, pool: ClientPool, tmp_path: Path
) -> None:
    bot, alice, room_id = await bot_and_participant(delayed_hs, pool)
    delayed = DelayedEvents(bot)
    key = key_for(room_id)
    # Scheduled by a request whose answer never reached the table (a crash).
    await delayed.schedule(
        room_id, "m.room.message", stage_content(key), txn_id=delayed_txn_id(key, 1), delay_ms=2000
    )
    store = await Store.open(tmp_path / "blossom.db")
    try:
        assert await cancel_orphans(store.delayed, delayed) == 1
    finally:
        await store.close()
    assert await delayed.scheduled() == []
    await asyncio.sleep(2.5)
    await sync_until(alice, lambda: True)
    assert await tagged(alice, room_id) == []
