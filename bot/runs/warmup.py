"""Reading a crew member's rooms ahead of a look (bot/runs/covering.py).

A member's first ``/messages`` in a room it joined over federation makes its
homeserver fetch the history from before the join from another server (a
``/backfill`` per room): seconds per room, and a hang until the timeout when
that server is down — exactly when a standby is needed. Read once, the room is
local. So each member reads its rooms once ahead of time, off the release's
path, and the look at instant + grace reads locally.

When (why not at the invite): at ``!arm`` every room of the run this member is
joined to (duty may change before the instant, and it leaves the most time);
at each stage's preparation the rooms where it is a standby, which also
catches rooms joined after arming, runs restored after a restart and rooms
joined before this version. Reading at the invite would not: an older member
joined its rooms long ago. The crew link reads each room once per process
(bot/crew/link.py ``warm``), so the second pass costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.delivery import Release
from bot.runs import lanes
from bot.runs.context import RunContext
from bot.runs.duty import CrewSide
from bot.runs.model import ArmedRun

log = logging.getLogger(__name__)


async def at_arming(ctx: RunContext, crew: CrewSide, armed: ArmedRun) -> None:
    """Load the member list of every room of the run this member is joined to,
    then start reading each. Each stage's preparation needs the member lists
    before its instant (who else is joined decides duty) and waits for them:
    a fresh process (a restart, a standby just started) loaded them there, one
    request per room, and on a loaded pair its first room went out seconds
    after the instant (benchmarks.scaleout: 1,000 rooms, 4.3 s)."""
    rooms: list[str] = []
    try:
        for city in armed.scenario.cities:
            # As last resolved: arming just resolved them; no request at all here.
            for room in await ctx.served_rooms(armed, city.id, refresh=False):
                if room not in rooms and crew.me in crew.joined(room):
                    rooms.append(room)
    except Exception:  # only logged: each stage's preparation reads them anyway
        log.exception("run %d: could not list its rooms to read ahead", armed.run.id)
        return
    await crew.learn_members(rooms)  # bounded per room; a room not loaded is loaded again later
    crew.warm(rooms)


def standby_rooms(crew: CrewSide, armed: ArmedRun, prepared: Sequence[Release]) -> list[str]:
    """The rooms of ``prepared`` where this member is a standby (it will look)."""
    view = crew.view()
    grace = armed.scenario.failover.grace
    rooms: list[str] = []
    for rel in prepared:
        order = crew.crew.order_for(armed.scenario.city(lanes.city_of(rel.city_id)))
        for room in rel.rooms:
            duty = view.duty(
                crew.me,
                order=order,
                joined=crew.joined(room),
                instant=rel.due_at,
                grace=grace,
                now=rel.due_at,
            )
            if duty.rank and room not in rooms:
                rooms.append(room)
    return rooms
