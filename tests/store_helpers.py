"""Store helpers for tests only: reads the bot never needs, and a database that
fails on the n-th write (to show a change is all or nothing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from bot.store import Database, Store, StoreError


async def audit_log(store: Store, limit: int = 100) -> list[tuple[str, str, str, str, str]]:
    """The audit, newest first."""
    rows = await store.db.fetch(
        "SELECT at, room_id, sender, command, result FROM audit ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [(r["at"], r["room_id"], r["sender"], r["command"], r["result"]) for r in rows]


async def count(store: Store, table: str) -> int:
    rows = await store.db.fetch(f"SELECT COUNT(*) FROM {table}")
    return int(rows[0][0])


@contextlib.contextmanager
def failing_write(db: Database, at: int, matching: str = "") -> Iterator[list[str]]:
    """Within the block, the ``at``-th write statement (1-based; ``write``,
    ``insert`` and ``write_many`` count) whose SQL contains ``matching`` raises
    StoreError, as a full disk would; the others go through. Yields the SQL of
    every write seen."""
    seen: list[str] = []
    hits: list[str] = []
    originals = {name: getattr(db, name) for name in ("write", "insert", "write_many")}

    def wrap(name: str) -> Any:
        async def call(sql: str, *args: Any) -> Any:
            seen.append(sql)
            if matching in sql:
                hits.append(sql)
            if matching in sql and len(hits) == at:
                raise StoreError("injected failure: database or disk is full")
            return await originals[name](sql, *args)

        return call

    for name in originals:
        setattr(db, name, wrap(name))
    try:
        yield seen
    finally:
        for name in originals:
            delattr(db, name)
