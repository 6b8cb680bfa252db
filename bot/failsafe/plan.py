"""The dead-man's switch, planned: which delayed events a run needs, when to
schedule each, what steering must cancel or replace first, and what ``!arm`` says
about it. Pure: no I/O, no clock (every instant is passed in, on the wall clock —
``Clock.to_wall`` for a drill — since the homeserver counts real milliseconds).

For each (room, stage, part) the bot sends at the instant, the switch holds the
same event on the homeserver, due at **instant + after**: if no crew member is
left to send it, the server does. Once the room holds the dispatch, it is
cancelled. docs/crew.md, "The switch", says what it protects and what it reveals.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from operator import attrgetter
from typing import Any

from bot import DISPATCH_KEY
from bot.ledger import DeliveryKey
from bot.scenario.timeline import split_lane, split_unit

# A deferred delayed event is scheduled this long after the earliest moment the
# server's maximum allows, for the time a batch of requests takes.
SCHEDULE_SLACK = timedelta(minutes=1)
# Every delayed event must be on the server at least this long before its stage's
# instant (the bot may die at any moment before it).
MIN_LEAD = timedelta(minutes=1)
# The server fires what is due in order of due time only (ties in any order), and
# each due time is the server's clock at the request plus the delay asked for, so
# network jitter can swap two equal ones. Each later part in a room at one instant
# (the pin after the text) is due this much later, which keeps them in order.
PART_STAGGER = timedelta(seconds=1)


class DelayedState(StrEnum):
    PENDING = "pending"  # planned; not yet asked for (a deferred one)
    SCHEDULING = "scheduling"  # a request may be in flight (retry with the same txn id)
    SCHEDULED = "scheduled"  # the server holds it; the store holds its delay id
    CANCELLED = "cancelled"  # cancelled (the dispatch is in the room, or steering)
    SENT = "sent"  # the server sent it (or it was gone when cancelled: look in the room)
    FAILED = "failed"  # the server refused it; the organiser was told


# The states in which the server may still send it.
LIVE = frozenset({DelayedState.PENDING, DelayedState.SCHEDULING, DelayedState.SCHEDULED})

_ALLOWED: dict[DelayedState, frozenset[DelayedState]] = {
    DelayedState.PENDING: frozenset(
        {DelayedState.SCHEDULING, DelayedState.CANCELLED, DelayedState.FAILED}
    ),
    # SCHEDULING -> PENDING: a retryable failure; -> SENT: the server sent it at
    # once (SentAtOnce); -> CANCELLED: steering before the answer was stored.
    DelayedState.SCHEDULING: frozenset(
        {
            DelayedState.SCHEDULED,
            DelayedState.PENDING,
            DelayedState.FAILED,
            DelayedState.SENT,
            DelayedState.CANCELLED,
        }
    ),
    DelayedState.SCHEDULED: frozenset({DelayedState.CANCELLED, DelayedState.SENT}),
    # A replacement (!delay, !redirect, !resume) starts a new generation.
    DelayedState.CANCELLED: frozenset({DelayedState.PENDING}),
    DelayedState.FAILED: frozenset({DelayedState.PENDING}),
    DelayedState.SENT: frozenset(),
}


def delayed_may(old: DelayedState, new: DelayedState) -> bool:
    """Whether a delayed event's row may go from ``old`` to ``new``: nothing leaves
    SENT, and nothing is scheduled again without a new generation."""
    return new in _ALLOWED[old]


def delayed_sources(new: DelayedState) -> frozenset[DelayedState]:
    """The states a row may be in to move to ``new`` (for a guarded UPDATE)."""
    return frozenset(old for old, allowed in _ALLOWED.items() if new in allowed)


@dataclass(frozen=True)
class Target:
    """One delivery the switch covers: the same key, content and tag as the real
    send, and the stage's instant (wall clock)."""

    key: DeliveryKey
    instant: datetime


@dataclass(frozen=True)
class DelayedItem:
    """One delayed event to ask for: at ``schedule_at`` (now, or later when the
    server's maximum delay is shorter than the wait), due at ``due``."""

    key: DeliveryKey
    instant: datetime
    due: datetime
    schedule_at: datetime

    def delay_ms(self, now: datetime) -> int:
        """The delay to ask for at ``now``, computed just before each request so a
        long batch does not shift the due time."""
        return max(1, int((self.due - now) / timedelta(milliseconds=1)))


@dataclass(frozen=True)
class Limits:
    """The homeserver's limits (``/capabilities``); None where it did not say."""

    max_delay: timedelta | None
    max_scheduled: int | None

    @classmethod
    def from_ms(cls, max_delay_ms: int | None, max_scheduled: int | None) -> Limits:
        """From the server's ``/capabilities`` numbers (``bot.matrix.delayed.Support``)."""
        delay = timedelta(milliseconds=max_delay_ms) if max_delay_ms is not None else None
        return cls(delay, max_scheduled)


@dataclass(frozen=True)
class FailsafePlan:
    now: tuple[DelayedItem, ...]  # schedule at arming
    later: tuple[DelayedItem, ...]  # schedule at each schedule_at (deferred by the maximum)
    uncovered: tuple[Target, ...]  # instant + after too soon: the bot sends these alone
    peak: int  # most of this run's delayed events on the server at once
    problems: tuple[str, ...]  # reasons to refuse the failsafe (empty: fine)

    @property
    def needed(self) -> int:
        return len(self.now) + len(self.later)


def delayed_txn_id(key: DeliveryKey, generation: int) -> str:
    """The txn id of a delivery's delayed event: deterministic (a retry after a
    crash gets the server's cached answer), never the delivery's own (Synapse keys
    its transaction cache on the path without the query, so the real send would
    get the delay id back and send nothing), and new for every replacement (a
    reused id returns the old, cancelled, delay id)."""
    raw = f"{key.txn_id()}\x1fdelayed\x1f{generation}"
    return "blossom-delayed-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def delayed_content(content: Mapping[str, Any], key: DeliveryKey) -> dict[str, Any]:
    """The content to schedule: the real send's, with the same dispatch tag (as the
    dispatcher adds it), so the crew's look-first rule finds it like any copy."""
    return {**content, DISPATCH_KEY: key.content_tag()}


def check_after(
    after: timedelta,
    *,
    crew_size: int,
    grace: timedelta,
    fanout: timedelta = timedelta(0),
) -> str | None:
    """Why ``after`` is too short for this crew, or None. Every standby of rank
    1 … crew_size − 1 sends by instant + rank × grace; the server must come after
    the last of them, and after the member on duty's own fan-out (the ``!arm``
    pre-flight estimate), or it sends copies on top of theirs."""
    standbys = max(0, crew_size - 1)
    needed = standbys * grace + fanout
    if after > needed:
        return None
    parts = []
    if standbys:
        parts.append(f"{standbys} standby × grace {_short(grace)}")
    if fanout > timedelta(0):
        parts.append(f"the fan-out estimate {_short(fanout)}")
    why = " + ".join(parts) or "0s"
    return f"failsafe.after ({_short(after)}) must be longer than {why} = {_short(needed)}"


def plan_failsafe(
    targets: Iterable[Target],
    *,
    after: timedelta,
    now: datetime,
    limits: Limits,
    min_lead: timedelta = MIN_LEAD,
    slack: timedelta = SCHEDULE_SLACK,
) -> FailsafePlan:
    """The delayed events a run needs, at arming (``now``). ``targets`` come in the
    order the bot sends them (text before pin): that order is kept in each room."""
    now_items: list[DelayedItem] = []
    later: list[DelayedItem] = []
    uncovered: list[Target] = []
    problems: list[str] = []
    rank: dict[tuple[str, datetime], int] = {}
    max_delay = limits.max_delay
    if max_delay is not None and after + min_lead + slack > max_delay:
        problems.append(
            f"failsafe.after ({_short(after)}) leaves no time to schedule before the "
            f"instant within the homeserver's maximum delay ({_short(max_delay)})"
        )
    for target in targets:
        slot = (target.key.room_id, target.instant)
        rank[slot] = rank.get(slot, -1) + 1
        due = target.instant + after + rank[slot] * PART_STAGGER
        if due - now < min_lead:
            uncovered.append(target)
            continue
        schedule_at = now
        if max_delay is not None and due - now > max_delay:
            schedule_at = due - max_delay + slack
        item = DelayedItem(target.key, target.instant, due, schedule_at)
        (now_items if schedule_at == now else later).append(item)
    peak = peak_scheduled([*now_items, *later])
    # sorted() is stable: equal dues keep the given order.
    return FailsafePlan(
        tuple(sorted(now_items, key=attrgetter("due"))),
        tuple(sorted(later, key=attrgetter("due"))),
        tuple(uncovered),
        peak,
        tuple(problems),
    )


def peak_scheduled(items: Sequence[DelayedItem]) -> int:
    """Most items on the server at once, if none is cancelled before it is due
    (the bot dead): each lives from ``schedule_at`` to ``due``."""
    edges = sorted(
        [(i.schedule_at, 1) for i in items] + [(i.due, -1) for i in items],
        key=lambda edge: (edge[0], edge[1]),  # an ending frees its slot first
    )
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def arm_lines(plan: FailsafePlan, limits: Limits, *, existing: int) -> tuple[bool, list[str]]:
    """What ``!arm`` says about the switch before arming, and whether it may arm
    with it: counts only, never ids. ``existing``: the delayed events this account
    already has on the server (the cap is per user: drills and other runs count)."""
    problems = list(plan.problems)
    cap = limits.max_scheduled
    allows = (
        f"this server allows {cap} per user" if cap is not None else "the server's cap is unknown"
    )
    have = f", {existing} already scheduled" if existing else ""
    lines = [f"failsafe: needs {plan.needed} delayed events ({plan.peak} at once); {allows}{have}"]
    if cap is not None and plan.peak + existing > cap:
        problems.append(
            f"{plan.peak + existing} delayed events at once is over the cap of {cap}: raise "
            "experimental_features.msc4140_max_delayed_events_per_user on the homeserver, "
            "or arm without the failsafe"
        )
    if plan.later:
        first = min(i.schedule_at for i in plan.later)
        lines.append(
            f"failsafe: {len(plan.later)} are scheduled later (the server's maximum delay); "
            f"until {first:%Y-%m-%d %H:%M} UTC those stages are not covered"
        )
    if plan.uncovered:
        lines.append(
            f"failsafe: {len(plan.uncovered)} deliveries are too soon to cover "
            "(instant + after within a minute)"
        )
    lines.extend(f"failsafe refused: {p}" for p in problems)
    return not problems, lines


# -- steering -------------------------------------------------------------------------


class Steer(Enum):
    HOLD = "hold"  # cancel; !resume plans them again
    DELAY = "delay"  # cancel and replace at due + shift
    REDIRECT = "redirect"  # cancel and replace with the new content, same due
    ABORT = "abort"  # cancel
    DISARM = "disarm"  # cancel


@dataclass(frozen=True)
class DelayedRow:
    """What the pure layer sees of a stored delayed event (never its delay id)."""

    key: DeliveryKey
    generation: int
    state: DelayedState
    due: datetime
    instant: datetime


@dataclass(frozen=True)
class SteerPlan:
    cancel: tuple[DelayedRow, ...]  # first, before the command does anything else
    replace: tuple[DelayedRow, ...]  # then schedule these (next generation, new due)


def steer(
    rows: Iterable[DelayedRow],
    action: Steer,
    *,
    cities: Iterable[str] | None = None,
    stages: Iterable[str] | None = None,
    shift: timedelta = timedelta(0),
) -> SteerPlan:
    """What a steering command must cancel (and replace) before it acts, so a held
    or aborted stage can never be released by the server. ``cities`` / ``stages``:
    the ones the command affects (None: all). A replacement is the next generation
    (a new txn id) with the due moved by ``shift`` for ``!delay``."""
    city_set = set(cities) if cities is not None else None
    stage_set = set(stages) if stages is not None else None
    hit = tuple(
        row
        for row in rows
        if row.state in LIVE
        and (city_set is None or _meant(row.key.city_id, split_lane(row.key.city_id)[0], city_set))
        and (
            stage_set is None
            or _meant(row.key.stage_id, split_unit(row.key.stage_id)[0], stage_set)
        )
    )
    if action is Steer.DELAY:
        moved = tuple(
            replace(r, generation=r.generation + 1, due=r.due + shift, instant=r.instant + shift)
            for r in hit
        )
        return SteerPlan(hit, moved)
    if action is Steer.REDIRECT:
        return SteerPlan(hit, tuple(replace(r, generation=r.generation + 1) for r in hit))
    return SteerPlan(hit, ())


def _meant(key: str, whole: str, named: set[str]) -> bool:
    # A row's city column is a lane (``hk/mongkok``), its stage column a unit
    # (``spot@front``): a command naming the city or the stage means all of them.
    return key in named or whole in named


def after_release(rows: Iterable[DelayedRow], key: DeliveryKey) -> tuple[DelayedRow, ...]:
    """Once the room holds ``key``'s dispatch (sent by any crew member): the
    delayed events to cancel."""
    return tuple(r for r in rows if r.key == key and r.state in LIVE)


def blocking_purge(rows: Iterable[DelayedRow]) -> tuple[DelayedRow, ...]:
    """Rows the server may still send: cancel them before ``!purge`` forgets their
    delay ids (without the id nobody can cancel it, and it would fire)."""
    return tuple(r for r in rows if r.state in LIVE)


def _short(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"
