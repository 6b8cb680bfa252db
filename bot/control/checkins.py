"""What a check-in counts for. Pure.

A check-in is recorded against the city's latest released stage. A gate on a
stage counts the check-ins recorded against the stage just before it
(``bot.runs.instant.gate_count``). So a check-in made now counts for the next gate
only if that gate is on the very next stage; if a gate lies further ahead, it
will not count this check-in (the participant must check in again after a later
stage). The acknowledgement and ``!status`` follow exactly this rule.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.ledger import DispatchState
from bot.scenario import Scenario
from bot.scenario.timeline import split_lane, split_unit
from bot.store import DispatchRow

_OUT = (DispatchState.RELEASED, DispatchState.RELEASING)


def latest_released(scenario: Scenario, rows: Iterable[DispatchRow], city_id: str) -> str:
    """The latest released scenario stage ("" before the first) of a city (any
    of its pods and role variants) or of one pod (``hk/mongkok``). Rows are per
    lane and unit (``hk/mongkok``, ``spot@front``: bot.scenario.timeline)."""
    order = {s.id: i for i, s in enumerate(scenario.stages)}
    released = [
        split_unit(d.stage_id)[0]
        for d in rows
        if city_id in (d.city_id, split_lane(d.city_id)[0])
        and split_unit(d.stage_id)[0] in order
        and d.state in _OUT
    ]
    return max(released, key=order.__getitem__) if released else ""


def counted_by_next_gate(scenario: Scenario, latest: str) -> bool:
    """Whether a check-in against ``latest`` is counted: by the next stage's gate,
    or (no gate ahead) by the head count, which no gate contradicts."""
    ids = [s.id for s in scenario.stages]
    ahead = scenario.stages[ids.index(latest) + 1 :] if latest in ids else scenario.stages
    gated = [i for i, s in enumerate(ahead) if s.require is not None]
    return not gated or gated[0] == 0
