"""The delivery ledger's pure rules: identities, states and allowed transitions.

A *delivery* is one part (text or location) of one stage, for one city, to one
room. Its identity is global — (scenario, city, stage, room, part) within one
run — so any bot, or this bot after a crash, recognises a dispatch already in a
room. The SQLite store (``bot.store``) persists rows; this module decides what
a row may become.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum


class Part(StrEnum):
    TEXT = "text"
    LOCATION = "location"


class DeliveryState(StrEnum):
    PENDING = "pending"  # due (or waiting for a retry); nothing in flight
    SENDING = "sending"  # a request may be in flight: check the room before resending
    SENT = "sent"  # the homeserver gave us an event id
    FAILED = "failed"  # given up (permanent error or the late policy's deadline)
    SKIPPED = "skipped"  # not sent on purpose (abort, late policy, room left)


TERMINAL = frozenset({DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.SKIPPED})

_ALLOWED: dict[DeliveryState, frozenset[DeliveryState]] = {
    DeliveryState.PENDING: frozenset(
        {DeliveryState.SENDING, DeliveryState.SKIPPED, DeliveryState.FAILED}
    ),
    # SENDING -> PENDING: the request failed in a retryable way, or a restart
    # found no trace of it in the room.
    DeliveryState.SENDING: frozenset(
        {
            DeliveryState.SENT,
            DeliveryState.PENDING,
            DeliveryState.FAILED,
            DeliveryState.SKIPPED,
        }
    ),
    DeliveryState.SENT: frozenset(),
    DeliveryState.FAILED: frozenset(),
    DeliveryState.SKIPPED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, old: DeliveryState, new: DeliveryState) -> None:
        super().__init__(f"delivery cannot go from {old} to {new}")
        self.old = old
        self.new = new


def check_transition(old: DeliveryState, new: DeliveryState) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is allowed.

    Above all: nothing leaves SENT, so a delivered message is never re-sent, and
    nothing becomes SENT except from SENDING (a real request).
    """
    if new not in _ALLOWED[old]:
        raise IllegalTransition(old, new)


class DispatchState(StrEnum):
    """The state of one (run, city, stage): the unit the scheduler fires."""

    SCHEDULED = "scheduled"
    HELD = "held"  # a gate or the core group holds it; waits for !release / !resume
    RELEASING = "releasing"  # fan-out started; deliveries carry the detail
    RELEASED = "released"  # every delivery terminal
    SKIPPED = "skipped"  # late policy or a gate skipped it
    CANCELLED = "cancelled"  # disarm or abort


DISPATCH_DONE = frozenset({DispatchState.RELEASED, DispatchState.SKIPPED, DispatchState.CANCELLED})


@dataclass(frozen=True, order=True)
class DeliveryKey:
    run_id: int
    scenario_id: str
    city_id: str
    stage_id: str
    room_id: str
    part: Part

    def txn_id(self) -> str:
        """A deterministic transaction id: a resend after a crash (same device)
        is deduplicated by the homeserver instead of posted twice."""
        raw = "\x1f".join(
            (
                str(self.run_id),
                self.scenario_id,
                self.city_id,
                self.stage_id,
                self.room_id,
                self.part,
            )
        )
        return "blossom-" + hashlib.sha256(raw.encode()).hexdigest()[:40]

    def content_tag(self) -> dict[str, str]:
        """The ``org.blossom.dispatch`` value every event for this delivery carries."""
        return {
            "scenario": self.scenario_id,
            "city": self.city_id,
            "stage": self.stage_id,
            "part": str(self.part),
        }
