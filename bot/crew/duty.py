"""Duty: which crew member sends to which room, and when the others look. Pure.

Every member computes the same answers from what it sees (room membership,
heartbeats); there are no election messages. For one room and one dispatch:

- the member **on duty** is the first in the city's order that is joined to the
  room and ready (not down, and armed with the scenario when a digest is given);
  it sends at the instant;
- the **standby of rank k** (the k-th ready joined member after it) waits until
  instant + k × grace, looks in the room and sends only what is missing. Down
  members hold no rank, so when every member before one is down at the instant,
  that one is on duty and sends at the instant without waiting;
- a member that would send later than grace after the instant, or whose own
  heartbeats were not reaching the room at the instant (so the others may have
  covered for it), looks first too: a late copy must not land on a timely one.

And for the control room, the **speaker** (the one that replies and reports) is
the first member in the config's order that is not down. After a partition,
when two copies of a dispatch are visible in a room, the member later in the
city's order redacts its own (:func:`redactor`).

The member whose view this is (``me``) always counts itself alive: it is running.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.crew.members import Crew, Member


@dataclass(frozen=True)
class Duty:
    """One member's part in sending one dispatch to one room."""

    member: str
    rank: int | None
    """0 on duty, k the k-th standby, ``None``: it does not serve this room."""
    send_at: datetime | None = None
    """When to send (after looking, if ``look_first``); ``None`` without a rank."""
    look_first: bool = False
    """Read the room for this dispatch first and send only what is missing."""

    @property
    def on_duty(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class CrewView:
    """What one member knows of the crew: enough to decide duty for any room."""

    crew: Crew
    members: Mapping[str, Member] = field(default_factory=dict)
    """The members seen, by user id; one never seen may be absent (it is down)."""
    me: str | None = None
    roll_call: datetime | None = None
    """When this bot last read a control command (see :meth:`Member.is_down`)."""

    def is_down(self, user_id: str, at: datetime) -> bool:
        """Whether ``user_id`` counts as down at ``at``; ``me`` never does."""
        if user_id == self.me:
            return False
        member = self.members.get(user_id)
        return member is None or member.is_down(self.crew, at, roll_call=self.roll_call)

    def ready(self, user_id: str, at: datetime, digest: str | None = None) -> bool:
        """Up at ``at`` and, when ``digest`` is given, armed with that scenario.

        A member that refused to arm (its file differs) must not be on duty:
        it would never send, and the room would wait out a grace for nothing.
        """
        if self.is_down(user_id, at):
            return False
        if digest is None or user_id == self.me:
            return True
        member = self.members.get(user_id)
        return member is not None and digest in member.armed

    def candidates(
        self, order: Sequence[str], joined: Collection[str], at: datetime, digest: str | None
    ) -> tuple[str, ...]:
        """The members that may serve a room, in duty order: on duty first."""
        return tuple(m for m in order if m in joined and self.ready(m, at, digest))

    def on_duty(
        self,
        order: Sequence[str],
        joined: Collection[str],
        at: datetime,
        digest: str | None = None,
    ) -> str | None:
        """The member on duty for a room at ``at``; ``None`` if no joined member is up."""
        ready = self.candidates(order, joined, at, digest)
        return ready[0] if ready else None

    def duty(
        self,
        member: str,
        *,
        order: Sequence[str],
        joined: Collection[str],
        instant: datetime,
        grace: timedelta,
        now: datetime,
        digest: str | None = None,
        missed_instant: bool = False,
    ) -> Duty:
        """``member``'s part in sending a dispatch due at ``instant`` to a room.

        ``joined`` is the set of crew members joined to the room; liveness is
        judged at the instant. ``missed_instant``: this member's heartbeats were
        not reaching the room at the instant (it was stopped, or cut off; see
        :func:`bot.crew.heartbeat.missed`), so another may have covered for it.
        """
        if member not in order or member not in joined:
            return Duty(member, None)
        before = order[: list(order).index(member)]
        rank = len(self.candidates(before, joined, instant, digest))
        send_at = max(instant + rank * grace, now)
        late = send_at - instant > grace
        return Duty(member, rank, send_at, look_first=rank > 0 or late or missed_instant)

    def speaker(self, at: datetime) -> str | None:
        """The member that speaks in the control room: the first in the config's
        order that is not down at ``at`` (``None`` only in a view without ``me``)."""
        for user_id in self.crew.members:
            if not self.is_down(user_id, at):
                return user_id
        return None


def precedence(order: Sequence[str], user_id: str) -> tuple[int, str]:
    """Sort key of a member for one city: its place in the city's order; members
    outside the order come after it, by user id (so every member agrees)."""
    try:
        return (list(order).index(user_id), "")
    except ValueError:
        return (len(order), user_id)


def redactor(order: Sequence[str], first: str, second: str) -> str:
    """Of two members whose copies of one dispatch are visible in a room, the one
    that redacts its own copy: the one later in the city's order."""
    if first == second:
        raise ValueError("two different members are needed")
    return max(first, second, key=lambda m: precedence(order, m))
