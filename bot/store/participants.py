"""Participants: check-ins of a run's stages (``!here`` or a reaction) and
private (direct message) participants of a scenario's cities."""

from __future__ import annotations

from datetime import datetime

from bot.store.db import Database, iso


class Participants:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- check-ins ---------------------------------------------------------------------------

    async def add_checkin(
        self, run_id: int, city_id: str, stage_id: str, user_id: str, *, now: datetime, via: str
    ) -> bool:
        """Record a check-in; False if this person already checked in for this stage."""
        changed = await self._db.write(
            "INSERT OR IGNORE INTO checkins (run_id, city_id, stage_id, user_id, at, via)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, city_id, stage_id, user_id, iso(now), via),
        )
        return changed == 1

    async def checkin_counts(self, run_id: int) -> dict[tuple[str, str], int]:
        rows = await self._db.fetch(
            "SELECT city_id, stage_id, COUNT(*) AS n FROM checkins WHERE run_id = ?"
            " GROUP BY city_id, stage_id",
            (run_id,),
        )
        return {(str(r["city_id"]), str(r["stage_id"])): int(r["n"]) for r in rows}

    async def checkin_users(self, run_id: int) -> dict[tuple[str, str], set[str]]:
        """Who checked in, per (city, stage): for sharing as tokens in a crew."""
        rows = await self._db.fetch(
            "SELECT city_id, stage_id, user_id FROM checkins WHERE run_id = ?", (run_id,)
        )
        out: dict[tuple[str, str], set[str]] = {}
        for r in rows:
            out.setdefault((str(r["city_id"]), str(r["stage_id"])), set()).add(str(r["user_id"]))
        return out

    # -- private (direct message) participants ---------------------------------------------

    async def add_direct(
        self, scenario_id: str, city_id: str, user_id: str, room_id: str, *, now: datetime
    ) -> None:
        await self._db.write(
            "INSERT INTO direct_participants (scenario_id, city_id, user_id, room_id, joined_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scenario_id, city_id, user_id)"
            " DO UPDATE SET room_id = excluded.room_id",
            (scenario_id, city_id, user_id, room_id, iso(now)),
        )

    async def remove_direct_room(self, room_id: str) -> int:
        return await self._db.write("DELETE FROM direct_participants WHERE room_id = ?", (room_id,))

    async def direct_rooms(self, scenario_id: str, city_id: str) -> list[str]:
        rows = await self._db.fetch(
            "SELECT room_id FROM direct_participants WHERE scenario_id = ? AND city_id = ?"
            " ORDER BY joined_at",
            (scenario_id, city_id),
        )
        return [str(r["room_id"]) for r in rows]

    async def direct_of_room(self, room_id: str) -> list[tuple[str, str, str]]:
        """(scenario_id, city_id, user_id) registered through this direct chat."""
        rows = await self._db.fetch(
            "SELECT scenario_id, city_id, user_id FROM direct_participants WHERE room_id = ?",
            (room_id,),
        )
        return [(str(r["scenario_id"]), str(r["city_id"]), str(r["user_id"])) for r in rows]

    async def forget_scenario(self, scenario_id: str) -> int:
        """Every private participant of a scenario (``Store.purge``)."""
        return await self._db.write(
            "DELETE FROM direct_participants WHERE scenario_id = ?", (scenario_id,)
        )
