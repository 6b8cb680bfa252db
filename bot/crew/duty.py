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

And for the control room, the **speaker** (the one that replies and reports):
the first member in the config's order that is up, when every member ahead of
it is known down. Right after a member starts listening, another member it has
not yet heard from is *unknown* — neither up nor down — until it is heard or
the start-up window passes (:class:`Listening`); while one ahead of a member is
unknown, whether that member speaks is undecided (:meth:`CrewView.speaks`), so
no member speaks or falls silent on a guess. After a partition,
when two copies of a dispatch are visible in a room, the member later in the
city's order redacts its own (:func:`redactor`).

The member whose view this is (``me``) always counts itself alive: it is running.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.crew.members import Crew, Member

UP, DOWN, UNKNOWN = "up", "down", "unknown"
"""A member's status for the speaker question (:meth:`CrewView.status`)."""


@dataclass(frozen=True)
class Listening:
    """Since when this member has listened to the crew (its start), for the
    start-up rule: until ``since + window`` a member not *heard* — no sighting
    from within one crew interval before ``since`` or later — is unknown.

    ``since`` ``None``: not listening yet (its own heartbeat is not out, so the
    others cannot have answered it); every other member is unknown.
    """

    since: datetime | None
    window: timedelta

    def open(self, at: datetime) -> bool:
        return self.since is None or at < self.since + self.window


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
    """When this bot last read a control command, or started (see :meth:`Member.is_down`)."""
    listening: Listening | None = None
    """The start-up rule; ``None``: none (every member is up or down)."""

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
        rank = len(self._ahead(member, order, joined, instant, digest))
        send_at = max(instant + rank * grace, now)
        late = send_at - instant > grace
        return Duty(member, rank, send_at, look_first=rank > 0 or late or missed_instant)

    def ahead_up(
        self,
        member: str,
        *,
        order: Sequence[str],
        joined: Collection[str],
        at: datetime,
        digest: str | None = None,
    ) -> bool:
        """Whether a member ahead of ``member`` in a room's duty order (joined,
        ready) is up at ``at``: it may still be sending there."""
        return member in order and bool(self._ahead(member, order, joined, at, digest))

    def _ahead(
        self,
        member: str,
        order: Sequence[str],
        joined: Collection[str],
        at: datetime,
        digest: str | None,
    ) -> tuple[str, ...]:
        """The ready joined members before ``member`` (in ``order``) in duty order."""
        return self.candidates(order[: list(order).index(member)], joined, at, digest)

    def heard(self, user_id: str) -> bool:
        """Whether ``user_id`` was heard since this member listens: a sighting no
        older than one crew interval before :attr:`Listening.since` (a heartbeat
        that old in the room's state was made while this member was starting; an
        older one may be a previous run's)."""
        listening, member = self.listening, self.members.get(user_id)
        if listening is None or user_id == self.me:
            return True
        if listening.since is None or member is None or member.seen_at is None:
            return False
        return member.seen_at >= listening.since - self.crew.heartbeat

    def status(self, user_id: str, at: datetime) -> str:
        """:data:`UP`, :data:`DOWN`, or :data:`UNKNOWN`: not heard yet while the
        start-up window is open (it may be starting too, its heartbeat not yet
        across the federation; or a previous run's heartbeat is all there is).
        Not heard when the window closes: down, until it is heard."""
        if user_id == self.me:
            return UP
        listening = self.listening
        if listening is not None and not self.heard(user_id):
            return UNKNOWN if listening.open(at) else DOWN
        return DOWN if self.is_down(user_id, at) else UP

    def speaks(self, user_id: str, at: datetime) -> bool | None:
        """Whether ``user_id`` is the speaker at ``at``; ``None``: undecided.

        It speaks when every member ahead of it in the config's order is down,
        and is silent once one of them is up; while one ahead is unknown (and
        none is up) it is undecided. Every member applies the same rule to what
        it sees, so none speaks or falls silent on a guess.
        """
        if user_id not in self.crew:
            return False
        undecided = False
        for ahead in self.crew.members[: self.crew.members.index(user_id)]:
            status = self.status(ahead, at)
            if status == UP:
                return False
            undecided = undecided or status == UNKNOWN
        return None if undecided else True

    def speaker(self, at: datetime) -> str | None:
        """The member that speaks in the control room: the first in the config's
        order that is up, every one ahead of it known down. ``None`` when that is
        undecided (:meth:`speaks`), or in a view without ``me`` where all are down."""
        for user_id in self.crew.members:
            status = self.status(user_id, at)
            if status == UNKNOWN:
                return None
            if status == UP:
                return user_id
        return None

    def decided(self, at: datetime) -> bool:
        """Whether the speaker is decided at ``at``: no unknown member comes
        before the first that is up (so :meth:`speaker` names one)."""
        return self.me is None or self.speaker(at) is not None

    def first_up(self, at: datetime) -> str | None:
        """The first member in the config's order that is not down at ``at``,
        unknown ones counted down: the speaker rule without the start-up rule,
        the fallback once a wait for a decision has run out."""
        return next((m for m in self.crew.members if not self.is_down(m, at)), None)


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
