"""The store: one database (:mod:`bot.store.db`) and an object per aggregate,
reached as attributes (``store.runs``, ``store.ledger``, ``store.rooms``,
``store.steering``, ``store.participants``, ``store.audit``, ``store.delayed``).
A change that spans aggregates is made here (``purge``) or in
``async with store.transaction():``."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from bot.store.audit import Audit
from bot.store.db import Database
from bot.store.delayed import DelayedStore
from bot.store.ledger import Ledger
from bot.store.participants import Participants
from bot.store.rooms import Rooms
from bot.store.runs import Runs
from bot.store.steering import Steering


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.ledger = Ledger(db)
        self.runs = Runs(db, self.ledger)
        self.rooms = Rooms(db)
        self.steering = Steering(db, self.ledger)
        self.participants = Participants(db)
        self.audit = Audit(db)
        # The dead-man's switch's table (bot.store.delayed).
        self.delayed = DelayedStore(db)

    @classmethod
    async def open(cls, path: Path) -> Store:
        return cls(await Database.open(path))

    async def close(self) -> None:
        await self.db.close()

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """All or nothing across aggregates (:meth:`Database.transaction`)."""
        return self.db.transaction()

    async def purge(self, scenario_id: str) -> int:
        """Delete every non-armed run of a scenario (ledger, check-ins, holds, delays,
        redirects, delayed events), its private participants and the audit rows
        that name it, all or nothing; then compact, so nothing of it stays in the
        file or its WAL. Returns the number of runs deleted."""
        async with self.transaction():
            runs = await self.runs.delete_ended(scenario_id)
            await self.participants.forget_scenario(scenario_id)
            await self.audit.forget_scenario(scenario_id)
        await self.db.compact()
        return runs
