"""What a release is: the delivery types the dispatcher takes and gives. Pure.

A :class:`Release` is one (run, city, stage) ready to go: its rooms and its
rendered parts. An :class:`Outcome` is what happened to it, room by room.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.ledger import DeliveryKey, Part


@dataclass(frozen=True)
class Message:
    """One part of a stage, rendered, without the dispatch tag (added per room)."""

    part: Part
    event_type: str
    content: Mapping[str, Any]


@dataclass(frozen=True)
class Release:
    """Everything needed to deliver one (run, city, stage), prepared before its instant."""

    run_id: int
    scenario_id: str
    city_id: str
    stage_id: str
    due_at: datetime
    rooms: tuple[str, ...]
    messages: tuple[Message, ...]
    # Retries stop here (the late policy's skip_after); None: keep trying.
    deadline: datetime | None = None
    # An abort: not stopped by cancel() (which it follows), never skipped.
    final: bool = False
    # The run's identity across bots (bot.ids), in every event's tag and txn id.
    run_key: str = ""
    stage_index: int = 0
    # With a crew: a retry going out after ``look_after`` (instant + grace) first
    # asks ``look`` whether another member delivered this part meanwhile (its
    # user id, or None); then it is not sent (bot/runs/covering.py).
    look_after: datetime | None = None
    look: Callable[[DeliveryKey], Awaitable[str | None]] | None = field(
        default=None, compare=False, repr=False
    )

    def key(self, room: str, part: Part) -> DeliveryKey:
        return DeliveryKey(
            self.run_id, self.scenario_id, self.city_id, self.stage_id, room, part, self.run_key
        )

    def keys(self) -> list[DeliveryKey]:
        return [self.key(room, m.part) for room in self.rooms for m in self.messages]

    def key_of(self) -> tuple[str, str]:
        """(city, stage): what a release is about, whatever rooms it has."""
        return (self.city_id, self.stage_id)

    def messages_parts(self) -> tuple[Part, ...]:
        return tuple(m.part for m in self.messages)


COVERED = "delivered by"
"""How a part another crew member delivered is recorded (``delivered by <id>``)."""


@dataclass
class Outcome:
    """What happened to one release, room by room (for the control-room report)."""

    release: Release
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    first_sent: datetime | None = None
    last_sent: datetime | None = None
    # Rooms another crew member delivered to (room -> its user id; "" when this
    # member does not serve the room at all): not sent by this one.
    covered: dict[str, str] = field(default_factory=dict)


def interleave(releases: Sequence[Release]) -> list[tuple[Release, str]]:
    """(release, room) pairs, round-robin across releases, so cities due at the
    same instant share the fan-out instead of one always going last. A room in
    several releases gets them in the order given (room tasks queue on the
    room's lock in this order), wherever it stands in each release's list."""
    pairs: list[tuple[Release, str]] = []
    longest = max((len(r.rooms) for r in releases), default=0)
    for i in range(longest):
        for r in releases:
            if i < len(r.rooms):
                pairs.append((r, r.rooms[i]))
    # Keep each room's slots, but fill them with its releases in the given order.
    queue: defaultdict[str, list[Release]] = defaultdict(list)
    for r in releases:
        for room in r.rooms:
            queue[room].append(r)
    taken: defaultdict[str, int] = defaultdict(int)
    ordered: list[tuple[Release, str]] = []
    for _, room in pairs:
        ordered.append((queue[room][taken[room]], room))
        taken[room] += 1
    return ordered
