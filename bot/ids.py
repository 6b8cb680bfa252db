"""One home for the naming conventions of runs: synthetic stage ids, timer job
ids and transaction-id schemes. Pure.

A *run key* is a run's identity across bots and databases: the event id of the
``!arm`` (or ``!drill``) command that started it. Every bot reading that control
room sees the same id, so it can go into the dispatch tag of every event sent
for the run and into every transaction id. Runs created before run keys existed
have an empty key; their ids and tags stay as they were.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

# Synthetic stages (the stop message, corrections) are releases too, in the
# ledger like any stage; their ids start with "!", which no scenario slug can.
SYNTHETIC_PREFIX = "!"
ABORT_STAGE = "!abort"
# For SQL: stage ids that are not synthetic (``stage_id NOT LIKE ...``).
SYNTHETIC_LIKE = "!%"
# Where synthetic dispatches sort after every real stage.
SYNTHETIC_INDEX = 10_000


def is_synthetic(stage_id: str) -> bool:
    return stage_id.startswith(SYNTHETIC_PREFIX)


def fix_stage_id(place_id: str, revision: int) -> str:
    """The synthetic stage of a redirect's correction."""
    return f"!fix-{place_id}-{revision}"


def job_prefix(run_id: int) -> str:
    """Every timer of one run starts with this."""
    return f"run{run_id}@"


def job_id(run_id: int, due_at: datetime) -> str:
    """The timer that fires a run's dispatches due at ``due_at``."""
    return f"{job_prefix(run_id)}{due_at.isoformat()}"


def _digest(*parts: str) -> str:
    # The unit separator cannot occur in an id (slugs, room and event ids).
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def delivery_txn_id(run_key: str, *identity: str) -> str:
    """A stage delivery's txn id: deterministic, so a resend after a crash (same
    device) is deduplicated by the homeserver. The run key makes it differ
    between runs even when a new database numbers runs from 1 again."""
    parts = (*identity, run_key) if run_key else identity
    return "blossom-" + _digest(*parts)


def report_txn_id(run_id: int, scenario_id: str, armed_at: datetime, *parts: str) -> str:
    """A fixed txn id for one control-room report of a run, so sending it again
    after a crash posts nothing new. The run's arming instant is part of it: run
    ids restart at 1 with a new database on the same device."""
    return "blossom-report-" + _digest(str(run_id), scenario_id, armed_at.isoformat(), *parts)


def edit_txn_id(delivery_txn: str, revision: int) -> str:
    """The txn id of the edit (m.replace) of one delivered message for a redirect."""
    return "blossom-edit-" + _digest(f"{delivery_txn}", str(revision))
