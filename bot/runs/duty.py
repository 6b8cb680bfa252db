"""Who sends which room of a release, and when: the crew's duty applied to a
fan-out. Pure.

Without a crew (no ``crew`` in the config) nothing here runs: the bot sends
every room at the instant, as it always has. With one, each room of each
release gets this member's :class:`~bot.crew.duty.Duty` and lands in one of:

- **now**: on duty and not late — sent at once, as a lone bot does;
- a **wave**: a standby, or a late sender (back from a crash, a release
  decided after the instant + grace) — at ``send_at`` it looks in the room and
  sends only what no crew member has delivered (bot/runs/covering.py);
- **elsewhere**: rooms this member does not serve (not joined, not in the
  city's order): their ledger rows are skipped, naming why.

The "instant" of a release decided by the core group after its time
(``!resume``, ``!release``) is the decision, not the stage's original time:
every member decides at once, so duty is judged then, and a standby still
waits its grace instead of sending beside the member on duty.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from bot.crew.duty import CrewView
from bot.crew.members import Crew
from bot.delivery import Release


class CrewSide(Protocol):
    """What the run manager needs of the crew (bot/crew/link.py builds it)."""

    @property
    def crew(self) -> Crew: ...

    @property
    def me(self) -> str: ...

    def view(self) -> CrewView:
        """The crew as this bot sees it now (from the roster's heartbeats)."""
        ...

    def missed(self, at: datetime) -> bool:
        """Whether this bot's own heartbeats were not reaching the rooms at ``at``."""
        ...

    def cut_off_since(self, at: datetime) -> bool:
        """Whether this bot's own heartbeats were not reaching the rooms at some
        moment after ``at`` (they may be accepted again by now)."""
        ...

    async def refresh(self) -> None:
        """Read the others' heartbeats from the control rooms' state now (one
        bounded request per control room, at most once a second; never
        raises): this bot's sync may lag behind them."""
        ...

    def heard_since(self, at: datetime) -> bool:
        """Whether a heartbeat another member made after ``at`` has been read."""
        ...

    def joined(self, room_id: str) -> frozenset[str]:
        """The crew members joined to ``room_id``, as this bot's client knows it."""
        ...

    async def learn_members(self, room_ids: Sequence[str]) -> None:
        """Make :meth:`joined` complete for these rooms (before an instant)."""
        ...

    def warm(self, room_ids: Sequence[str]) -> None:
        """Start reading each room once, in the background, so a later look
        reads locally (bot/runs/warmup.py); returns at once, never raises. A
        room that cannot be read is only logged, and read again next time."""
        ...

    async def recent(self, room_id: str) -> list[object] | None:
        """The room's recent events as raw dicts (one bounded request), or
        ``None`` if the room cannot be read."""
        ...

    def nudge(self) -> None:
        """What this bot's heartbeat says may have changed (armed, disarmed)."""
        ...


@dataclass(frozen=True)
class Wave:
    """Rooms of one release this member looks at, then covers, at ``send_at``."""

    send_at: datetime
    release: Release
    rank: int


@dataclass(frozen=True)
class DutySplit:
    now: tuple[Release, ...] = ()
    waves: tuple[Wave, ...] = ()
    # (release, rooms this member does not serve)
    elsewhere: tuple[tuple[Release, tuple[str, ...]], ...] = ()


def split_by_duty(
    releases: Sequence[Release],
    *,
    view: CrewView,
    me: str,
    order_of: Callable[[str], Sequence[str]],
    joined: Mapping[str, Collection[str]],
    grace: timedelta,
    now: datetime,
    instant_of: Callable[[Release], datetime],
    digest: str | None = None,
    missed: Callable[[datetime], bool] = lambda _at: False,
) -> DutySplit:
    """Split ``releases`` room by room by this member's duty.

    ``order_of(city)`` is the city's crew order, ``joined[room]`` the crew
    members joined to each room (a room missing from it: only ``me``).
    """
    now_out: list[Release] = []
    waves: list[Wave] = []
    elsewhere: list[tuple[Release, tuple[str, ...]]] = []
    for rel in releases:
        instant = instant_of(rel)
        was_missed = missed(instant)
        order = order_of(rel.city_id)
        at_once: list[str] = []
        later: dict[tuple[datetime, int], list[str]] = {}
        other: list[str] = []
        for room in rel.rooms:
            duty = view.duty(
                me,
                order=order,
                joined=joined.get(room, (me,)),
                instant=instant,
                grace=grace,
                now=now,
                digest=digest,
                missed_instant=was_missed,
            )
            if duty.rank is None or duty.send_at is None:
                other.append(room)
            elif not duty.look_first:
                at_once.append(room)
            else:
                later.setdefault((duty.send_at, duty.rank), []).append(room)
        if at_once:
            now_out.append(replace(rel, rooms=tuple(at_once)))
        for (send_at, rank), rooms in sorted(later.items()):
            waves.append(Wave(send_at, replace(rel, rooms=tuple(rooms)), rank))
        if other:
            elsewhere.append((rel, tuple(other)))
    return DutySplit(tuple(now_out), tuple(waves), tuple(elsewhere))


@dataclass(frozen=True)
class Follow:
    """A standby's patience with the members ahead of it, between its looks.

    At its ``send_at`` a standby may find the member on duty half-way through a
    fan-out that takes longer than grace (a loaded homeserver, a replicated crew
    whose every event also federates). Covering then sends the rooms the member
    on duty is about to send too: both copies land (measured: 2,315 rooms twice
    in 5 rounds of 1,000 rooms, benchmarks.scaleout). So it waits while copies
    keep appearing, look after look, or while a member ahead is up; it covers
    what is missing once a look finds nothing new and every member ahead is
    down, or once no new copy has appeared for ``stall`` (the scenario's grace:
    a member up but not delivering, or cut off from the rooms' servers, is
    covered as promptly as before). Copies count as a sign of life because
    heartbeats cross a loaded federation late (seen: 8 s, at 5 s heartbeats;
    a member then looks down while it sends). Not for an abort's stop
    messages: those are covered at grace, doubles or not.
    """

    stall: timedelta
    missing: int
    """Parts still missing at the last look (at first: every part of the wave)."""
    progress_at: datetime
    """When a new copy was last seen (at first: the instant)."""
    moved: bool = False
    """The last look found copies the one before it had not: the member ahead
    is still delivering, whatever its heartbeats (late across a loaded
    federation, say). Not after the first look: what it finds may be all that
    a member that died had sent."""
    looks: int = 0

    def seen(self, missing: int, now: datetime) -> Follow:
        """After a look that found ``missing`` parts still missing."""
        looks = self.looks + 1
        if missing < self.missing:
            return replace(self, missing=missing, progress_at=now, moved=looks > 1, looks=looks)
        return replace(self, missing=missing, moved=False, looks=looks)

    def patient(self, now: datetime) -> bool:
        """Whether to look again later instead of covering now, if a member
        ahead is up: something is missing and a copy appeared within ``stall``."""
        return self.missing > 0 and now - self.progress_at < self.stall
