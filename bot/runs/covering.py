"""The crew's fan-out: send what this member is on duty for, look before
covering, and leave other members' rooms alone. The shell around the pure
:func:`bot.runs.duty.split_by_duty`.

Only runs with a crew (``RunContext.crew``); a lone bot's fan-out is the
dispatcher's alone, exactly as before crews.

A standby (or a late sender) waits until its ``send_at``, reads each room once
(``CrewSide.recent``: one bounded ``/messages`` request, sanitised like every
page), and sends only the parts no crew member has delivered visibly
(:func:`bot.crew.look.find_copies`), through its own ledger: a part found is
recorded SKIPPED ("delivered by …") and never sent; a part missing goes through
the dispatcher as any other (exactly once per member). A room that cannot be
read is sent to: a room left without its stage is worse than a copy the crew
redacts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from bot.crew.look import find_copies
from bot.delivery import COVERED, Outcome, Release
from bot.ledger import DeliveryKey, DeliveryState, Part
from bot.runs import lanes
from bot.runs.context import RunContext
from bot.runs.duty import CrewSide, DutySplit, Follow, Wave, split_by_duty
from bot.runs.model import ArmedRun

log = logging.getLogger(__name__)

NOT_SERVED = "served by another crew member"
# Rooms read at once when a wave looks (one request each).
_LOOK_AT_ONCE = 8
# How often a standby looks again while the member on duty is still delivering
# (a quarter of grace, within these bounds): each look reads the missing rooms.
_FOLLOW_STEP_MIN = timedelta(seconds=1)
_FOLLOW_STEP_MAX = timedelta(seconds=5)
_CATCH_UP_STEP = timedelta(milliseconds=500)
# The least a retry waits for federation after an outage (each wait): a
# homeserver resumes sending to one that was down only after its backoff, and a
# loaded machine adds seconds (seen: 12 s after the return, at 1 s heartbeats).
_CATCH_UP_AT_LEAST = timedelta(seconds=30)


def split(
    ctx: RunContext,
    crew: CrewSide,
    armed: ArmedRun,
    releases: Sequence[Release],
    *,
    now: datetime,
    instant: datetime | None = None,
) -> DutySplit:
    """This member's part in ``releases``; ``instant``: the decision's moment
    when it is not each stage's own time (!resume, !release, an abort)."""
    joined = {room: crew.joined(room) for r in releases for room in r.rooms}
    view = crew.view()
    if log.isEnabledFor(logging.DEBUG):
        at = instant or (releases[0].due_at if releases else now)
        log.debug(
            "duty at %s: up %s; joined %s",
            at.isoformat(),
            sorted(m for m in crew.crew.members if not view.is_down(m, at)),
            {room: sorted(members) for room, members in joined.items()},
        )
    return split_by_duty(
        releases,
        view=view,
        me=crew.me,
        order_of=lambda lane: crew.crew.order_for(armed.scenario.city(lanes.city_of(lane))),
        joined=joined,
        grace=armed.scenario.failover.grace,
        now=now,
        instant_of=lambda r: instant if instant is not None else r.due_at,
        digest=armed.loaded.sha256,
        missed=crew.missed,
    )


async def fan_out(
    ctx: RunContext,
    crew: CrewSide,
    armed: ArmedRun,
    releases: Sequence[Release],
    plan: DutySplit,
    *,
    started: asyncio.Event | None = None,
    priority: bool = False,
) -> list[Outcome]:
    """Carry out ``plan`` for ``releases``; one merged outcome per release, as
    the dispatcher would return for them."""
    for rel, rooms in plan.elsewhere:
        await _skip(ctx, rel, rooms, rel.messages_parts(), NOT_SERVED)
    looking = _looker(ctx, crew, armed)
    waves = [
        asyncio.ensure_future(_wave(ctx, crew, armed, w, looking, priority=priority))
        for w in plan.waves
    ]
    try:
        outcomes: list[Outcome] = []
        if plan.now:
            now = [looking(r) for r in plan.now]
            outcomes += await ctx.dispatcher.release(now, priority=priority, started=started)
        elif started is not None:
            started.set()
        for got in await asyncio.gather(*waves):
            outcomes += got
    except BaseException:
        for w in waves:
            w.cancel()
        raise
    return merge(releases, outcomes, {r.key_of(): rooms for r, rooms in plan.elsewhere})


def _looker(ctx: RunContext, crew: CrewSide, armed: ArmedRun) -> Callable[[Release], Release]:
    """Releases whose retries look first once grace after their instant has
    passed (a retry that outlived an outage must not land on a standby's copy)."""
    grace = armed.scenario.failover.grace

    def looking(rel: Release) -> Release:
        async def look(key: DeliveryKey) -> str | None:
            await _caught_up(ctx, crew, rel.due_at)
            events = await crew.recent(key.room_id)
            if events is None:
                return None
            copies = find_copies(
                events,
                run=key.run_key,
                city=key.city_id,
                stage=key.stage_id,
                part=str(key.part),
                members=[m for m in crew.crew.members if m != crew.me],
            )
            return copies[0].sender if copies else None

        return replace(rel, look_after=rel.due_at + grace, look=look)

    return looking


async def _caught_up(ctx: RunContext, crew: CrewSide, instant: datetime) -> None:
    """After being cut off from its homeserver (its heartbeats not accepted) at
    any moment since the instant, a member's view of a room lags until
    federation has caught up: wait until its heartbeats are accepted again, then
    until it has read a heartbeat another member made since (bounded, each wait
    on its own; not at all when no other member was up at the instant, since
    then nobody could have covered). The others' events made during the outage
    reach its homeserver first, in order (a covering copy among them); a
    heartbeat made after it was back comes after them."""
    if not crew.cut_off_since(instant):  # not just "now": it may be back already
        return
    view = crew.view()
    others = [m for m in crew.crew.members if m != crew.me and not view.is_down(m, instant)]
    bound = max(2 * crew.crew.down_after, _CATCH_UP_AT_LEAST)
    until = ctx.clock.now() + bound
    while crew.missed(ctx.clock.now()) and ctx.clock.now() < until:
        await ctx.clock.sleep_until(ctx.clock.now() + _CATCH_UP_STEP)
    # From when it is back: an outage longer than the bound must not leave no
    # time for federation (it used to look at once, and re-sent).
    back = ctx.clock.now()
    until = back + bound
    while others and not crew.heard_since(back) and ctx.clock.now() < until:
        await ctx.clock.sleep_until(ctx.clock.now() + _CATCH_UP_STEP)


async def _wave(
    ctx: RunContext,
    crew: CrewSide,
    armed: ArmedRun,
    wave: Wave,
    looking: Callable[[Release], Release],
    *,
    priority: bool,
) -> list[Outcome]:
    rel = wave.release
    await armed.clock.sleep_until(wave.send_at)
    if ctx.armed.get(rel.run_id) is not armed or ctx.dispatcher.stopping:
        return []
    missing, covered = await _look(ctx, crew, rel, rel.rooms)
    grace = armed.scenario.failover.grace
    follow = Follow(grace, len(rel.rooms) * len(rel.messages), rel.due_at)
    follow = follow.seen(_count(missing), armed.clock.now())
    step = min(max(grace / 4, _FOLLOW_STEP_MIN), _FOLLOW_STEP_MAX)
    # An abort's stop message is covered at grace, as always: a second copy of
    # "stop" costs nothing next to a stop that arrives a grace late.
    # ``patient`` first: the members ahead are asked about (perhaps a read)
    # only while waiting is still an option, and not while copies keep coming.
    while (
        not rel.final
        and follow.patient(armed.clock.now())
        and (follow.moved or await _ahead_up(ctx, crew, armed, rel, missing))
    ):
        await armed.clock.sleep_until(armed.clock.now() + step)
        if ctx.armed.get(rel.run_id) is not armed or ctx.dispatcher.stopping:
            return [Outcome(rel, covered=covered)]
        still, more = await _look(ctx, crew, rel, tuple(missing))
        left = {room: [p for p in parts if p in missing[room]] for room, parts in still.items()}
        missing = {room: parts for room, parts in left.items() if parts}
        covered.update(more)
        follow = follow.seen(_count(missing), armed.clock.now())
    log.info(
        "run %d: %s/%s rank %d looked in %d rooms: %d already delivered by the crew",
        rel.run_id,
        rel.city_id,
        rel.stage_id,
        wave.rank,
        len(rel.rooms),
        len(rel.rooms) - len(missing),
    )
    groups: dict[tuple[Part, ...], list[str]] = {}
    for room, parts in missing.items():
        groups.setdefault(tuple(parts), []).append(room)
    sends = [
        looking(
            replace(
                rel, rooms=tuple(rooms), messages=tuple(m for m in rel.messages if m.part in parts)
            )
        )
        for parts, rooms in groups.items()
    ]
    outcomes = await ctx.dispatcher.release(sends, priority=priority) if sends else []
    outcomes.append(Outcome(rel, covered=covered))
    return outcomes


def _count(missing: dict[str, list[Part]]) -> int:
    return sum(len(parts) for parts in missing.values())


async def _ahead_up(
    ctx: RunContext, crew: CrewSide, armed: ArmedRun, rel: Release, rooms: Collection[str]
) -> bool:
    """Whether a member ahead of this one for one of ``rooms`` is up now
    (heartbeats are judged on the bot's own clock, not a drill's). When none
    seems up, the control rooms are read once more first: this bot's sync may
    lag behind their heartbeats (held for its own fan-out, or the long sync
    after it; benchmarks.scaleout), and a member counted down by mistake has
    the rooms it is still sending to sent twice."""

    def seen_up() -> bool:
        view, now = crew.view(), ctx.clock.now()
        order = crew.crew.order_for(armed.scenario.city(lanes.city_of(rel.city_id)))
        digest = armed.loaded.sha256
        return any(
            view.ahead_up(crew.me, order=order, joined=crew.joined(room), at=now, digest=digest)
            for room in rooms
        )

    if seen_up():
        return True
    await crew.refresh()
    return seen_up()


async def _look(
    ctx: RunContext, crew: CrewSide, rel: Release, rooms: Sequence[str]
) -> tuple[dict[str, list[Part]], dict[str, str]]:
    """Read each room once: the parts no other member has delivered visibly, by
    room (rooms with none left out), and the rooms found covered, by whom. A
    part found is recorded SKIPPED. A room that cannot be read is all missing."""
    slots = asyncio.Semaphore(_LOOK_AT_ONCE)

    async def read(room: str) -> list[object] | None:
        async with slots:
            return await crew.recent(room)

    seen = await asyncio.gather(*(read(room) for room in rooms))
    missing: dict[str, list[Part]] = {}
    covered: dict[str, str] = {}
    for room, events in zip(rooms, seen, strict=True):
        parts = list(rel.messages_parts())
        if events is None:
            log.warning("run %d: could not read %s before covering; sending", rel.run_id, room)
        else:
            for part in rel.messages_parts():
                copies = find_copies(
                    events,
                    run=rel.run_key,
                    city=rel.city_id,
                    stage=rel.stage_id,
                    part=str(part),
                    members=crew.crew.members,
                )
                # A copy of this member's own (a send before a crash) is the
                # dispatcher's to recognise in its ledger.
                others = [c for c in copies if c.sender != crew.me]
                if others and len(others) == len(copies):
                    parts.remove(part)
                    covered[room] = others[0].sender
                    await _skip(ctx, rel, (room,), (part,), f"{COVERED} {others[0].sender}")
        if parts:
            missing[room] = parts
    return missing, covered


async def _skip(
    ctx: RunContext, rel: Release, rooms: Sequence[str], parts: Sequence[Part], why: str
) -> None:
    """Record parts this member does not send as SKIPPED (only PENDING rows:
    a part it already sent stays SENT)."""
    now = ctx.clock.now()
    for room in rooms:
        for part in parts:
            key = rel.key(room, part)
            row = await ctx.store.ledger.delivery(key)
            if row is not None and row.state is DeliveryState.PENDING:
                await ctx.store.ledger.transition(key, DeliveryState.SKIPPED, now=now, error=why)


def merge(
    releases: Sequence[Release],
    outcomes: Sequence[Outcome],
    elsewhere: dict[tuple[str, str], tuple[str, ...]],
) -> list[Outcome]:
    """One outcome per original release from the outcomes of its parts."""
    merged = {r.key_of(): Outcome(r) for r in releases}
    for o in outcomes:
        into = merged.get(o.release.key_of())
        if into is None:
            continue
        for room in o.delivered:
            if room not in into.delivered and room not in o.covered:
                into.delivered.append(room)
        into.failed.update(o.failed)
        for room, why in o.skipped.items():
            if why.startswith(COVERED):  # a retry found another member's copy
                into.covered[room] = why.removeprefix(COVERED).strip()
            else:
                into.skipped[room] = why
        into.covered.update(o.covered)
        for stamp in (o.first_sent, o.last_sent):
            if stamp is not None:
                into.first_sent = min(into.first_sent or stamp, stamp)
                into.last_sent = max(into.last_sent or stamp, stamp)
    for key, rooms in elsewhere.items():
        if key in merged:
            merged[key].covered.update({room: "" for room in rooms})
    for o in merged.values():
        for room in o.covered:
            # A room covered by the crew for one part but sent another by this
            # member counts once, as delivered.
            if room in o.delivered:
                o.skipped.pop(room, None)
    return list(merged.values())
