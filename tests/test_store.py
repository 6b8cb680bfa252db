"""The aiosqlite store: migrations, runs, dispatches, the delivery ledger, rooms, audit."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from store_helpers import audit_log, count, failing_write

from bot.ledger import (
    DeliveryKey,
    DeliveryState,
    DispatchState,
    IllegalTransition,
    Part,
    RunState,
)
from bot.store import PlannedDispatch, Store, StoreError
from bot.store.migrations import MIGRATIONS

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "db" / "blossom.db")
    try:
        yield s
    finally:
        await s.close()


async def make_run(
    store: Store, scenario_id: str = "demo", cities: tuple[str, ...] = ("a",)
) -> int:
    return await store.runs.create(
        scenario_id=scenario_id,
        source_path=f"/scenarios/{scenario_id}.yaml",
        source_sha256="0" * 64,
        armed_by="@org:example.org",
        control_room="!control:example.org",
        now=T0,
        dispatches=[
            PlannedDispatch(city, stage, index, T0 + timedelta(minutes=index))
            for city in cities
            for index, stage in enumerate(("call", "go"))
        ],
    )


def key(
    run_id: int, room: str = "!r1:x", part: Part = Part.TEXT, stage: str = "call"
) -> DeliveryKey:
    return DeliveryKey(run_id, "demo", "a", stage, room, part)


# -- migrations -----------------------------------------------------------------------


async def test_fresh_database_is_at_the_latest_schema(store: Store) -> None:
    assert await store.db.schema_version() == len(MIGRATIONS)


async def test_reopen_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "blossom.db"
    s = await Store.open(path)
    run_id = await make_run(s)
    await s.close()
    s = await Store.open(path)
    try:
        assert await s.db.schema_version() == len(MIGRATIONS)
        assert [r.id for r in await s.runs.armed()] == [run_id]
    finally:
        await s.close()


async def test_each_migration_step_upgrades_existing_data(tmp_path: Path) -> None:
    """A database made by the first schema is upgraded in place, its rows kept."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('sync', 'kept')",
    )
    db.close()
    s = await Store.open(path)
    try:
        assert await s.db.schema_version() == len(MIGRATIONS)
    finally:
        await s.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'sync'").fetchone() == ("kept",)
    db.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this bot"):
        await Store.open(path)


async def test_unusable_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the database"):
        await Store.open(path)


async def test_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    """A migration is atomic: one that fails half-way changes nothing."""
    path = tmp_path / "half.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    # Something the later migrations would create already exists: they must fail.
    if len(MIGRATIONS) < 2:
        pytest.skip("only one migration")
    db.execute("CREATE TABLE holds (x)")
    db.close()
    with pytest.raises(StoreError):
        await Store.open(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    db.close()
    assert "drill_room" not in columns


# -- transactions -----------------------------------------------------------------------


async def test_transaction_commits_at_its_end_and_rolls_back_on_error(store: Store) -> None:
    async with store.transaction():
        await store.rooms.set("!a:x", "joined", now=T0)
        await store.rooms.set("!b:x", "joined", now=T0)
    assert await store.rooms.opted_in() == {"!a:x", "!b:x"}
    with pytest.raises(RuntimeError, match="boom"):
        async with store.transaction():
            await store.rooms.set("!c:x", "joined", now=T0)
            await store.rooms.set("!a:x", "left", now=T0)
            raise RuntimeError("boom")
    assert await store.rooms.opted_in() == {"!a:x", "!b:x"}


async def test_nested_transaction_is_a_savepoint(store: Store) -> None:
    """An inner block that fails undoes only itself; the outer block decides for
    the rest, and nothing is committed before the outer block ends."""
    path = await store.db.fetch("PRAGMA database_list")
    async with store.transaction():
        await store.rooms.set("!outer:x", "joined", now=T0)
        with pytest.raises(RuntimeError):
            async with store.transaction():
                await store.rooms.set("!inner:x", "joined", now=T0)
                raise RuntimeError("inner")
        async with store.transaction():
            await store.rooms.set("!kept:x", "joined", now=T0)
        # Not visible to another connection yet: the outer block has not ended.
        other = sqlite3.connect(path[0]["file"])
        assert other.execute("SELECT COUNT(*) FROM rooms").fetchone() == (0,)
        other.close()
    assert await store.rooms.opted_in() == {"!outer:x", "!kept:x"}
    with pytest.raises(RuntimeError):
        async with store.transaction():
            async with store.transaction():
                await store.rooms.set("!gone:x", "joined", now=T0)
            raise RuntimeError("outer")
    assert await store.rooms.opted_in() == {"!outer:x", "!kept:x"}


async def test_another_tasks_writes_wait_for_a_transaction(store: Store) -> None:
    """One connection serves every task: a write from another task must neither
    join an open transaction nor be undone by its rollback."""
    inside, go_on = asyncio.Event(), asyncio.Event()

    async def failing() -> None:
        async with store.transaction():
            await store.rooms.set("!doomed:x", "joined", now=T0)
            inside.set()
            await go_on.wait()
            raise RuntimeError("rolled back")

    task = asyncio.ensure_future(failing())
    await inside.wait()
    other = asyncio.ensure_future(store.rooms.set("!other:x", "joined", now=T0))
    await asyncio.sleep(0.05)
    assert not other.done()  # waits for the transaction
    go_on.set()
    with pytest.raises(RuntimeError):
        await task
    await other
    assert await store.rooms.opted_in() == {"!other:x"}


# -- runs and dispatches ---------------------------------------------------------------


async def test_create_run_with_dispatches(store: Store) -> None:
    run_id = await make_run(store, cities=("a", "b"))
    (run,) = await store.runs.armed()
    assert run.id == run_id and run.state == "armed" and run.armed_at == T0
    assert [r for r in await store.runs.of_scenario("demo")] == [run]
    rows = await store.ledger.dispatches(run_id)
    # Ordered by instant, then stage index, then city.
    assert [(d.city_id, d.stage_id) for d in rows] == [
        ("a", "call"),
        ("b", "call"),
        ("a", "go"),
        ("b", "go"),
    ]
    assert all(d.state is DispatchState.SCHEDULED and not d.reported for d in rows)
    assert rows[2].due_at == T0 + timedelta(minutes=1)


async def test_arming_is_all_or_nothing(store: Store) -> None:
    """A failure after the run's row is written leaves no run and no dispatch."""
    with failing_write(store.db, at=2) as seen, pytest.raises(StoreError, match="injected"):
        await make_run(store)
    assert "INSERT INTO runs" in seen[0]
    assert await store.runs.of_scenario("demo") == []
    assert await count(store, "dispatches") == 0
    run_id = await make_run(store)  # and the scenario can still be armed
    assert [r.id for r in await store.runs.armed()] == [run_id]


async def test_one_armed_run_per_scenario(store: Store) -> None:
    run_id = await make_run(store)
    with pytest.raises(StoreError, match="already armed"):
        await make_run(store)
    # The failed arming left nothing behind.
    assert [r.id for r in await store.runs.of_scenario("demo")] == [run_id]
    await store.runs.end(run_id, "disarmed", T0)
    second = await make_run(store)
    assert [r.id for r in await store.runs.of_scenario("demo")] == [run_id, second]
    assert [r.id for r in await store.runs.armed()] == [second]


async def test_end_run_only_once(store: Store) -> None:
    run_id = await make_run(store)
    await store.runs.end(run_id, "finished", T0)
    await store.runs.end(run_id, "disarmed", T0)  # no effect: not armed any more
    assert [r.state for r in await store.runs.of_scenario("demo")] == ["finished"]


async def test_dispatch_state_and_note(store: Store) -> None:
    run_id = await make_run(store)
    await store.ledger.set_dispatch_state(run_id, "a", "call", DispatchState.HELD, note="gate")
    await store.ledger.set_dispatch_state(
        run_id, "a", "call", DispatchState.RELEASING, released_at=T0
    )
    row = await store.ledger.dispatch(run_id, "a", "call")
    assert row is not None
    assert row.state is DispatchState.RELEASING
    assert row.note == "gate"  # kept when no new note is given
    assert row.released_at == T0
    await store.ledger.mark_reported(run_id, "a", "call")
    row = await store.ledger.dispatch(run_id, "a", "call")
    assert row is not None and row.reported
    assert await store.ledger.dispatch(run_id, "a", "nope") is None


async def test_dispatch_state_follows_the_transition_table(store: Store) -> None:
    run_id = await make_run(store)
    await store.ledger.set_dispatch_state(
        run_id, "a", "call", DispatchState.RELEASING, released_at=T0
    )
    await store.ledger.set_dispatch_state(run_id, "a", "call", DispatchState.RELEASED)
    # Nothing leaves a done state: a late hold or cancel changes nothing.
    await store.ledger.set_dispatch_states(
        run_id,
        [("a", "call", DispatchState.HELD, "late"), ("a", "call", DispatchState.CANCELLED, "x")],
    )
    row = await store.ledger.dispatch(run_id, "a", "call")
    assert row is not None and row.state is DispatchState.RELEASED


async def test_delay_moves_due_times_and_records_the_delay_in_one_go(store: Store) -> None:
    run_id = await make_run(store)
    (row,) = [d for d in await store.ledger.dispatches(run_id) if d.stage_id == "call"]
    later = row.due_at + timedelta(minutes=5)
    await store.steering.delay(run_id, [("a", "call", later)], ["a"], 300.0)
    await store.steering.delay(run_id, [], ["a"], 60.0)
    moved = await store.ledger.dispatch(run_id, "a", "call")
    assert moved is not None and moved.due_at == later
    assert await store.steering.delays(run_id) == {"a": 360.0}


async def test_delay_is_all_or_nothing(store: Store) -> None:
    """A failure after the due times moved leaves them (and the delay) as they were:
    {time} never renders out of step with the instants."""
    run_id = await make_run(store)
    (row,) = [d for d in await store.ledger.dispatches(run_id) if d.stage_id == "call"]
    later = row.due_at + timedelta(minutes=5)
    with failing_write(store.db, at=2) as seen, pytest.raises(StoreError, match="injected"):
        await store.steering.delay(run_id, [("a", "call", later)], ["a"], 300.0)
    assert "UPDATE dispatches SET due_at" in seen[0]
    unmoved = await store.ledger.dispatch(run_id, "a", "call")
    assert unmoved is not None and unmoved.due_at == row.due_at
    assert await store.steering.delays(run_id) == {}


async def test_dispatch_states_are_written_all_or_nothing(store: Store) -> None:
    run_id = await make_run(store, cities=("a", "b"))
    changes = [
        ("a", "call", DispatchState.HELD, "gate"),
        ("b", "call", DispatchState.SKIPPED, "late"),
    ]
    with failing_write(store.db, at=2), pytest.raises(StoreError, match="injected"):
        await store.ledger.set_dispatch_states(run_id, changes)
    assert {d.state for d in await store.ledger.dispatches(run_id)} == {DispatchState.SCHEDULED}


async def test_end_run_follows_the_run_transition_table(store: Store) -> None:
    run_id = await make_run(store)
    await store.runs.end(run_id, RunState.ABORTED, T0)
    for state in RunState:
        await store.runs.end(run_id, state, T0)  # nothing leaves an ended state
    (run,) = await store.runs.of_scenario("demo")
    assert run.state is RunState.ABORTED


async def test_purge_is_all_or_nothing(store: Store) -> None:
    """A failure in the middle of !purge deletes nothing: no runs gone with their
    audit trail kept, no participants gone with the runs kept."""
    old = await make_run(store)
    await store.runs.end(old, "finished", T0)
    await store.participants.add_direct("demo", "a", "@p:x", "!dm:x", now=T0)
    await store.audit.record(
        now=T0, room_id="!c:x", sender="@u:x", command="!arm demo", result="ok"
    )
    await store.participants.pod_key("demo", b"k" * 32, now=T0)
    with failing_write(store.db, at=4) as seen, pytest.raises(StoreError, match="injected"):
        await store.purge("demo")
    assert "DELETE FROM audit" in seen[3]
    assert [r.id for r in await store.runs.of_scenario("demo")] == [old]
    assert await store.participants.direct_rooms("demo", "a") == ["!dm:x"]
    assert len(await audit_log(store)) == 1
    assert await store.purge("demo") == 1
    assert await store.runs.of_scenario("demo") == []
    assert await store.participants.direct_rooms("demo", "a") == []
    assert await audit_log(store) == []
    assert await count(store, "pod_keys") == 0


async def test_private_participants_keep_pod_and_role(store: Store) -> None:
    """The pod assigned at !join and the role picked with !role stay with the row;
    joining again from another chat moves only the chat; the key is kept once."""
    p = store.participants
    await p.add_direct("demo", "hk", "@a:x", "!dm1:x", now=T0, pod_id="mongkok")
    await p.add_direct("demo", "hk", "@b:x", "!dm2:x", now=T0, pod_id="causeway")
    await p.add_direct("demo", "hk", "@c:x", "!dm3:x", now=T0, pod_id="mongkok")
    assert await p.set_role("demo", "hk", "@a:x", "front")
    assert not await p.set_role("demo", "hk", "@nobody:x", "front")
    await p.add_direct("demo", "hk", "@a:x", "!dm9:x", now=T0, pod_id="causeway")
    a = await p.direct_member("demo", "hk", "@a:x")
    assert a is not None and (a.room_id, a.pod_id, a.role_id) == ("!dm9:x", "mongkok", "front")
    assert await p.pod_sizes("demo", "hk") == {"mongkok": 2, "causeway": 1}
    assert [m.user_id for m in await p.direct_members("demo", "hk")] == ["@a:x", "@b:x", "@c:x"]
    first = await p.pod_key("demo", b"1" * 32, now=T0)
    assert first == b"1" * 32 and await p.pod_key("demo", b"2" * 32, now=T0) == first
    run_id = await make_run(store)
    await p.add_checkin(
        run_id, "hk", "go", "@a:x", now=T0, via="here", pod_id="mongkok", role_id="front"
    )
    await p.add_checkin(run_id, "hk", "go", "@b:x", now=T0, via="here", pod_id="causeway")
    await p.add_checkin(run_id, "hk", "go", "@c:x", now=T0, via="here", pod_id="mongkok")
    assert (await p.checkin_counts_by_lane(run_id))[("hk", "go")] == {
        ("mongkok", "front"): 1,
        ("causeway", None): 1,
        ("mongkok", None): 1,
    }


async def test_purge_cascades_but_keeps_armed(store: Store) -> None:
    old = await make_run(store)
    await store.ledger.ensure_deliveries([key(old)], T0, T0)
    await store.runs.end(old, "finished", T0)
    armed = await make_run(store)
    assert await store.purge("demo") == 1
    assert await store.ledger.deliveries(old) == []
    assert await store.ledger.dispatches(old) == []
    assert [r.id for r in await store.runs.of_scenario("demo")] == [armed]


# -- deliveries ------------------------------------------------------------------------


async def test_ensure_deliveries_is_idempotent(store: Store) -> None:
    run_id = await make_run(store)
    keys = [key(run_id, "!r1:x"), key(run_id, "!r1:x", Part.LOCATION), key(run_id, "!r2:x")]
    await store.ledger.ensure_deliveries(keys, T0, T0)
    await store.ledger.transition(keys[0], DeliveryState.SENDING, now=T0, count_attempt=True)
    await store.ledger.ensure_deliveries(keys, T0 + timedelta(hours=1), T0)
    rows = await store.ledger.deliveries(run_id)
    assert len(rows) == 3
    row = await store.ledger.delivery(keys[0])
    assert row is not None
    assert row.state is DeliveryState.SENDING  # untouched by the second ensure
    assert row.due_at == T0
    assert row.attempts == 1
    assert row.txn_id == keys[0].txn_id()
    # Text before location within a room.
    assert [(r.key.room_id, r.key.part) for r in rows] == [
        ("!r1:x", Part.TEXT),
        ("!r1:x", Part.LOCATION),
        ("!r2:x", Part.TEXT),
    ]


async def test_deliveries_need_their_dispatch(store: Store) -> None:
    run_id = await make_run(store)
    with pytest.raises(StoreError):
        await store.ledger.ensure_deliveries([key(run_id, stage="no-such-stage")], T0, T0)


async def test_transition_records_sent(store: Store) -> None:
    run_id = await make_run(store)
    k = key(run_id)
    await store.ledger.ensure_deliveries([k], T0, T0)
    await store.ledger.transition(k, DeliveryState.SENDING, now=T0, count_attempt=True)
    await store.ledger.transition(k, DeliveryState.PENDING, now=T0, error="HTTP 502")
    await store.ledger.transition(k, DeliveryState.SENDING, now=T0, count_attempt=True)
    sent_at = T0 + timedelta(seconds=3)
    row = await store.ledger.transition(k, DeliveryState.SENT, now=sent_at, event_id="$ev")
    assert row.state is DeliveryState.SENT
    assert row.event_id == "$ev"
    assert row.sent_at == sent_at
    assert row.attempts == 2
    assert row.last_error == "HTTP 502"  # the last error is kept for the record
    assert (await store.ledger.delivery_by_event("$ev")) == row


async def test_illegal_transitions_are_refused_and_change_nothing(store: Store) -> None:
    run_id = await make_run(store)
    k = key(run_id)
    await store.ledger.ensure_deliveries([k], T0, T0)
    with pytest.raises(IllegalTransition):
        await store.ledger.transition(k, DeliveryState.SENT, now=T0, event_id="$x")
    await store.ledger.transition(k, DeliveryState.SENDING, now=T0)
    await store.ledger.transition(k, DeliveryState.SENT, now=T0, event_id="$ev")
    for new in DeliveryState:
        with pytest.raises(IllegalTransition):
            await store.ledger.transition(k, new, now=T0, event_id="$other")
    row = await store.ledger.delivery(k)
    assert row is not None and row.state is DeliveryState.SENT and row.event_id == "$ev"


async def test_transition_of_a_missing_row(store: Store) -> None:
    run_id = await make_run(store)
    with pytest.raises(StoreError, match="no delivery row"):
        await store.ledger.transition(key(run_id), DeliveryState.SENDING, now=T0)


async def test_concurrent_transitions_only_one_wins(store: Store) -> None:
    """Two tasks racing to move the same PENDING row: exactly one succeeds."""
    run_id = await make_run(store)
    k = key(run_id)
    await store.ledger.ensure_deliveries([k], T0, T0)
    results = await asyncio.gather(
        *(
            store.ledger.transition(k, DeliveryState.SENDING, now=T0, count_attempt=True)
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, IllegalTransition) for r in results if isinstance(r, BaseException))
    row = await store.ledger.delivery(k)
    assert row is not None and row.attempts == 1


async def test_deliveries_filters(store: Store) -> None:
    run_id = await make_run(store, cities=("a",))
    await store.ledger.ensure_deliveries(
        [key(run_id, stage="call"), key(run_id, stage="go")], T0, T0
    )
    assert len(await store.ledger.deliveries(run_id)) == 2
    assert [d.key.stage_id for d in await store.ledger.deliveries(run_id, "a", "go")] == ["go"]
    assert await store.ledger.deliveries(run_id, "b") == []


async def test_state_survives_a_reopen(tmp_path: Path) -> None:
    """Each transition is committed before it returns (what a SIGKILL relies on)."""
    path = tmp_path / "blossom.db"
    s = await Store.open(path)
    run_id = await make_run(s)
    k = key(run_id)
    await s.ledger.ensure_deliveries([k], T0, T0)
    await s.ledger.transition(k, DeliveryState.SENDING, now=T0, count_attempt=True)
    # Read with a separate connection while the store is still open (no close, no
    # checkpoint): the committed row is visible.
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    (state,) = db.execute("SELECT state FROM deliveries").fetchone()
    db.close()
    assert state == "sending"
    await s.close()


# -- rooms, audit, meta ------------------------------------------------------------------


async def test_rooms(store: Store) -> None:
    await store.rooms.set("!a:x", "joined", now=T0, opted_in_by="@mod:x", note="listed")
    await store.rooms.set("!b:x", "declined", now=T0, note="stranger")
    assert await store.rooms.opted_in() == {"!a:x"}
    await store.rooms.set("!a:x", "left", now=T0, note="kick by @mod:x")
    assert await store.rooms.opted_in() == set()
    assert await store.rooms.membership("!a:x") == "left"
    assert await store.rooms.membership("!nope:x") is None
    # Re-joining later keeps who opted the room in first when no new inviter is given.
    await store.rooms.set("!a:x", "joined", now=T0)
    assert await store.rooms.opted_in() == {"!a:x"}


async def test_room_membership_is_checked(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.rooms.set("!a:x", "maybe", now=T0)


async def test_audit_newest_first(store: Store) -> None:
    for i in range(3):
        await store.audit.record(
            now=T0 + timedelta(seconds=i),
            room_id="!c:x",
            sender="@u:x",
            command=f"!arm s{i}",
            result="ok",
        )
    log = await audit_log(store, limit=2)
    assert [entry[3] for entry in log] == ["!arm s2", "!arm s1"]


def test_cli_exits_when_the_database_cannot_be_used(tmp_path: Path) -> None:
    """`blossom run` with a database from a newer Blossom prints one line and exits 1
    (it used to hang: the half-opened connection's worker thread kept it alive)."""
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "blossom.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    config = tmp_path / "config.yaml"
    config.write_text(
        "matrix: {homeserver: 'http://127.0.0.1:9', user_id: '@bot:localhost',"
        " password: pw}\n"
        "storage: {path: data}\n"
        "control: {rooms: ['!c:localhost']}\n"
        "scenarios: {dir: scenarios}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert "newer than this bot" in proc.stderr
