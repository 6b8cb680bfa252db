"""Async SQLite store (aiosqlite) for runs, dispatches, deliveries, rooms and audit.

One connection, serialised by aiosqlite's worker thread. Every state change is
its own committed transaction, written *before* the action it records is taken
(a delivery is SENDING before its request leaves), so a crash at any point
leaves a row that says what to check.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from bot.ids import SYNTHETIC_LIKE
from bot.ledger import (
    DeliveryKey,
    DeliveryState,
    DispatchState,
    IllegalTransition,
    Part,
    check_transition,
    dispatch_sources,
)
from bot.store.delayed import DelayedStore
from bot.store.migrations import MIGRATIONS


def _set_dispatch_state(new: DispatchState) -> str:
    """One dispatch's state (note and released_at kept unless given), only from a
    state the ledger's dispatch table allows (bot.ledger): set_dispatch_state and,
    for many at once, set_dispatches_releasing."""
    sources = ", ".join(f"'{s}'" for s in sorted(dispatch_sources(new)))
    return (
        "UPDATE dispatches SET state = ?, note = COALESCE(?, note),"
        " released_at = COALESCE(?, released_at)"
        f" WHERE run_id = ? AND city_id = ? AND stage_id = ? AND state IN ({sources})"
    )


class StoreError(Exception):
    """The database cannot be used (locked, full, corrupt). Never carries secrets."""


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class RunRow:
    id: int
    scenario_id: str
    source_path: str
    source_sha256: str
    state: str
    armed_by: str
    armed_at: datetime
    control_room: str
    drill_room: str | None = None
    drill_speed: float | None = None
    # The event id of the command that armed it ("" before run keys): bot.ids.
    run_key: str = ""


@dataclass(frozen=True)
class DispatchRow:
    run_id: int
    city_id: str
    stage_id: str
    stage_index: int
    due_at: datetime
    state: DispatchState
    note: str | None
    released_at: datetime | None
    reported: bool


@dataclass(frozen=True)
class DeliveryRow:
    key: DeliveryKey
    state: DeliveryState
    txn_id: str
    event_id: str | None
    attempts: int
    last_error: str | None
    due_at: datetime
    sent_at: datetime | None


_DELIVERY_COLUMNS = (
    "run_id, scenario_id, city_id, stage_id, room_id, part, state, txn_id, event_id,"
    " attempts, last_error, due_at, sent_at, run_key"
)


def _delivery(row: sqlite3.Row) -> DeliveryRow:
    return DeliveryRow(
        key=DeliveryKey(
            row["run_id"],
            row["scenario_id"],
            row["city_id"],
            row["stage_id"],
            row["room_id"],
            Part(row["part"]),
            row["run_key"],
        ),
        state=DeliveryState(row["state"]),
        txn_id=row["txn_id"],
        event_id=row["event_id"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        due_at=parse_iso(row["due_at"]),
        sent_at=parse_iso(row["sent_at"]) if row["sent_at"] else None,
    )


def _dispatch(row: sqlite3.Row) -> DispatchRow:
    return DispatchRow(
        run_id=row["run_id"],
        city_id=row["city_id"],
        stage_id=row["stage_id"],
        stage_index=row["stage_index"],
        due_at=parse_iso(row["due_at"]),
        state=DispatchState(row["state"]),
        note=row["note"],
        released_at=parse_iso(row["released_at"]) if row["released_at"] else None,
        reported=bool(row["reported"]),
    )


def _run(row: sqlite3.Row) -> RunRow:
    return RunRow(
        id=row["id"],
        scenario_id=row["scenario_id"],
        source_path=row["source_path"],
        source_sha256=row["source_sha256"],
        state=row["state"],
        armed_by=row["armed_by"],
        armed_at=parse_iso(row["armed_at"]),
        control_room=row["control_room"],
        drill_room=row["drill_room"],
        drill_speed=row["drill_speed"],
        run_key=row["run_key"],
    )


@dataclass(frozen=True)
class PlannedDispatch:
    city_id: str
    stage_id: str
    stage_index: int
    due_at: datetime
    # SKIPPED for a past stage an earlier run already sent (not sent again).
    state: DispatchState = DispatchState.SCHEDULED
    note: str | None = None


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db: aiosqlite.Connection | None = None
        try:
            db = await aiosqlite.connect(path, isolation_level=None, timeout=5.0)
            db.row_factory = sqlite3.Row
            # WAL + synchronous=NORMAL: a commit survives a crash of this process
            # (what SIGKILL tests); after a power loss the last commits may roll
            # back, which the ledger tolerates (SENDING rows are checked, the txn
            # id dedups resends).
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten, so !purge leaves no trace in free pages.
            await db.execute("PRAGMA secure_delete=ON")
            store = cls(db)
            await store._migrate()
        except BaseException as err:
            # aiosqlite's worker thread is not a daemon: a connection left open
            # here would keep the process from ever exiting.
            if db is not None:
                with contextlib.suppress(Exception):
                    await db.close()
            if isinstance(err, sqlite3.Error):
                raise StoreError(f"cannot open the database {path}: {err}") from None
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    def delayed(self) -> DelayedStore:
        """The dead-man's switch's table, on this database (bot.store.delayed)."""
        return DelayedStore(self._db)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database is at schema version {version}, newer than this bot "
                f"({len(MIGRATIONS)}); upgrade Blossom"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first; wrap explicitly so a migration is atomic.
            await self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cur = await self._db.execute(sql, params)
            count = cur.rowcount
            await cur.close()
            return count
        except sqlite3.Error as err:
            raise StoreError(f"database write failed: {err}") from None

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            async with self._db.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as err:
            raise StoreError(f"database read failed: {err}") from None

    # -- meta ----------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- runs ----------------------------------------------------------------------

    async def create_run(
        self,
        *,
        scenario_id: str,
        source_path: str,
        source_sha256: str,
        armed_by: str,
        control_room: str,
        now: datetime,
        dispatches: Iterable[PlannedDispatch],
        drill_room: str | None = None,
        drill_speed: float | None = None,
        run_key: str = "",
    ) -> int:
        """Create an armed run and its dispatches atomically. Raises StoreError
        if the scenario already has an armed run, or a run has this key."""
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = await self._db.execute(
                    "INSERT INTO runs (scenario_id, source_path, source_sha256, state,"
                    " armed_by, armed_at, control_room, drill_room, drill_speed, run_key)"
                    " VALUES (?, ?, ?, 'armed', ?, ?, ?, ?, ?, ?)",
                    (
                        scenario_id,
                        source_path,
                        source_sha256,
                        armed_by,
                        iso(now),
                        control_room,
                        drill_room,
                        drill_speed,
                        run_key,
                    ),
                )
                run_id = cur.lastrowid
                assert run_id is not None
                await self._db.executemany(
                    "INSERT INTO dispatches (run_id, city_id, stage_id, stage_index, due_at,"
                    " state, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            run_id,
                            d.city_id,
                            d.stage_id,
                            d.stage_index,
                            iso(d.due_at),
                            d.state,
                            d.note,
                        )
                        for d in dispatches
                    ],
                )
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise StoreError(
                f"scenario {scenario_id} is already armed, or this command armed a run already"
            ) from None
        except sqlite3.Error as err:
            raise StoreError(f"database write failed: {err}") from None
        return run_id

    async def armed_runs(self) -> list[RunRow]:
        rows = await self._fetchall("SELECT * FROM runs WHERE state = 'armed' ORDER BY id")
        return [_run(r) for r in rows]

    async def armed_run(self, scenario_id: str) -> RunRow | None:
        rows = await self._fetchall(
            "SELECT * FROM runs WHERE state = 'armed' AND scenario_id = ?", (scenario_id,)
        )
        return _run(rows[0]) if rows else None

    async def runs_of(self, scenario_id: str) -> list[RunRow]:
        rows = await self._fetchall(
            "SELECT * FROM runs WHERE scenario_id = ? ORDER BY id", (scenario_id,)
        )
        return [_run(r) for r in rows]

    async def sent_stages(self, scenario_id: str) -> set[tuple[str, str]]:
        """(city, stage) that any earlier run of the scenario released, wholly or
        in part (synthetic stages excluded): what re-arming must not send again."""
        rows = await self._fetchall(
            "SELECT DISTINCT d.city_id, d.stage_id FROM dispatches d"
            " JOIN runs r ON r.id = d.run_id WHERE r.scenario_id = ?"
            " AND d.stage_id NOT LIKE ? AND (d.state IN ('released', 'releasing')"
            " OR EXISTS (SELECT 1 FROM deliveries v WHERE v.run_id = d.run_id"
            " AND v.city_id = d.city_id AND v.stage_id = d.stage_id"
            " AND v.state IN ('sent', 'sending')))",
            (scenario_id, SYNTHETIC_LIKE),
        )
        return {(str(r["city_id"]), str(r["stage_id"])) for r in rows}

    async def end_run(self, run_id: int, state: str, now: datetime) -> None:
        await self._write(
            "UPDATE runs SET state = ?, ended_at = ? WHERE id = ? AND state = 'armed'",
            (state, iso(now), run_id),
        )

    async def delete_runs(self, scenario_id: str) -> int:
        """Delete every non-armed run of a scenario with its dispatches and deliveries."""
        return await self._write(
            "DELETE FROM runs WHERE scenario_id = ? AND state != 'armed'", (scenario_id,)
        )

    # -- dispatches ----------------------------------------------------------------

    async def dispatches(self, run_id: int) -> list[DispatchRow]:
        rows = await self._fetchall(
            "SELECT * FROM dispatches WHERE run_id = ? ORDER BY due_at, stage_index, city_id",
            (run_id,),
        )
        return [_dispatch(r) for r in rows]

    async def dispatch(self, run_id: int, city_id: str, stage_id: str) -> DispatchRow | None:
        rows = await self._fetchall(
            "SELECT * FROM dispatches WHERE run_id = ? AND city_id = ? AND stage_id = ?",
            (run_id, city_id, stage_id),
        )
        return _dispatch(rows[0]) if rows else None

    async def set_dispatch_state(
        self,
        run_id: int,
        city_id: str,
        stage_id: str,
        state: DispatchState,
        *,
        note: str | None = None,
        released_at: datetime | None = None,
    ) -> None:
        await self._write(
            _set_dispatch_state(state),
            (state, note, iso(released_at) if released_at else None, run_id, city_id, stage_id),
        )

    async def set_dispatch_states(
        self,
        run_id: int,
        changes: Sequence[tuple[str, str, DispatchState, str | None]],
    ) -> None:
        """(city, stage, state, note) for many dispatches in one round trip, each
        only from a state the ledger allows (a done dispatch stays done)."""
        if not changes:
            return
        try:
            for state in {c[2] for c in changes}:
                await self._db.executemany(
                    _set_dispatch_state(state),
                    [
                        (s, note, None, run_id, city, stage)
                        for city, stage, s, note in changes
                        if s is state
                    ],
                )
        except sqlite3.Error as err:
            raise StoreError(f"database write failed: {err}") from None

    async def set_dispatches_releasing(
        self, run_id: int, keys: Sequence[tuple[str, str]], *, released_at: datetime
    ) -> None:
        """(city, stage) dispatches -> RELEASING, in one round trip (the instant's
        critical path). Each row commits on its own: cities are independent."""
        if not keys:
            return
        try:
            await self._db.executemany(
                _set_dispatch_state(DispatchState.RELEASING),
                [
                    (DispatchState.RELEASING, None, iso(released_at), run_id, city, stage)
                    for city, stage in keys
                ],
            )
        except sqlite3.Error as err:
            raise StoreError(f"database write failed: {err}") from None

    async def delay_dispatches(
        self,
        run_id: int,
        moves: Sequence[tuple[str, str, datetime]],
        cities: Sequence[str],
        seconds: float,
    ) -> None:
        """!delay in one transaction: each (city, stage)'s new due time and the
        recorded delay of each city ({time} renders from it). A crash between the
        two used to leave texts out of step with the instants."""
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.executemany(
                    "UPDATE dispatches SET due_at = ? WHERE run_id = ? AND city_id = ?"
                    " AND stage_id = ? AND state IN ('scheduled', 'held')",
                    [(iso(at), run_id, city, stage) for city, stage, at in moves],
                )
                await self._db.executemany(
                    "INSERT INTO delays (run_id, city_id, seconds) VALUES (?, ?, ?)"
                    " ON CONFLICT (run_id, city_id)"
                    " DO UPDATE SET seconds = seconds + excluded.seconds",
                    [(run_id, city, seconds) for city in cities],
                )
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise StoreError(f"database write failed: {err}") from None

    async def mark_reported(self, run_id: int, city_id: str, stage_id: str) -> None:
        await self._write(
            "UPDATE dispatches SET reported = 1 WHERE run_id = ? AND city_id = ? AND stage_id = ?",
            (run_id, city_id, stage_id),
        )

    # -- deliveries ----------------------------------------------------------------

    async def ensure_deliveries(
        self, keys: Iterable[DeliveryKey], due_at: datetime, now: datetime
    ) -> None:
        """Create PENDING rows for keys that have none; existing rows are untouched."""
        try:
            await self._db.executemany(
                "INSERT OR IGNORE INTO deliveries (run_id, scenario_id, city_id, stage_id,"
                " room_id, part, state, txn_id, due_at, updated_at, run_key)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                [
                    (
                        k.run_id,
                        k.scenario_id,
                        k.city_id,
                        k.stage_id,
                        k.room_id,
                        str(k.part),
                        k.txn_id(),
                        iso(due_at),
                        iso(now),
                        k.run_key,
                    )
                    for k in keys
                ],
            )
        except sqlite3.Error as err:
            raise StoreError(f"database write failed: {err}") from None

    async def deliveries(
        self, run_id: int, city_id: str | None = None, stage_id: str | None = None
    ) -> list[DeliveryRow]:
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ?"
        params: list[Any] = [run_id]
        if city_id is not None:
            sql += " AND city_id = ?"
            params.append(city_id)
        if stage_id is not None:
            sql += " AND stage_id = ?"
            params.append(stage_id)
        rows = await self._fetchall(sql + " ORDER BY room_id, part DESC", params)
        return [_delivery(r) for r in rows]

    async def delivery(self, key: DeliveryKey) -> DeliveryRow | None:
        rows = await self._fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ? AND city_id = ?"
            " AND stage_id = ? AND room_id = ? AND part = ?",
            (key.run_id, key.city_id, key.stage_id, key.room_id, str(key.part)),
        )
        return _delivery(rows[0]) if rows else None

    async def transition(
        self,
        key: DeliveryKey,
        new: DeliveryState,
        *,
        now: datetime,
        event_id: str | None = None,
        error: str | None = None,
        count_attempt: bool = False,
    ) -> DeliveryRow:
        """Move one delivery to ``new`` if the ledger's rules allow it.

        The check and the write are one statement (``WHERE state = old``), so two
        tasks can never both move the same row out of a state.
        """
        current = await self.delivery(key)
        if current is None:
            raise StoreError(f"no delivery row for {key.room_id}/{key.stage_id}/{key.part}")
        moved = await self.advance(
            key,
            current.state,
            new,
            now=now,
            event_id=event_id,
            error=error,
            count_attempt=count_attempt,
        )
        if not moved:
            raise IllegalTransition(current.state, new)
        updated = await self.delivery(key)
        assert updated is not None
        return updated

    async def advance(
        self,
        key: DeliveryKey,
        old: DeliveryState,
        new: DeliveryState,
        *,
        now: datetime,
        event_id: str | None = None,
        error: str | None = None,
        count_attempt: bool = False,
    ) -> bool:
        """Move one delivery from ``old`` to ``new`` in a single statement, for a
        caller that already knows the row's state (the dispatcher's hot path: no
        read before or after). Returns False, writing nothing, if the row is no
        longer in ``old``. Raises IllegalTransition if the ledger forbids
        ``old -> new``."""
        check_transition(old, new)
        changed = await self._write(
            "UPDATE deliveries SET state = ?, event_id = COALESCE(?, event_id),"
            " last_error = CASE WHEN ? IS NULL THEN last_error ELSE ? END,"
            " attempts = attempts + ?, sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END,"
            " updated_at = ?"
            " WHERE run_id = ? AND city_id = ? AND stage_id = ? AND room_id = ? AND part = ?"
            " AND state = ?",
            (
                new,
                event_id,
                error,
                error,
                1 if count_attempt else 0,
                new,
                iso(now),
                iso(now),
                key.run_id,
                key.city_id,
                key.stage_id,
                key.room_id,
                str(key.part),
                old,
            ),
        )
        return changed == 1

    # -- rooms ---------------------------------------------------------------------

    async def set_room(
        self,
        room_id: str,
        membership: str,
        *,
        now: datetime,
        opted_in_by: str | None = None,
        note: str | None = None,
    ) -> None:
        await self._write(
            "INSERT INTO rooms (room_id, membership, opted_in_by, note, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET"
            " membership = excluded.membership,"
            " opted_in_by = COALESCE(excluded.opted_in_by, rooms.opted_in_by),"
            " note = excluded.note, updated_at = excluded.updated_at",
            (room_id, membership, opted_in_by, note, iso(now)),
        )

    async def opted_in_rooms(self) -> set[str]:
        rows = await self._fetchall("SELECT room_id FROM rooms WHERE membership = 'joined'")
        return {str(r["room_id"]) for r in rows}

    async def room_membership(self, room_id: str) -> str | None:
        rows = await self._fetchall("SELECT membership FROM rooms WHERE room_id = ?", (room_id,))
        return str(rows[0]["membership"]) if rows else None

    async def set_successor(
        self, room_id: str, successor: str, *, upgraded_by: str, now: datetime
    ) -> None:
        """Record that ``room_id`` was upgraded (m.room.tombstone) to ``successor``."""
        await self._write(
            "INSERT INTO room_successors (room_id, successor, upgraded_by, at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET"
            " successor = excluded.successor, upgraded_by = excluded.upgraded_by,"
            " at = excluded.at",
            (room_id, successor, upgraded_by, iso(now)),
        )

    async def successors(self) -> dict[str, str]:
        """Upgraded room -> the room that replaces it."""
        rows = await self._fetchall("SELECT room_id, successor FROM room_successors")
        return {str(r["room_id"]): str(r["successor"]) for r in rows}

    async def predecessors_of(self, room_id: str) -> list[str]:
        """The rooms whose tombstone names ``room_id`` as their replacement."""
        rows = await self._fetchall(
            "SELECT room_id FROM room_successors WHERE successor = ? ORDER BY at", (room_id,)
        )
        return [str(r["room_id"]) for r in rows]

    async def opted_in_by(self, room_id: str) -> str | None:
        rows = await self._fetchall("SELECT opted_in_by FROM rooms WHERE room_id = ?", (room_id,))
        return str(rows[0]["opted_in_by"]) if rows and rows[0]["opted_in_by"] else None

    # -- audit ---------------------------------------------------------------------

    async def audit(
        self, *, now: datetime, room_id: str, sender: str, command: str, result: str
    ) -> None:
        await self._write(
            "INSERT INTO audit (at, room_id, sender, command, result) VALUES (?, ?, ?, ?, ?)",
            (iso(now), room_id, sender, command, result),
        )

    async def audit_log(self, limit: int = 100) -> list[tuple[str, str, str, str, str]]:
        rows = await self._fetchall(
            "SELECT at, room_id, sender, command, result FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [(r["at"], r["room_id"], r["sender"], r["command"], r["result"]) for r in rows]

    # -- steering: holds, delays, redirects -------------------------------------------

    async def set_hold(self, run_id: int, city_id: str, held: bool) -> None:
        if held:
            await self._write(
                "INSERT OR IGNORE INTO holds (run_id, city_id) VALUES (?, ?)", (run_id, city_id)
            )
        else:
            await self._write(
                "DELETE FROM holds WHERE run_id = ? AND city_id = ?", (run_id, city_id)
            )

    async def held_cities(self, run_id: int) -> set[str]:
        rows = await self._fetchall("SELECT city_id FROM holds WHERE run_id = ?", (run_id,))
        return {str(r["city_id"]) for r in rows}

    async def delays(self, run_id: int) -> dict[str, float]:
        rows = await self._fetchall(
            "SELECT city_id, seconds FROM delays WHERE run_id = ?", (run_id,)
        )
        return {str(r["city_id"]): float(r["seconds"]) for r in rows}

    async def set_redirect(
        self,
        run_id: int,
        city_id: str,
        place_id: str,
        name: str,
        geo: tuple[float, float] | None,
    ) -> int:
        """Record a redirect; returns its revision (1 for the first of that place)."""
        lat, lon = geo if geo is not None else (None, None)
        await self._write(
            "INSERT INTO redirects (run_id, city_id, place_id, name, lat, lon)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, city_id, place_id) DO UPDATE SET"
            " name = excluded.name, lat = excluded.lat, lon = excluded.lon,"
            " revision = redirects.revision + 1",
            (run_id, city_id, place_id, name, lat, lon),
        )
        rows = await self._fetchall(
            "SELECT revision FROM redirects WHERE run_id = ? AND city_id = ? AND place_id = ?",
            (run_id, city_id, place_id),
        )
        return int(rows[0]["revision"])

    async def redirects(
        self, run_id: int
    ) -> list[tuple[str, str, str, tuple[float, float] | None]]:
        rows = await self._fetchall(
            "SELECT city_id, place_id, name, lat, lon FROM redirects WHERE run_id = ?",
            (run_id,),
        )
        return [
            (
                str(r["city_id"]),
                str(r["place_id"]),
                str(r["name"]),
                (float(r["lat"]), float(r["lon"])) if r["lat"] is not None else None,
            )
            for r in rows
        ]

    async def add_dispatch(
        self,
        run_id: int,
        city_id: str,
        stage_id: str,
        stage_index: int,
        due_at: datetime,
        state: DispatchState,
    ) -> None:
        """A dispatch the scenario does not list (an abort, a correction)."""
        await self._write(
            "INSERT OR IGNORE INTO dispatches (run_id, city_id, stage_id, stage_index, due_at,"
            " state) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, city_id, stage_id, stage_index, iso(due_at), state),
        )

    # -- check-ins -------------------------------------------------------------------

    async def add_checkin(
        self, run_id: int, city_id: str, stage_id: str, user_id: str, *, now: datetime, via: str
    ) -> bool:
        """Record a check-in; False if this person already checked in for this stage."""
        changed = await self._write(
            "INSERT OR IGNORE INTO checkins (run_id, city_id, stage_id, user_id, at, via)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, city_id, stage_id, user_id, iso(now), via),
        )
        return changed == 1

    async def checkin_count(self, run_id: int, city_id: str, stage_id: str) -> int:
        rows = await self._fetchall(
            "SELECT COUNT(*) AS n FROM checkins WHERE run_id = ? AND city_id = ? AND stage_id = ?",
            (run_id, city_id, stage_id),
        )
        return int(rows[0]["n"])

    async def checkin_counts(self, run_id: int) -> dict[tuple[str, str], int]:
        rows = await self._fetchall(
            "SELECT city_id, stage_id, COUNT(*) AS n FROM checkins WHERE run_id = ?"
            " GROUP BY city_id, stage_id",
            (run_id,),
        )
        return {(str(r["city_id"]), str(r["stage_id"])): int(r["n"]) for r in rows}

    async def delivery_by_event(self, event_id: str) -> DeliveryRow | None:
        rows = await self._fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE event_id = ?", (event_id,)
        )
        return _delivery(rows[0]) if rows else None

    async def latest_text_delivery(self, run_id: int, room_id: str) -> DeliveryRow | None:
        """The run's latest stage message sent to a room (synthetic stages excluded)."""
        rows = await self._fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ? AND room_id = ?"
            " AND part = 'text' AND state = 'sent' AND stage_id NOT LIKE ?"
            " ORDER BY sent_at DESC LIMIT 1",
            (run_id, room_id, SYNTHETIC_LIKE),
        )
        return _delivery(rows[0]) if rows else None

    # -- private (direct message) participants ----------------------------------------

    async def add_direct(
        self, scenario_id: str, city_id: str, user_id: str, room_id: str, *, now: datetime
    ) -> None:
        await self._write(
            "INSERT INTO direct_participants (scenario_id, city_id, user_id, room_id, joined_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scenario_id, city_id, user_id)"
            " DO UPDATE SET room_id = excluded.room_id",
            (scenario_id, city_id, user_id, room_id, iso(now)),
        )

    async def remove_direct_room(self, room_id: str) -> int:
        return await self._write("DELETE FROM direct_participants WHERE room_id = ?", (room_id,))

    async def direct_rooms(self, scenario_id: str, city_id: str) -> list[str]:
        rows = await self._fetchall(
            "SELECT room_id FROM direct_participants WHERE scenario_id = ? AND city_id = ?"
            " ORDER BY joined_at",
            (scenario_id, city_id),
        )
        return [str(r["room_id"]) for r in rows]

    async def direct_of_room(self, room_id: str) -> list[tuple[str, str, str]]:
        """(scenario_id, city_id, user_id) registered through this direct chat."""
        rows = await self._fetchall(
            "SELECT scenario_id, city_id, user_id FROM direct_participants WHERE room_id = ?",
            (room_id,),
        )
        return [(str(r["scenario_id"]), str(r["city_id"]), str(r["user_id"])) for r in rows]

    # -- purge -------------------------------------------------------------------------

    async def purge(self, scenario_id: str) -> int:
        """Delete every non-armed run of a scenario (ledger, check-ins, holds, delays,
        redirects) and its private participants; then compact, so nothing of it
        stays in the file or its WAL. Returns the number of runs deleted."""
        runs = await self._write(
            "DELETE FROM runs WHERE scenario_id = ? AND state != 'armed'", (scenario_id,)
        )
        await self._write("DELETE FROM direct_participants WHERE scenario_id = ?", (scenario_id,))
        # Audit rows that name it (commands keep their ids as space-separated words).
        await self._write(
            "DELETE FROM audit WHERE (' ' || command || ' ') LIKE ('% ' || ? || ' %')",
            (scenario_id,),
        )
        try:
            await self._db.execute("VACUUM")
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            raise StoreError(f"database compaction failed: {err}") from None
        return runs
