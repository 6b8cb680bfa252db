"""Gates across a crew: one quorum decision per city, counted once per person. Pure.

A city's quorum decision must be the same in all of its rooms, whichever member
sends to each. So the member on duty for the city (the first in its order that
is up and joined to any of its rooms) decides at the instant and publishes the
decision in the control room; the others follow it, and decide themselves only
when no decision has appeared by instant + grace. If several are published (a
partition), everyone follows the one from the member earliest in the city's
order, so the crew converges on one.

Check-ins seen by different members are counted once per person: the count is
the size of the union of the participants' user ids (crew members never count).
Members can share their sets as :func:`checkin_token` values, which match
exactly when the user ids do, without putting participants' ids in the control
room.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeGuard

from bot.crew.duty import CrewView, precedence
from bot.policy import Action

GATE_KEY = "org.blossom.gate"
"""Content key of a published gate decision (in an ``m.notice`` of the control room)."""

_MAX_ID = 255  # event ids, slugs and user ids are all shorter


@dataclass(frozen=True)
class GateDecision:
    """One member's quorum decision for one (run, city, stage)."""

    run: str
    city: str
    stage: str
    action: Action
    checkins: int
    needed: int
    member: str = ""

    def content(self) -> dict[str, Any]:
        """The value under :data:`GATE_KEY` (``member`` is the event's sender)."""
        return {
            "run": self.run,
            "city": self.city,
            "stage": self.stage,
            "action": str(self.action),
            "checkins": self.checkins,
            "needed": self.needed,
        }


def parse_gate_decision(event: object, *, members: Collection[str]) -> GateDecision | None:
    """A crew member's gate decision from a control-room event, or ``None``.

    Never raises: anything malformed, or from outside the crew, is ignored.
    """
    if not isinstance(event, Mapping) or event.get("sender") not in members:
        return None
    if "state_key" in event or event.get("type") != "m.room.message":
        return None
    content = event.get("content")
    body = content.get(GATE_KEY) if isinstance(content, Mapping) else None
    if not isinstance(body, Mapping):
        return None
    run, city, stage = (body.get(k) for k in ("run", "city", "stage"))
    checkins, needed = _count(body.get("checkins")), _count(body.get("needed"))
    if not (_id(run) and _id(city) and _id(stage)) or checkins is None or needed is None:
        return None
    try:
        action = Action(str(body.get("action")))
    except ValueError:
        return None
    return GateDecision(run, city, stage, action, checkins, needed, str(event["sender"]))


def _id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None


class Step(StrEnum):
    FOLLOW = "follow"  # act on a published decision
    DECIDE = "decide"  # count, decide, publish, act
    WAIT = "wait"  # look again at ``until``


@dataclass(frozen=True)
class GateStep:
    step: Step
    decision: GateDecision | None = None
    """The decision to follow (``FOLLOW``)."""
    until: datetime | None = None
    """When to look again (``WAIT``)."""


def city_on_duty(
    view: CrewView,
    order: Sequence[str],
    rooms_joined: Iterable[Collection[str]],
    at: datetime,
    digest: str | None = None,
) -> str | None:
    """The member on duty for a city: the first in its order that is up (and
    armed with ``digest``) and joined to at least one of the city's rooms."""
    joined = set().union(*rooms_joined)
    return view.on_duty(order, joined, at, digest)


def gate_step(
    *,
    me: str,
    city_duty: str | None,
    decisions: Iterable[GateDecision],
    run: str,
    city: str,
    stage: str,
    order: Sequence[str],
    instant: datetime,
    grace: timedelta,
    now: datetime,
) -> GateStep:
    """What ``me`` does about a gated (run, city, stage) at ``now``.

    ``decisions`` are those read from the control room (any run or city; the
    others are ignored), ``city_duty`` comes from :func:`city_on_duty` at the
    instant.
    """
    mine = [d for d in decisions if (d.run, d.city, d.stage) == (run, city, stage)]
    if mine:
        # Several only after a partition: the earliest member's wins, the
        # earliest it published if it published twice.
        first = min(enumerate(mine), key=lambda p: (precedence(order, p[1].member), p[0]))
        return GateStep(Step.FOLLOW, decision=first[1])
    if now < instant:
        return GateStep(Step.WAIT, until=instant)
    if city_duty == me or now >= instant + grace:
        return GateStep(Step.DECIDE)
    return GateStep(Step.WAIT, until=instant + grace)


def count_checkins(seen: Iterable[Iterable[str]], *, crew: Collection[str]) -> int:
    """Check-ins counted by several members (a set of ids or tokens from each),
    once per person; crew members' own ids are not check-ins."""
    union: set[str] = set()
    for ids in seen:
        union.update(ids)
    return len(union.difference(crew))


def checkin_token(run: str, user_id: str) -> str:
    """A participant's check-in as members may publish it: equal for the same
    run and user, and not the user id itself."""
    return hashlib.sha256(f"{run}\x1f{user_id}".encode()).hexdigest()
