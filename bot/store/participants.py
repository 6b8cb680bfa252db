"""Participants: check-ins of a run's stages (``!here`` or a reaction) and
private (direct message) participants of a scenario's cities."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.store.db import Database, iso


@dataclass(frozen=True)
class DirectMember:
    """A private participant of one city: their direct chat, pod and role."""

    room_id: str
    user_id: str
    pod_id: str | None
    """The pod the bot assigned them to; None in a city without pods."""
    role_id: str | None
    """The role they picked with ``!role``; None: no role."""


class Participants:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- check-ins ---------------------------------------------------------------------------

    async def add_checkin(
        self,
        run_id: int,
        city_id: str,
        stage_id: str,
        user_id: str,
        *,
        now: datetime,
        via: str,
        pod_id: str | None = None,
        role_id: str | None = None,
    ) -> bool:
        """Record a check-in; False if this person already checked in for this stage.
        ``pod_id``/``role_id``: the pod and role it counts for (their room's, or the
        private participant's own)."""
        changed = await self._db.write(
            "INSERT OR IGNORE INTO checkins"
            " (run_id, city_id, stage_id, user_id, at, via, pod_id, role_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, city_id, stage_id, user_id, iso(now), via, pod_id, role_id),
        )
        return changed == 1

    async def checkin_counts_by_lane(
        self, run_id: int
    ) -> dict[tuple[str, str], dict[tuple[str | None, str | None], int]]:
        """Check-ins per (city, stage), split by (pod, role): what
        :func:`bot.scenario.gates.gate_verdicts` counts."""
        rows = await self._db.fetch(
            "SELECT city_id, stage_id, pod_id, role_id, COUNT(*) AS n FROM checkins"
            " WHERE run_id = ? GROUP BY city_id, stage_id, pod_id, role_id",
            (run_id,),
        )
        out: dict[tuple[str, str], dict[tuple[str | None, str | None], int]] = {}
        for r in rows:
            split = out.setdefault((str(r["city_id"]), str(r["stage_id"])), {})
            split[(r["pod_id"], r["role_id"])] = int(r["n"])
        return out

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

    async def checkin_tags(
        self, run_id: int
    ) -> dict[tuple[str, str], dict[str, tuple[str | None, str | None]]]:
        """Who checked in, per (city, stage), with the (pod, role) each counts for:
        for sharing as tokens in a crew (bot/crew/shares.py)."""
        rows = await self._db.fetch(
            "SELECT city_id, stage_id, user_id, pod_id, role_id FROM checkins WHERE run_id = ?",
            (run_id,),
        )
        out: dict[tuple[str, str], dict[str, tuple[str | None, str | None]]] = {}
        for r in rows:
            key = (str(r["city_id"]), str(r["stage_id"]))
            out.setdefault(key, {})[str(r["user_id"])] = (r["pod_id"], r["role_id"])
        return out

    # -- private (direct message) participants ---------------------------------------------

    async def add_direct(
        self,
        scenario_id: str,
        city_id: str,
        user_id: str,
        room_id: str,
        *,
        now: datetime,
        pod_id: str | None = None,
    ) -> None:
        """Register (or re-register from another chat) a private participant. A
        person already registered keeps their pod and role: only the chat moves."""
        await self._db.write(
            "INSERT INTO direct_participants"
            " (scenario_id, city_id, user_id, room_id, joined_at, pod_id)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scenario_id, city_id, user_id)"
            " DO UPDATE SET room_id = excluded.room_id",
            (scenario_id, city_id, user_id, room_id, iso(now), pod_id),
        )

    async def direct_members(self, scenario_id: str, city_id: str) -> list[DirectMember]:
        """Every private participant of a city, in the order they joined."""
        rows = await self._db.fetch(
            "SELECT room_id, user_id, pod_id, role_id FROM direct_participants"
            " WHERE scenario_id = ? AND city_id = ? ORDER BY joined_at",
            (scenario_id, city_id),
        )
        return [
            DirectMember(str(r["room_id"]), str(r["user_id"]), r["pod_id"], r["role_id"])
            for r in rows
        ]

    async def direct_member(
        self, scenario_id: str, city_id: str, user_id: str
    ) -> DirectMember | None:
        rows = await self._db.fetch(
            "SELECT room_id, user_id, pod_id, role_id FROM direct_participants"
            " WHERE scenario_id = ? AND city_id = ? AND user_id = ?",
            (scenario_id, city_id, user_id),
        )
        if not rows:
            return None
        r = rows[0]
        return DirectMember(str(r["room_id"]), str(r["user_id"]), r["pod_id"], r["role_id"])

    async def pod_sizes(self, scenario_id: str, city_id: str) -> dict[str, int]:
        """Private participants per pod (pods nobody is in are absent)."""
        rows = await self._db.fetch(
            "SELECT pod_id, COUNT(*) AS n FROM direct_participants"
            " WHERE scenario_id = ? AND city_id = ? AND pod_id IS NOT NULL GROUP BY pod_id",
            (scenario_id, city_id),
        )
        return {str(r["pod_id"]): int(r["n"]) for r in rows}

    async def set_role(
        self, scenario_id: str, city_id: str, user_id: str, role_id: str | None
    ) -> bool:
        """Set (None: clear) a private participant's role; False if not registered."""
        changed = await self._db.write(
            "UPDATE direct_participants SET role_id = ?"
            " WHERE scenario_id = ? AND city_id = ? AND user_id = ?",
            (role_id, scenario_id, city_id, user_id),
        )
        return changed == 1

    async def set_pod(
        self, scenario_id: str, city_id: str, user_id: str, pod_id: str | None
    ) -> bool:
        """Put a private participant in ``pod_id`` (None: no pod); False if not
        registered. For one whose pod is not a pod of the city (bot/runs/pods.py)."""
        changed = await self._db.write(
            "UPDATE direct_participants SET pod_id = ?"
            " WHERE scenario_id = ? AND city_id = ? AND user_id = ?",
            (pod_id, scenario_id, city_id, user_id),
        )
        return changed == 1

    async def pod_key(self, scenario_id: str, fresh: bytes, *, now: datetime) -> bytes:
        """The scenario's assignment secret: the stored one, or ``fresh`` stored now
        if there is none (so every restart and every member of the call agrees)."""
        await self._db.write(
            "INSERT OR IGNORE INTO pod_keys (scenario_id, secret, created_at) VALUES (?, ?, ?)",
            (scenario_id, fresh, iso(now)),
        )
        rows = await self._db.fetch(
            "SELECT secret FROM pod_keys WHERE scenario_id = ?", (scenario_id,)
        )
        return bytes(rows[0]["secret"])

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
        """Every private participant of a scenario and its pod key (``Store.purge``)."""
        gone = await self._db.write(
            "DELETE FROM direct_participants WHERE scenario_id = ?", (scenario_id,)
        )
        await self._db.write("DELETE FROM pod_keys WHERE scenario_id = ?", (scenario_id,))
        return gone
