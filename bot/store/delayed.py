"""The dead-man's switch's table: one row per delivery the homeserver holds (or is
to hold) as a delayed event, keyed like the delivery (run, city, stage, room, part).

The delay id is the only copy of a secret (docs/crew.md, "The switch"): it is
written when the server answers, read only to cancel or fire the event, and
cleared as soon as the event can no longer fire (cancelled, sent, failed). Rows go
with their run (``ON DELETE CASCADE``), so ``Store.purge`` removes them; before a
purge, :meth:`DelayedStore.live_of_scenario` names the ones to cancel first.

Every state change is guarded by the transition table of :mod:`bot.failsafe.plan`
in the ``UPDATE`` itself, so a stale caller changes nothing (and is told).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.failsafe.plan import (
    LIVE,
    DelayedItem,
    DelayedRow,
    DelayedState,
    delayed_sources,
    delayed_txn_id,
)
from bot.failsafe.secret import DelayId
from bot.ledger import DeliveryKey, Part
from bot.store.db import Database, StoreError


class DelayedStoreError(StoreError):
    """A database error or a refused transition (the message holds no delay id)."""


def _iso(instant: datetime) -> str:
    return instant.isoformat()


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


_COLUMNS = (
    "d.run_id, r.scenario_id, d.city_id, d.stage_id, d.room_id, d.part, d.generation,"
    " d.state, d.instant, d.due_at, d.schedule_at, d.txn_id, r.run_key"
)
_FROM = " FROM delayed_events d JOIN runs r ON r.id = d.run_id"
_WHERE_KEY = " WHERE run_id = ? AND city_id = ? AND stage_id = ? AND room_id = ? AND part = ?"


@dataclass(frozen=True)
class StoredDelayed:
    """A row as the shell needs it: the pure view plus when to schedule and the
    txn id of its current generation (never the delay id: :meth:`delay_id`)."""

    row: DelayedRow
    schedule_at: datetime
    txn_id: str


def _key_params(key: DeliveryKey) -> tuple[Any, ...]:
    return (key.run_id, key.city_id, key.stage_id, key.room_id, str(key.part))


def _stored(r: sqlite3.Row) -> StoredDelayed:
    key = DeliveryKey(
        r["run_id"],
        r["scenario_id"],
        r["city_id"],
        r["stage_id"],
        r["room_id"],
        Part(r["part"]),
        r["run_key"],  # the run's identity (bot.ids): in the tag the switch sends
    )
    row = DelayedRow(
        key=key,
        generation=int(r["generation"]),
        state=DelayedState(r["state"]),
        due=_parse(r["due_at"]),
        instant=_parse(r["instant"]),
    )
    return StoredDelayed(row, _parse(r["schedule_at"]), str(r["txn_id"]))


def _sources(new: DelayedState) -> str:
    return ", ".join(f"'{s}'" for s in sorted(delayed_sources(new)))


class DelayedStore:
    """The ``delayed_events`` table over the bot's database (``Store.delayed``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return await self._db.write(sql, params)
        except StoreError as err:
            raise DelayedStoreError(str(err)) from None

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return await self._db.fetch(sql, params)
        except StoreError as err:
            raise DelayedStoreError(str(err)) from None

    # -- writing -------------------------------------------------------------------------

    async def add(self, items: Iterable[DelayedItem], now: datetime) -> int:
        """Record a plan's items as PENDING (generation 1), all or none."""
        rows = [
            (
                *_key_params(i.key),
                delayed_txn_id(i.key, 1),
                _iso(i.instant),
                _iso(i.due),
                _iso(i.schedule_at),
                _iso(now),
            )
            for i in items
        ]
        try:
            await self._db.write_many(
                "INSERT INTO delayed_events (run_id, city_id, stage_id, room_id, part,"
                " generation, txn_id, instant, due_at, schedule_at, state, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, 'pending', ?)",
                rows,
            )
        except StoreError as err:
            raise DelayedStoreError(str(err)) from None
        return len(rows)

    async def begin_scheduling(self, key: DeliveryKey, now: datetime) -> str:
        """PENDING -> SCHEDULING (a request may be in flight from here on); the txn
        id to send it with. A row already SCHEDULING (a crash mid-request) is
        returned as is: retry with the same txn id."""
        await self._move(key, DelayedState.SCHEDULING, now, allow_same=True)
        rows = await self._fetch("SELECT txn_id FROM delayed_events" + _WHERE_KEY, _key_params(key))
        return str(rows[0]["txn_id"])

    async def scheduled(self, key: DeliveryKey, delay_id: DelayId, now: datetime) -> None:
        """SCHEDULING -> SCHEDULED, keeping the server's delay id."""
        await self._move(key, DelayedState.SCHEDULED, now, delay_id=delay_id.reveal())

    async def mark(
        self, key: DeliveryKey, state: DelayedState, now: datetime, *, note: str | None = None
    ) -> None:
        """Any other allowed move. Leaving the live states forgets the delay id."""
        clear = state not in LIVE
        await self._move(key, state, now, note=note, clear_id=clear)

    async def replace(self, row: DelayedRow, schedule_at: datetime, now: datetime) -> StoredDelayed:
        """A cancelled or failed row becomes PENDING again as ``row`` says (its
        next generation, new due and instant): a new txn id, no delay id."""
        stored = await self.get(row.key)
        if stored is None:
            raise DelayedStoreError("no delayed event is recorded for this delivery")
        if row.generation <= stored.row.generation:
            raise DelayedStoreError("a replacement needs a later generation")
        count = await self._write(
            "UPDATE delayed_events SET generation = ?, txn_id = ?, delay_id = NULL,"
            " instant = ?, due_at = ?, schedule_at = ?, state = 'pending', note = NULL,"
            " updated_at = ?" + _WHERE_KEY + f" AND state IN ({_sources(DelayedState.PENDING)})",
            (
                row.generation,
                delayed_txn_id(row.key, row.generation),
                _iso(row.instant),
                _iso(row.due),
                _iso(schedule_at),
                _iso(now),
                *_key_params(row.key),
            ),
        )
        if count != 1:
            raise DelayedStoreError(
                f"cannot replace a delayed event that is {stored.row.state} (cancel it first)"
            )
        replaced = await self.get(row.key)
        assert replaced is not None
        return replaced

    async def _move(
        self,
        key: DeliveryKey,
        new: DelayedState,
        now: datetime,
        *,
        delay_id: str | None = None,
        note: str | None = None,
        clear_id: bool = False,
        allow_same: bool = False,
    ) -> None:
        sources = _sources(new) + (f", '{new}'" if allow_same else "")
        id_sql = "NULL" if clear_id else "COALESCE(?, delay_id)"
        params: list[Any] = [new.value]
        if not clear_id:
            params.append(delay_id)
        params += [note, _iso(now), *_key_params(key)]
        count = await self._write(
            f"UPDATE delayed_events SET state = ?, delay_id = {id_sql},"
            " note = COALESCE(?, note), updated_at = ?" + _WHERE_KEY + f" AND state IN ({sources})",
            params,
        )
        if count != 1:
            current = await self.get(key)
            was = current.row.state if current else "not recorded"
            raise DelayedStoreError(f"a delayed event cannot go from {was} to {new}")

    # -- reading -------------------------------------------------------------------------

    async def get(self, key: DeliveryKey) -> StoredDelayed | None:
        rows = await self._fetch(
            f"SELECT {_COLUMNS}{_FROM} WHERE d.run_id = ? AND d.city_id = ? AND d.stage_id = ?"
            " AND d.room_id = ? AND d.part = ?",
            _key_params(key),
        )
        return _stored(rows[0]) if rows else None

    async def rows(self, run_id: int) -> list[StoredDelayed]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS}{_FROM} WHERE d.run_id = ?"
            " ORDER BY d.due_at, d.city_id, d.stage_id, d.room_id, d.part",
            (run_id,),
        )
        return [_stored(r) for r in rows]

    async def delay_id(self, key: DeliveryKey) -> DelayId | None:
        """The secret, for a cancel or a send; None unless the event may still fire."""
        rows = await self._fetch(
            "SELECT delay_id FROM delayed_events" + _WHERE_KEY + " AND delay_id IS NOT NULL",
            _key_params(key),
        )
        return DelayId(str(rows[0]["delay_id"])) if rows else None

    async def known_ids(self) -> set[DelayId]:
        """Every delay id the store holds (to tell this bot's orphans on the server)."""
        rows = await self._fetch("SELECT delay_id FROM delayed_events WHERE delay_id IS NOT NULL")
        return {DelayId(str(r["delay_id"])) for r in rows}

    async def due_to_schedule(self, now: datetime) -> list[StoredDelayed]:
        """PENDING rows of armed runs whose time to be scheduled has come, and
        SCHEDULING ones (a crash mid-request), soonest due first."""
        rows = await self._fetch(
            f"SELECT {_COLUMNS}{_FROM} WHERE r.state = 'armed' AND ("
            " (d.state = 'pending' AND d.schedule_at <= ?) OR d.state = 'scheduling')"
            " ORDER BY d.due_at, d.city_id, d.stage_id, d.room_id, d.part",
            (_iso(now),),
        )
        return [_stored(r) for r in rows]

    async def live_counts(self, run_id: int) -> dict[tuple[str, str], int]:
        """(city, stage) -> how many delayed events may still fire (for ``!status``
        and ``!crew``: counts, never ids)."""
        rows = await self._fetch(
            "SELECT city_id, stage_id, COUNT(*) AS n FROM delayed_events WHERE run_id = ?"
            " AND state IN ('pending', 'scheduling', 'scheduled') GROUP BY city_id, stage_id",
            (run_id,),
        )
        return {(str(r["city_id"]), str(r["stage_id"])): int(r["n"]) for r in rows}

    async def live_of_scenario(self, scenario_id: str) -> list[StoredDelayed]:
        """Rows of the scenario's non-armed runs that may still fire: what ``!purge``
        must cancel before it deletes their ids."""
        rows = await self._fetch(
            f"SELECT {_COLUMNS}{_FROM} WHERE r.scenario_id = ? AND r.state != 'armed'"
            " AND d.state IN ('pending', 'scheduling', 'scheduled')",
            (scenario_id,),
        )
        return [_stored(r) for r in rows]

    async def live(self) -> list[StoredDelayed]:
        """Every row that may still fire, of any run (for the bot's periodic pass)."""
        rows = await self._fetch(
            f"SELECT {_COLUMNS}{_FROM} WHERE d.state IN ('pending', 'scheduling', 'scheduled')"
            " ORDER BY d.due_at, d.city_id, d.stage_id, d.room_id, d.part"
        )
        return [_stored(r) for r in rows]
