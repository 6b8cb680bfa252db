"""`blossom demo --crew` (docs/crew.md): a second bot beside the first, a crew of
two on the demo's homeserver. The first member is opted in to each city room by
its moderator and invites the second, which accepts (a scenario lists the room).
Once the first stage has reached every city the first member stops cleanly (its
last heartbeat says so) and the second sends the rest at each instant, gates
included; every dispatch still arrives once.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from bot.app import run_bot
from bot.clock import ScaledClock
from bot.config import load_config
from bot.devtools.demo.action import Person, Run, wait_bot
from bot.devtools.demo.state import DemoState
from bot.devtools.demo.world import CREW_LOCALPART, DemoHomeserver
from bot.devtools.homeserver import RegisteredUser
from bot.scenario import Scenario

WriteConfig = Callable[[RegisteredUser, str], Path]
"""Writes a member's config (the user, its folder under the work directory)."""


async def register_crew(state: DemoState, hs: DemoHomeserver) -> RegisteredUser:
    crew_user = await hs.register(CREW_LOCALPART)
    await hs.exempt_from_rate_limits(crew_user.user_id)
    state.emit("setup", f"{crew_user.user_id}: registered, the crew's second member")
    return crew_user


async def start_crew(
    write_config: WriteConfig,
    state: DemoState,
    run: Run,
    organiser: Person,
    bots: list[RegisteredUser],
    control: str,
    clock: ScaledClock,
) -> None:
    """--crew: the second member, on the same code path; the first member (in
    each city room already) invites it, and it accepts: a scenario lists the room."""
    first, second = bots
    config_path = write_config(second, "bot2")
    (run.workdir / "bot2" / "scenarios").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        run.workdir / "bot" / "scenarios" / "demo.yaml",
        run.workdir / "bot2" / "scenarios" / "demo.yaml",
    )
    run.crew_task = asyncio.create_task(
        run_bot(load_config(config_path), clock, run.crew_stop), name="bot2"
    )
    await wait_bot(run, organiser.client.wait_member(control, second.user_id, what="bot two"))
    for city in state.cities:
        moderator = next(p for p in run.people if p.city_id == city.id)
        await wait_bot(
            run,
            moderator.client.wait_member(
                city.room_id, second.user_id, what=f"bot two ({city.name})"
            ),
        )
    state.emit(
        "crew",
        f"{second.user_id} joined the control room and every city room (invited by "
        f"{first.user_id}): a crew of two, {first.user_id} first",
    )


async def failover(
    state: DemoState,
    run: Run,
    scenario: Scenario,
    first: RegisteredUser,
    second: RegisteredUser,
) -> None:
    """--crew: once the first stage has reached every city, stop the first member
    (cleanly: its last heartbeat says so); the second sends the rest."""
    opening = min(scenario.stages, key=lambda s: s.at).id
    # The receipts come from the participants' syncs; there is no event to await.
    while not all(state.received(c.id, opening) for c in state.cities):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    state.emit("crew", f"stopping {first.user_id} after {opening}: {second.user_id} takes over")
    run.bot_stop.set()
    if run.bot_task is not None:
        await run.bot_task
    state.emit("crew", f"{first.user_id} stopped; the next stages come from {second.user_id}")
