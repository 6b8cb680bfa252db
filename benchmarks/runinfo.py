"""What a results file says about the run it came from: the commit measured, the
machine, the versions, the load. Shared by every part of the benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def source_version() -> dict[str, Any]:
    """The commit measured, and whether bot/ or benchmarks/ had uncommitted changes."""
    try:
        return {
            "commit": _git("rev-parse", "--short=12", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--", "bot", "benchmarks")),
            "bot_last_changed": _git("log", "-1", "--format=%h", "--", "bot"),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "bot_last_changed": None}


def load_now() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {
        "loadavg_1m": round(one, 2),
        "loadavg_5m": round(five, 2),
        "loadavg_15m": round(fifteen, 2),
    }


def machine() -> dict[str, Any]:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions: dict[str, str | None] = {}
    for dist in ("matrix-synapse", "matrix-nio", "aiohttp", "aiosqlite", "APScheduler"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "homeserver": "Synapse, SQLite, on loopback; bot and benchmark on the same machine",
    }
