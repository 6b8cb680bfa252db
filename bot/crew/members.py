"""The crew and its members: who covers for whom, in which order. Pure.

A :class:`Crew` is the deployment's list of bots (``crew.members`` in the config,
the same list in every member's config). A :class:`Member` is one of them as
*this* bot sees it at a moment: when it last heard a heartbeat, at what rate the
member said it beats, and which scenarios it says it has armed. Everything that
decides who sends where (:mod:`bot.crew.duty`) reads only these values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.config import CrewConfig
from bot.scenario import City, Scenario

DOWN_AFTER_BEATS = 3
"""A member whose latest heartbeat is older than this many intervals is down."""


@dataclass(frozen=True)
class Crew:
    """The bots that share the deployment's scenarios, most preferred first."""

    members: tuple[str, ...]
    heartbeat: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a crew has at least one member")
        if len(set(self.members)) != len(self.members):
            raise ValueError("a crew lists each member once")
        if self.heartbeat <= timedelta(0):
            raise ValueError("the heartbeat interval must be positive")

    @classmethod
    def solo(cls, user_id: str) -> Crew:
        """A crew of one: the bot alone, as Blossom worked before crews."""
        return cls((user_id,))

    @classmethod
    def from_config(cls, config: CrewConfig) -> Crew:
        return cls(config.members, timedelta(seconds=config.heartbeat_seconds))

    @property
    def down_after(self) -> timedelta:
        """How old a heartbeat at this crew's rate may be before its member is down."""
        return DOWN_AFTER_BEATS * self.heartbeat

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.members

    def order_for(self, city: City) -> tuple[str, ...]:
        """Who serves ``city``'s rooms, most preferred first: the scenario's
        ``crew`` for the city, else the config's order."""
        return city.crew if city.crew is not None else self.members


@dataclass(frozen=True)
class UnknownMembers:
    """A city's crew order names bots that are not in this bot's crew."""

    city: str
    unknown: tuple[str, ...]
    crew: tuple[str, ...]

    def __str__(self) -> str:
        names = ", ".join(self.unknown)
        noun = "is not a member" if len(self.unknown) == 1 else "are not members"
        return (
            f"city '{self.city}' names {names} in its crew order, which {noun} of this "
            f"bot's crew ({', '.join(self.crew)}); fix the city's crew in the scenario "
            "or crew.members in every bot's config"
        )


def unknown_members(scenario: Scenario, crew: Crew) -> list[UnknownMembers]:
    """The arm-time check: each city whose order names a bot outside ``crew``.

    The scenario file cannot know the deployment, so this runs at ``!arm``; an
    empty list means every city's order is made of crew members.
    """
    problems = []
    for city in scenario.cities:
        unknown = tuple(m for m in (city.crew or ()) if m not in crew)
        if unknown:
            problems.append(UnknownMembers(city.id, unknown, crew.members))
    return problems


@dataclass(frozen=True)
class Member:
    """One crew member as this bot sees it now (built by :func:`bot.crew.heartbeat.sighting`).

    ``seen_at`` is on *this* bot's clock; ``None`` means no heartbeat seen yet.
    ``interval`` is the rate the member announced (``None``: the crew's).
    """

    user_id: str
    seen_at: datetime | None = None
    interval: timedelta | None = None
    armed: frozenset[str] = frozenset()
    stopping: bool = False

    def is_down(self, crew: Crew, at: datetime, *, roll_call: datetime | None = None) -> bool:
        """Whether this member counts as down at ``at``.

        Down: never seen; said it was stopping; its heartbeat is older than three
        of the intervals it announced (never fewer than three of the crew's); or
        it has not answered a *roll call* — every member beats at once when it
        reads a control command, so one whose latest heartbeat predates the
        command ``roll_call`` by more than three crew intervals is gone, however
        slow the rate it announced while idle.
        """
        if self.seen_at is None or self.stopping:
            return True
        interval = max(self.interval or crew.heartbeat, crew.heartbeat)
        if at - self.seen_at > DOWN_AFTER_BEATS * interval:
            return True
        return (
            roll_call is not None and self.seen_at < roll_call and at - roll_call > crew.down_after
        )


def by_id(members: Iterable[Member]) -> dict[str, Member]:
    """Members keyed by user id (the last one wins)."""
    return {m.user_id: m for m in members}
