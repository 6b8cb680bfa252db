"""The audit of control-room commands: who asked what, and the outcome (ids and
words of the command, never a stage's content)."""

from __future__ import annotations

from datetime import datetime

from bot.store.db import Database, iso


class Audit:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self, *, now: datetime, room_id: str, sender: str, command: str, result: str
    ) -> None:
        await self._db.write(
            "INSERT INTO audit (at, room_id, sender, command, result) VALUES (?, ?, ?, ?, ?)",
            (iso(now), room_id, sender, command, result),
        )

    async def forget_scenario(self, scenario_id: str) -> int:
        """Audit rows that name a scenario (``Store.purge``): commands keep their ids
        as space-separated words."""
        return await self._db.write(
            "DELETE FROM audit WHERE (' ' || command || ' ') LIKE ('% ' || ? || ' %')",
            (scenario_id,),
        )
