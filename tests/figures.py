"""What the robustness suites tried, for ``docs/reliability.md``.

A test computes its counts and, after its assertions passed, calls :func:`record`.
So a row exists only for a suite that passed: every attempt it counts held, and a
failing suite writes nothing (it fails, and its previous row, recorded on older
code, shows up in ``python -m bot.devtools.reliability --check``). That is why the
table has no "broke" column: it would be zero by construction.

``tried`` counts what the bot itself withstood; ``homeserver`` counts, apart, the
attempts that the homeserver stopped or decided (a power-level edit it refused, a
sender it set), which say nothing about the bot.

Recording is on only when ``BLOSSOM_FIGURES`` names a results file (``make figures``
sets it to ``docs/reliability.json``); a plain ``make test`` leaves the repository
untouched. Rows are merged by id, so a partial run updates only the rows it ran.
Each row carries its commit and a fingerprint of bot/ (see bot/devtools/reliability.py).
``python -m bot.devtools.reliability`` turns the file into the table in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.devtools.reliability import DIRTY, GitUnavailable, bot_fingerprint

ROOT = Path(__file__).resolve().parent.parent

# The sections of the table, in order (a row names one).
SECTIONS = (
    "Faults",
    "Bad input",
    "Hostile users",
    "Leaks",
    "Crew failover",
    "Dead-man's switch",
)


def results_path() -> Path | None:
    value = os.environ.get("BLOSSOM_FIGURES", "").strip()
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else ROOT / path


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"blossom-figures-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fingerprint() -> str:
    try:
        return bot_fingerprint(ROOT)
    except GitUnavailable:
        return DIRTY  # no way to say which code this was: --check reports it


def record(
    row_id: str,
    *,
    section: str,
    what: str,
    tried: int,
    unit: str,
    command: str,
    held: int | None = None,
    homeserver: Mapping[str, int] | None = None,
    by_kind: Mapping[str, int] | None = None,
    measured: Mapping[str, float | int | str] | None = None,
) -> None:
    """Merge one row into the results file (a no-op unless BLOSSOM_FIGURES is set).

    ``tried``: how many attempts (inputs, kills, hostile actions, searches) the bot
    withstood in a suite that passed. ``homeserver``: attempts the homeserver itself
    stopped or decided, by kind, shown apart and not in ``tried``. ``held`` is
    accepted from older callers and must equal ``tried``. ``command`` reproduces the row.
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}")
    if tried < 0 or (held is not None and held != tried):
        raise ValueError("a row records a suite that passed: held, if given, equals tried")
    path = results_path()
    if path is None:
        return
    row: dict[str, Any] = {
        "section": section,
        "what": what,
        "tried": tried,
        "homeserver": dict(homeserver or {}),
        "unit": unit,
        "command": command,
        "by_kind": dict(by_kind or {}),
        "measured": dict(measured or {}),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": _commit(),
        "bot_fingerprint": _fingerprint(),
    }
    with _locked(path):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            data = {}
        rows = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(rows, dict):
            rows = {}
        rows[row_id] = row
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(
            json.dumps({"rows": dict(sorted(rows.items()))}, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        os.replace(tmp, path)


def pytest_command(nodeid: str) -> str:
    """The command that reruns one test (``nodeid`` as pytest prints it)."""
    return f".venv/bin/pytest -q '{nodeid}'"
