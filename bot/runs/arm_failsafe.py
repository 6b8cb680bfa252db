"""The dead-man's switch as ``!arm`` meets it (bot/runs/failsafe.py drives the
switch itself): whether it may be used, the rows to record with the run, and
scheduling them once the run exists. Kept apart from bot/runs/arming.py so the
commit reads as its steps."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.failsafe import DelayedItem
from bot.library import LoadedScenario
from bot.matrix.delayed import DelayedEventsError
from bot.runs.context import RunContext
from bot.runs.model import ArmedRun, ArmError, ArmPreview
from bot.store import StoreError

log = logging.getLogger(__name__)


async def check(ctx: RunContext, loaded: LoadedScenario, p: ArmPreview, drill: bool) -> list[str]:
    """The ``!arm`` lines of a scenario with ``failsafe.server`` (empty
    without); ArmError when the switch is refused: nothing is armed, since a
    run the organisers believe covered must not go ahead uncovered."""
    if not loaded.scenario.failsafe.server:
        return []
    if drill:
        return ["failsafe: not used in a drill (nothing is scheduled on the homeserver)"]
    switch = ctx.failsafe
    if switch is None:
        ok, lines = False, ["failsafe refused: this bot has no delayed events wired"]
    else:
        ok, lines = await switch.check(loaded, p)
    if not ok:
        raise ArmError(
            "\n".join(lines) + f"\nNothing was armed. Fix the homeserver, or remove "
            f"failsafe.server from {loaded.scenario.id} to arm without the switch."
        )
    return lines


async def plan(
    ctx: RunContext, loaded: LoadedScenario, p: ArmPreview, run_key: str
) -> tuple[Sequence[DelayedItem], str]:
    """The rows to record with the run, and the ``!arm`` line when they could
    not be planned (the homeserver or the crew could not be asked: the run is
    armed, and the organisers are told it is not covered)."""
    switch = ctx.failsafe
    assert switch is not None
    try:
        return await switch.plan(loaded, run_key, p.withheld), ""
    except (DelayedEventsError, StoreError) as err:
        log.error("%s: failsafe not planned: %s", loaded.scenario.id, err)
        return (), f"⚠️ failsafe NOT scheduled ({err}); the bot sends as usual"


async def schedule(ctx: RunContext, armed: ArmedRun, recorded: Sequence[DelayedItem]) -> str:
    switch = ctx.failsafe
    assert switch is not None
    try:
        return await switch.armed(armed, recorded)
    except (DelayedEventsError, StoreError) as err:
        # Recorded with the run: the bot's pass schedules them (retrying).
        log.error("run %d: failsafe not scheduled yet: %s", armed.run.id, err)
        return f"⚠️ failsafe not scheduled yet ({err}); retried every 20 s"
