"""Pure decisions made at a stage's instant: release, skip, hold or abort.

Inputs are plain values (what the ledger and the check-in counter know at that
moment); the run manager carries the decision out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# Lateness under this is normal jitter, not worth telling the control room.
LATE_REPORT_THRESHOLD = timedelta(seconds=5)


class Action(StrEnum):
    RELEASE = "release"
    SKIP = "skip"
    HOLD = "hold"
    ABORT = "abort"


class LateReason(StrEnum):
    """Why a stage reached its rooms after its instant (the report says it)."""

    UNAVAILABLE = "unavailable"  # the bot or the homeserver was down or busy
    RELEASED_BY_HAND = "released"  # !release of a held or gated stage
    RESUMED = "resumed"  # held until !resume
    PAST_AT_ARMING = "armed-late"  # its instant had passed when it was armed (resend)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    late_by: timedelta = timedelta(0)


def decide(
    *,
    due_at: datetime,
    now: datetime,
    skip_after: timedelta | None,
    city_held: bool,
    gate_checkins: int | None,
    gate_otherwise: str | None,
    checkins: int,
    forced: bool = False,
) -> Decision:
    """What to do with one (city, stage) now.

    ``forced`` is ``!release``: the core group overrides holds, gates and the
    late policy. A held city waits. The late policy is applied before the gate:
    a stage too late to send is skipped whatever the check-ins.
    """
    late_by = max(now - due_at, timedelta(0))
    if forced:
        return Decision(Action.RELEASE, "released by the core group", late_by)
    if city_held:
        return Decision(Action.HOLD, "city on hold", late_by)
    if skip_after is not None and late_by > skip_after:
        return Decision(
            Action.SKIP, f"late by {format_duration(late_by)}, past skip_after", late_by
        )
    if gate_checkins is not None and checkins < gate_checkins:
        reason = f"{checkins}/{gate_checkins} check-ins"
        if gate_otherwise == "skip":
            return Decision(Action.SKIP, f"gate not met ({reason})", late_by)
        if gate_otherwise == "abort":
            return Decision(Action.ABORT, f"gate not met ({reason})", late_by)
        return Decision(Action.HOLD, f"gate not met ({reason})", late_by)
    return Decision(Action.RELEASE, "", late_by)


def retry_deadline(due_at: datetime, skip_after: timedelta | None) -> datetime | None:
    return due_at + skip_after if skip_after is not None else None


def format_duration(delta: timedelta) -> str:
    """``1d2h``, ``5m03s``, ``42s``, ``0.4s``: compact, for the control room."""
    total = delta.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total < 10:
        return f"{sign}{total:.1f}s"
    seconds = round(total)
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{sign}{days}d{hours}h" if hours else f"{sign}{days}d"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"
