"""The database object every aggregate of the store shares: one aiosqlite
connection, its migrations, its pragmas, and ``transaction()``.

One connection serves every task, so a transaction open in one task would
otherwise take in (and, on rollback, undo) another task's statements. The
connection is therefore taken in turns: a statement waits while another task
holds a transaction open, and the task holding it runs its own statements at
once. Outside a transaction each statement commits on its own, written
*before* the action it records is taken (a delivery is SENDING before its
request leaves), so a crash at any point leaves a row that says what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.store.migrations import MIGRATIONS


class StoreError(Exception):
    """The database cannot be used (locked, full, corrupt). Never carries secrets."""


class StoreConflict(StoreError):
    """A write broke a constraint (a second armed run, a row without its parent)."""


def _failed(err: sqlite3.Error, what: str = "write") -> StoreError:
    if isinstance(err, sqlite3.IntegrityError):
        return StoreConflict(f"database {what} refused: {err}")
    return StoreError(f"database {what} failed: {err}")


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Database:
    """The connection, taken in turns (see the module's docstring)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0  # savepoints open inside the transaction

    @classmethod
    async def open(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn: aiosqlite.Connection | None = None
        try:
            conn = await aiosqlite.connect(path, isolation_level=None, timeout=5.0)
            conn.row_factory = sqlite3.Row
            # WAL + synchronous=NORMAL: a commit survives a crash of this process
            # (what SIGKILL tests); after a power loss the last commits may roll
            # back, which the ledger tolerates (SENDING rows are checked, the txn
            # id dedups resends).
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten, so !purge leaves no trace in free pages.
            await conn.execute("PRAGMA secure_delete=ON")
            db = cls(conn)
            await db._migrate()
        except BaseException as err:
            # aiosqlite's worker thread is not a daemon: a connection left open
            # here would keep the process from ever exiting.
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            if isinstance(err, sqlite3.Error):
                raise StoreError(f"cannot open the database {path}: {err}") from None
            raise
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def schema_version(self) -> int:
        rows = await self.fetch("PRAGMA user_version")
        return int(rows[0][0]) if rows else 0

    async def _migrate(self) -> None:
        version = await self.schema_version()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database is at schema version {version}, newer than this bot "
                f"({len(MIGRATIONS)}); upgrade Blossom"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first; wrap explicitly so a migration is atomic.
            await self._conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    # -- turns and transactions ------------------------------------------------------------

    def _mine(self) -> bool:
        return self._owner is not None and self._owner is asyncio.current_task()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The connection for one statement. With no transaction open, it goes at
        once: each statement is a single request to aiosqlite's worker, which runs
        them in order, so it cannot land inside a transaction begun after it."""
        if self._mine() or not self._lock.locked():
            yield
            return
        async with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """All the block's statements or none: commit when it ends, roll back if it
        raises (the exception goes on). Nested in the same task, a block is a
        savepoint: its failure undoes only its own statements, and the outer block
        decides for the rest; nothing is committed before the outermost block ends.
        Other tasks' statements wait meanwhile, so never await another task that
        uses the store from inside a transaction."""
        if self._mine():
            async with self._savepoint():
                yield
            return
        async with self._lock:
            self._owner = asyncio.current_task()
            try:
                await self._run("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await self._conn.execute("ROLLBACK")
                    raise
                try:
                    await self._conn.execute("COMMIT")
                except sqlite3.Error as err:
                    with contextlib.suppress(sqlite3.Error):
                        await self._conn.execute("ROLLBACK")
                    raise StoreError(f"database commit failed: {err}") from None
            finally:
                self._owner = None

    @contextlib.asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._depth += 1
        name = f"nested_{self._depth}"
        try:
            await self._run(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute(f"ROLLBACK TO {name}")
                    await self._conn.execute(f"RELEASE {name}")
                raise
            await self._run(f"RELEASE {name}")
        finally:
            self._depth -= 1

    async def _run(self, sql: str) -> None:
        try:
            await self._conn.execute(sql)
        except sqlite3.Error as err:
            raise _failed(err) from None

    # -- statements ------------------------------------------------------------------------

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement; the number of rows it changed."""
        async with self._turn():
            try:
                cur = await self._conn.execute(sql, params)
                count = cur.rowcount
                await cur.close()
                return count
            except sqlite3.Error as err:
                raise _failed(err) from None

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One INSERT; the new row's id."""
        async with self._turn():
            try:
                cur = await self._conn.execute(sql, params)
                row_id = cur.lastrowid
                await cur.close()
            except sqlite3.Error as err:
                raise _failed(err) from None
        assert row_id is not None
        return row_id

    async def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows, all or none (one transaction)."""
        async with self.transaction():
            try:
                await self._conn.executemany(sql, rows)
            except sqlite3.Error as err:
                raise _failed(err) from None

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._turn():
            try:
                return list(await self._conn.execute_fetchall(sql, params))
            except sqlite3.Error as err:
                raise _failed(err, "read") from None

    async def compact(self) -> None:
        """Rewrite the file and empty the WAL, so deleted rows leave no trace (outside
        any transaction: SQLite refuses VACUUM inside one)."""
        async with self._turn():
            try:
                await self._conn.execute("VACUUM")
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                raise StoreError(f"database compaction failed: {err}") from None
