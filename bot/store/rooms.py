"""Rooms the bot was invited to (opted in, left, declined) and room upgrades
(a tombstone's successor)."""

from __future__ import annotations

import builtins
from datetime import datetime

from bot.store.db import Database, iso


class Rooms:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set(
        self,
        room_id: str,
        membership: str,
        *,
        now: datetime,
        opted_in_by: str | None = None,
        note: str | None = None,
    ) -> None:
        await self._db.write(
            "INSERT INTO rooms (room_id, membership, opted_in_by, note, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET"
            " membership = excluded.membership,"
            " opted_in_by = COALESCE(excluded.opted_in_by, rooms.opted_in_by),"
            " note = excluded.note, updated_at = excluded.updated_at",
            (room_id, membership, opted_in_by, note, iso(now)),
        )

    async def opted_in(self) -> builtins.set[str]:
        rows = await self._db.fetch("SELECT room_id FROM rooms WHERE membership = 'joined'")
        return {str(r["room_id"]) for r in rows}

    async def membership(self, room_id: str) -> str | None:
        rows = await self._db.fetch("SELECT membership FROM rooms WHERE room_id = ?", (room_id,))
        return str(rows[0]["membership"]) if rows else None

    async def opted_in_by(self, room_id: str) -> str | None:
        rows = await self._db.fetch("SELECT opted_in_by FROM rooms WHERE room_id = ?", (room_id,))
        return str(rows[0]["opted_in_by"]) if rows and rows[0]["opted_in_by"] else None

    async def set_successor(
        self, room_id: str, successor: str, *, upgraded_by: str, now: datetime
    ) -> None:
        """Record that ``room_id`` was upgraded (m.room.tombstone) to ``successor``."""
        await self._db.write(
            "INSERT INTO room_successors (room_id, successor, upgraded_by, at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET"
            " successor = excluded.successor, upgraded_by = excluded.upgraded_by,"
            " at = excluded.at",
            (room_id, successor, upgraded_by, iso(now)),
        )

    async def successors(self) -> dict[str, str]:
        """Upgraded room -> the room that replaces it."""
        rows = await self._db.fetch("SELECT room_id, successor FROM room_successors")
        return {str(r["room_id"]): str(r["successor"]) for r in rows}

    async def predecessors_of(self, room_id: str) -> list[str]:
        """The rooms whose tombstone names ``room_id`` as their replacement."""
        rows = await self._db.fetch(
            "SELECT room_id FROM room_successors WHERE successor = ? ORDER BY at", (room_id,)
        )
        return [str(r["room_id"]) for r in rows]
