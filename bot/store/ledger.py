"""The ledger's rows: dispatches (one per run, city and stage) and deliveries (one
per dispatch, room and part). Every state change is guarded in its ``UPDATE`` by
the transition tables of :mod:`bot.ledger`, so a stale caller changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.ids import SYNTHETIC_LIKE
from bot.ledger import (
    DISPATCH_PENDING,
    DeliveryKey,
    DeliveryState,
    DispatchState,
    IllegalTransition,
    Part,
    check_transition,
    dispatch_may,
    dispatch_sources,
)
from bot.store.db import Database, StoreError, iso, parse_iso


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


@dataclass(frozen=True)
class PlannedDispatch:
    city_id: str
    stage_id: str
    stage_index: int
    due_at: datetime
    # SKIPPED for a past stage an earlier run already sent (not sent again).
    state: DispatchState = DispatchState.SCHEDULED
    note: str | None = None


def _in(states: Iterable[DispatchState]) -> str:
    return ", ".join(f"'{s}'" for s in sorted(states))


def _set_state_sql(new: DispatchState) -> str:
    """One dispatch's state (note and released_at kept unless given), only from a
    state the ledger's dispatch table allows."""
    return (
        "UPDATE dispatches SET state = ?, note = COALESCE(?, note),"
        " released_at = COALESCE(?, released_at)"
        f" WHERE run_id = ? AND city_id = ? AND stage_id = ? AND state IN"
        f" ({_in(dispatch_sources(new))})"
    )


# A new due time keeps the state: only pending states that may stay themselves.
_MOVABLE = _in(s for s in DISPATCH_PENDING if dispatch_may(s, s))

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


class Ledger:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- dispatches ------------------------------------------------------------------------

    async def add_planned(self, run_id: int, dispatches: Iterable[PlannedDispatch]) -> None:
        """A new run's dispatches (``Runs.create``, in its transaction)."""
        await self._db.write_many(
            "INSERT INTO dispatches (run_id, city_id, stage_id, stage_index, due_at,"
            " state, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (run_id, d.city_id, d.stage_id, d.stage_index, iso(d.due_at), d.state, d.note)
                for d in dispatches
            ),
        )

    async def add_dispatch(
        self,
        run_id: int,
        city_id: str,
        stage_id: str,
        stage_index: int,
        due_at: datetime,
        state: DispatchState,
    ) -> None:
        """A dispatch the scenario does not list (an abort, a correction); one that
        exists already is left as it is."""
        await self._db.write(
            "INSERT OR IGNORE INTO dispatches (run_id, city_id, stage_id, stage_index, due_at,"
            " state) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, city_id, stage_id, stage_index, iso(due_at), state),
        )

    async def dispatches(self, run_id: int) -> list[DispatchRow]:
        rows = await self._db.fetch(
            "SELECT * FROM dispatches WHERE run_id = ? ORDER BY due_at, stage_index, city_id",
            (run_id,),
        )
        return [_dispatch(r) for r in rows]

    async def dispatch(self, run_id: int, city_id: str, stage_id: str) -> DispatchRow | None:
        rows = await self._db.fetch(
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
        """Move one dispatch, if the transition table allows it from its state."""
        await self._db.write(
            _set_state_sql(state),
            (state, note, iso(released_at) if released_at else None, run_id, city_id, stage_id),
        )

    async def set_dispatch_states(
        self,
        run_id: int,
        changes: Sequence[tuple[str, str, DispatchState, str | None]],
    ) -> None:
        """(city, stage, state, note) for many dispatches, all in one transaction,
        each only if the transition table allows it from its state."""
        if not changes:
            return
        async with self._db.transaction():
            for state in {c[2] for c in changes}:
                await self._db.write_many(
                    _set_state_sql(state),
                    [
                        (s, note, None, run_id, city, stage)
                        for city, stage, s, note in changes
                        if s is state
                    ],
                )

    async def set_releasing(
        self, run_id: int, keys: Sequence[tuple[str, str]], *, released_at: datetime
    ) -> None:
        """(city, stage) dispatches -> RELEASING, in one transaction (the instant's
        critical path: one round trip)."""
        if not keys:
            return
        await self._db.write_many(
            _set_state_sql(DispatchState.RELEASING),
            [
                (DispatchState.RELEASING, None, iso(released_at), run_id, city, stage)
                for city, stage in keys
            ],
        )

    async def move_due(self, run_id: int, moves: Sequence[tuple[str, str, datetime]]) -> None:
        """(city, stage, new due time) for pending dispatches (``Steering.delay``)."""
        await self._db.write_many(
            "UPDATE dispatches SET due_at = ? WHERE run_id = ? AND city_id = ?"
            f" AND stage_id = ? AND state IN ({_MOVABLE})",
            [(iso(at), run_id, city, stage) for city, stage, at in moves],
        )

    async def mark_reported(self, run_id: int, city_id: str, stage_id: str) -> None:
        await self._db.write(
            "UPDATE dispatches SET reported = 1 WHERE run_id = ? AND city_id = ? AND stage_id = ?",
            (run_id, city_id, stage_id),
        )

    # -- deliveries ------------------------------------------------------------------------

    async def ensure_deliveries(
        self, keys: Iterable[DeliveryKey], due_at: datetime, now: datetime
    ) -> None:
        """Create PENDING rows for keys that have none; existing rows are untouched."""
        await self._db.write_many(
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
        rows = await self._db.fetch(sql + " ORDER BY room_id, part DESC", params)
        return [_delivery(r) for r in rows]

    async def delivery(self, key: DeliveryKey) -> DeliveryRow | None:
        rows = await self._db.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ? AND city_id = ?"
            " AND stage_id = ? AND room_id = ? AND part = ?",
            (key.run_id, key.city_id, key.stage_id, key.room_id, str(key.part)),
        )
        return _delivery(rows[0]) if rows else None

    async def delivery_by_event(self, event_id: str) -> DeliveryRow | None:
        rows = await self._db.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE event_id = ?", (event_id,)
        )
        return _delivery(rows[0]) if rows else None

    async def repoint(self, event_id: str, kept: str) -> bool:
        """The delivery recorded as ``event_id`` now names ``kept`` (its earlier
        copy, when the later was redacted as a double): edits of a ``!redirect``
        must reach the copy the room still shows. False if none was recorded."""
        changed = await self._db.write(
            "UPDATE deliveries SET event_id = ? WHERE event_id = ?", (kept, event_id)
        )
        return changed > 0

    async def latest_text_delivery(self, run_id: int, room_id: str) -> DeliveryRow | None:
        """The run's latest stage message sent to a room (synthetic stages excluded)."""
        rows = await self._db.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ? AND room_id = ?"
            " AND part = 'text' AND state = 'sent' AND stage_id NOT LIKE ?"
            " ORDER BY sent_at DESC LIMIT 1",
            (run_id, room_id, SYNTHETIC_LIKE),
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
        changed = await self._db.write(
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
