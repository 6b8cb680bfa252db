"""The delivery ledger's pure rules: identities, states and allowed transitions.

A *delivery* is one part (text or location) of one stage, for one city, to one
room. Its identity is global — (scenario, city, stage, room, part) within one
run — so any bot, or this bot after a crash, recognises a dispatch already in a
room. The SQLite store (``bot.store``) persists rows; this module decides what
a row may become.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot import DISPATCH_KEY
from bot.ids import delivery_txn_id


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
DISPATCH_PENDING = frozenset({DispatchState.SCHEDULED, DispatchState.HELD})

_DISPATCH_ALLOWED: dict[DispatchState, frozenset[DispatchState]] = {
    # SCHEDULED -> SCHEDULED: !delay moves a pending stage (its due time changes).
    DispatchState.SCHEDULED: frozenset(
        {
            DispatchState.SCHEDULED,
            DispatchState.HELD,
            DispatchState.RELEASING,
            DispatchState.SKIPPED,
            DispatchState.CANCELLED,
        }
    ),
    # HELD -> SCHEDULED: !resume decides it again; HELD -> RELEASING: !release.
    DispatchState.HELD: frozenset(
        {
            DispatchState.HELD,
            DispatchState.SCHEDULED,
            DispatchState.RELEASING,
            DispatchState.SKIPPED,
            DispatchState.CANCELLED,
        }
    ),
    # A release once started is finished (a restart resumes it); an abort stops
    # what has not left yet, deliveries carry the detail.
    # RELEASING -> CANCELLED: a restart refuses a run whose file changed.
    DispatchState.RELEASING: frozenset(
        {DispatchState.RELEASING, DispatchState.RELEASED, DispatchState.CANCELLED}
    ),
    DispatchState.RELEASED: frozenset(),
    DispatchState.SKIPPED: frozenset(),
    DispatchState.CANCELLED: frozenset(),
}


class RunState(StrEnum):
    ARMED = "armed"
    FINISHED = "finished"
    ABORTED = "aborted"
    DISARMED = "disarmed"


_RUN_ALLOWED: dict[RunState, frozenset[RunState]] = {
    RunState.ARMED: frozenset({RunState.FINISHED, RunState.ABORTED, RunState.DISARMED}),
    RunState.FINISHED: frozenset(),
    RunState.ABORTED: frozenset(),
    RunState.DISARMED: frozenset(),
}


def dispatch_may(old: DispatchState, new: DispatchState) -> bool:
    """Whether a dispatch may go from ``old`` to ``new``: nothing leaves a done
    state, and a release once started is never undone (a restart resumes it)."""
    return new in _DISPATCH_ALLOWED[old]


def dispatch_sources(new: DispatchState) -> frozenset[DispatchState]:
    """The states a dispatch may be in to move to ``new`` (for a guarded UPDATE)."""
    return frozenset(old for old, allowed in _DISPATCH_ALLOWED.items() if new in allowed)


def run_may(old: RunState, new: RunState) -> bool:
    """Whether a run may go from ``old`` to ``new``: only an armed run ends."""
    return new in _RUN_ALLOWED[old]


def run_sources(new: RunState) -> frozenset[RunState]:
    """The states a run may be in to move to ``new`` (for a guarded UPDATE)."""
    return frozenset(old for old, allowed in _RUN_ALLOWED.items() if new in allowed)


@dataclass(frozen=True, order=True)
class DeliveryKey:
    run_id: int
    scenario_id: str
    city_id: str
    stage_id: str
    room_id: str
    part: Part
    # The run's identity across bots (bot.ids); "" for runs armed before it existed.
    run_key: str = ""

    def txn_id(self) -> str:
        """A deterministic transaction id: a resend after a crash (same device)
        is deduplicated by the homeserver instead of posted twice."""
        return delivery_txn_id(
            self.run_key,
            str(self.run_id),
            self.scenario_id,
            self.city_id,
            self.stage_id,
            self.room_id,
            self.part,
        )

    def content_tag(self) -> dict[str, str]:
        """The ``org.blossom.dispatch`` value every event for this delivery carries:
        global (no local run number, no room), with the run key, so recovery after
        a crash never takes an earlier run's event for this one."""
        tag = {
            "scenario": self.scenario_id,
            "city": self.city_id,
            "stage": self.stage_id,
            "part": str(self.part),
        }
        if self.run_key:
            tag["run"] = self.run_key
        return tag


def is_dispatch_of(content: object, tag: dict[str, str]) -> bool:
    """Whether an event's content carries exactly this dispatch tag (same run,
    scenario, city, stage and part). An event of another run of the scenario
    carries another run key and never matches."""
    if not isinstance(content, dict):
        return False
    found = content.get(DISPATCH_KEY)
    return isinstance(found, dict) and found == tag
