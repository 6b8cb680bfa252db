"""What the core group changed in an armed run: held cities, delays and
redirects. A redirect is content (a place), kept because a restart must not
forget a change of location; ``!purge`` deletes it with its run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bot.store.db import Database
from bot.store.ledger import Ledger


class Steering:
    def __init__(self, db: Database, ledger: Ledger) -> None:
        self._db = db
        self._ledger = ledger

    async def set_hold(self, run_id: int, city_id: str, held: bool) -> None:
        if held:
            await self._db.write(
                "INSERT OR IGNORE INTO holds (run_id, city_id) VALUES (?, ?)", (run_id, city_id)
            )
        else:
            await self._db.write(
                "DELETE FROM holds WHERE run_id = ? AND city_id = ?", (run_id, city_id)
            )

    async def held_cities(self, run_id: int) -> set[str]:
        rows = await self._db.fetch("SELECT city_id FROM holds WHERE run_id = ?", (run_id,))
        return {str(r["city_id"]) for r in rows}

    async def delay(
        self,
        run_id: int,
        moves: Sequence[tuple[str, str, datetime]],
        cities: Sequence[str],
        seconds: float,
    ) -> None:
        """!delay, all or nothing: each (city, stage)'s new due time and the delay
        recorded for each city ({time} renders from it). A crash between the two
        would leave texts out of step with the instants."""
        async with self._db.transaction():
            await self._ledger.move_due(run_id, moves)
            await self._db.write_many(
                "INSERT INTO delays (run_id, city_id, seconds) VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, city_id)"
                " DO UPDATE SET seconds = seconds + excluded.seconds",
                [(run_id, city, seconds) for city in cities],
            )

    async def delays(self, run_id: int) -> dict[str, float]:
        rows = await self._db.fetch(
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
        # One transaction: the revision read is the one this write made.
        async with self._db.transaction():
            await self._db.write(
                "INSERT INTO redirects (run_id, city_id, place_id, name, lat, lon)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, city_id, place_id) DO UPDATE"
                " SET name = excluded.name, lat = excluded.lat, lon = excluded.lon,"
                " revision = redirects.revision + 1",
                (run_id, city_id, place_id, name, lat, lon),
            )
            rows = await self._db.fetch(
                "SELECT revision FROM redirects WHERE run_id = ? AND city_id = ? AND place_id = ?",
                (run_id, city_id, place_id),
            )
        return int(rows[0]["revision"])

    async def redirects(
        self, run_id: int
    ) -> list[tuple[str, str, str, tuple[float, float] | None]]:
        rows = await self._db.fetch(
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
