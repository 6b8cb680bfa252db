"""Runs: one row per arming of a scenario (or drill), with what it needs to be
restored after a restart (the file's path and SHA-256, never its text)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from bot.ids import SYNTHETIC_LIKE
from bot.ledger import RunState, run_sources
from bot.store.db import Database, StoreConflict, StoreError, iso, parse_iso
from bot.store.ledger import Ledger, PlannedDispatch


@dataclass(frozen=True)
class RunRow:
    id: int
    scenario_id: str
    source_path: str
    source_sha256: str
    state: RunState
    armed_by: str
    armed_at: datetime
    control_room: str
    drill_room: str | None = None
    drill_speed: float | None = None
    # The event id of the command that armed it ("" before run keys): bot.ids.
    run_key: str = ""


def _run(row: sqlite3.Row) -> RunRow:
    return RunRow(
        id=row["id"],
        scenario_id=row["scenario_id"],
        source_path=row["source_path"],
        source_sha256=row["source_sha256"],
        state=RunState(row["state"]),
        armed_by=row["armed_by"],
        armed_at=parse_iso(row["armed_at"]),
        control_room=row["control_room"],
        drill_room=row["drill_room"],
        drill_speed=row["drill_speed"],
        run_key=row["run_key"],
    )


class Runs:
    def __init__(self, db: Database, ledger: Ledger) -> None:
        self._db = db
        self._ledger = ledger

    async def create(
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
        """Create an armed run and its dispatches, all or nothing. Raises StoreError
        if the scenario already has an armed run, or a run has this key."""
        async with self._db.transaction():
            try:
                run_id = await self._db.insert(
                    "INSERT INTO runs (scenario_id, source_path, source_sha256, state,"
                    " armed_by, armed_at, control_room, drill_room, drill_speed, run_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        scenario_id,
                        source_path,
                        source_sha256,
                        RunState.ARMED,
                        armed_by,
                        iso(now),
                        control_room,
                        drill_room,
                        drill_speed,
                        run_key,
                    ),
                )
            except StoreConflict:
                raise StoreError(
                    f"scenario {scenario_id} is already armed, or this command armed a run already"
                ) from None
            await self._ledger.add_planned(run_id, dispatches)
        return run_id

    async def armed(self) -> list[RunRow]:
        rows = await self._db.fetch(
            "SELECT * FROM runs WHERE state = ? ORDER BY id", (RunState.ARMED,)
        )
        return [_run(r) for r in rows]

    async def of_scenario(self, scenario_id: str) -> list[RunRow]:
        rows = await self._db.fetch(
            "SELECT * FROM runs WHERE scenario_id = ? ORDER BY id", (scenario_id,)
        )
        return [_run(r) for r in rows]

    async def sent_stages(self, scenario_id: str) -> set[tuple[str, str]]:
        """(city, stage) that any earlier run of the scenario released, wholly or
        in part (synthetic stages excluded): what re-arming must not send again."""
        rows = await self._db.fetch(
            "SELECT DISTINCT d.city_id, d.stage_id FROM dispatches d"
            " JOIN runs r ON r.id = d.run_id WHERE r.scenario_id = ?"
            " AND d.stage_id NOT LIKE ? AND (d.state IN ('released', 'releasing')"
            " OR EXISTS (SELECT 1 FROM deliveries v WHERE v.run_id = d.run_id"
            " AND v.city_id = d.city_id AND v.stage_id = d.stage_id"
            " AND v.state IN ('sent', 'sending')))",
            (scenario_id, SYNTHETIC_LIKE),
        )
        return {(str(r["city_id"]), str(r["stage_id"])) for r in rows}

    async def end(self, run_id: int, state: RunState, now: datetime) -> None:
        """End a run, if the run transition table allows it from its state (only an
        armed run ends, once)."""
        sources = ", ".join(f"'{s}'" for s in sorted(run_sources(state)))
        await self._db.write(
            f"UPDATE runs SET state = ?, ended_at = ? WHERE id = ? AND state IN ({sources})",
            (state, iso(now), run_id),
        )

    async def delete_ended(self, scenario_id: str) -> int:
        """Delete every run of a scenario that is not armed, with everything that
        references it (ON DELETE CASCADE): ``Store.purge``."""
        return await self._db.write(
            "DELETE FROM runs WHERE scenario_id = ? AND state != ?",
            (scenario_id, RunState.ARMED),
        )
