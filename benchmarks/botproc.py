"""The real Blossom bot as a child process (``python -m bot run``), so its CPU time
and peak memory are its own: read from /proc while it runs and from ``wait4``'s
rusage when it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bot.app import DB_FILE
from bot.clock import SystemClock
from bot.store import Store

READY_LINE = "first sync done"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class BotUsage:
    """What the bot process cost over its whole life (from wait4)."""

    cpu_s: float
    peak_rss_mb: float
    exit_code: int


async def seed_rooms(storage: Path, rooms: Iterable[str], opted_in_by: str) -> None:
    """Record rooms as opted in, as if each had been invited by a moderator and the
    bot had accepted. The benchmark joins the bot to its rooms through the API
    beforehand (1,000 opt-in round trips would measure invites, not fan-out)."""
    store = await Store.open(storage / DB_FILE)
    try:
        now = SystemClock().now()
        for room in rooms:
            await store.rooms.set(room, "joined", now=now, opted_in_by=opted_in_by, note="bench")
    finally:
        await store.close()


def write_config(
    path: Path,
    *,
    homeserver: str,
    user_id: str,
    password: str,
    control_room: str,
    max_in_flight: int | None = None,
    prepare_seconds: float | None = None,
    sync_hold_seconds: float | None = None,
    crew: Mapping[str, Any] | None = None,
) -> None:
    """The bot's config; ``crew``: its ``crew`` section (a member of a crew)."""
    dispatch: dict[str, Any] = {}
    if max_in_flight is not None:
        dispatch["max_in_flight"] = max_in_flight
    if prepare_seconds is not None:
        dispatch["prepare_seconds"] = prepare_seconds
    if sync_hold_seconds is not None:
        dispatch["sync_hold_seconds"] = sync_hold_seconds
    config: dict[str, Any] = {
        "matrix": {"homeserver": homeserver, "user_id": user_id, "password": password},
        "storage": {"path": "data"},
        "control": {"rooms": [control_room], "min_power_level": 50},
        "scenarios": {"dir": "scenarios"},
    }
    if dispatch:
        config["dispatch"] = dispatch
    if crew is not None:
        config["crew"] = dict(crew)
    (path.parent / "scenarios").mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))


class BotProcess:
    def __init__(self, workdir: Path, *, log_level: str = "INFO") -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.storage = workdir / "data"
        self.scenarios = workdir / "scenarios"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "bot.log"
        self._log_offset = 0
        self.started_at = 0.0

    def spawn(self) -> None:
        assert self.proc is None
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot",
                "run",
                "--config",
                str(self.config_path),
                "--log-level",
                self.log_level,
                "--log-file",
                str(self.log_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "bot.stderr").open("ab"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_ready(self, timeout: float = 300) -> float:  # noqa: ASYNC109
        """Seconds from spawn until the bot's first sync is done."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if READY_LINE in self.log_text():
                return time.monotonic() - self.started_at
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the bot exited with {self.proc.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bot was not ready within {timeout:g} s")
            await asyncio.sleep(0.05)

    def cpu_seconds(self) -> float:
        """user + system CPU so far, from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set size in MiB."""
        values: dict[str, float] = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, kb = line.split()[:2]
                    values[key] = int(kb) / 1024
        return values.get("VmRSS:", 0.0), values.get("VmHWM:", 0.0)

    async def stop(self, timeout: float = 30) -> BotUsage:  # noqa: ASYNC109
        """SIGTERM (the bot's clean shutdown), then reap with wait4 for its rusage."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # noqa: ASYNC222 (no wait)
            if pid == proc.pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)  # noqa: ASYNC222 (SIGKILLed)
                break
            await asyncio.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return BotUsage(
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            exit_code=proc.returncode,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    # -- the ledger, read-only, from outside -----------------------------------------

    def _db(self) -> sqlite3.Connection:
        uri = f"file:{self.storage / DB_FILE}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=5)

    def terminal_count(self, run_id: int, stage_id: str | None = None) -> int:
        """Deliveries of the run (of one stage, if given) that are done."""
        with self._db() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE run_id = ?"
                " AND state IN ('sent', 'failed', 'skipped')"
                " AND (? IS NULL OR stage_id = ?)",
                (run_id, stage_id, stage_id),
            ).fetchone()
        return int(row[0])

    def deliveries(
        self, run_id: int, stage_id: str | None = None
    ) -> list[tuple[str, str, str, str | None]]:
        """(city_id, room_id, state, event_id) of every delivery of the run (of one
        stage, if given)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT city_id, room_id, state, event_id FROM deliveries WHERE run_id = ?"
                " AND (? IS NULL OR stage_id = ?)",
                (run_id, stage_id, stage_id),
            ).fetchall()
        return [(str(c), str(r), str(s), e) for c, r, s, e in rows]

    def sent_times(self, run_id: int) -> list[float]:
        """When the bot recorded each delivery SENT (its reply came back), epoch s."""
        with self._db() as db:
            rows = db.execute(
                "SELECT sent_at FROM deliveries WHERE run_id = ? AND sent_at IS NOT NULL",
                (run_id,),
            ).fetchall()
        return [datetime.fromisoformat(r[0]).timestamp() for r in rows]
