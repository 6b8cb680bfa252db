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
from bot.store import DispatchRow

_OUT = (DispatchState.RELEASED, DispatchState.RELEASING)


def latest_released(scenario: Scenario, rows: Iterable[DispatchRow], city_id: str) -> str:
    """The city's latest released scenario stage ("" before the first)."""
    order = {s.id: i for i, s in enumerate(scenario.stages)}
    released = [
        d.stage_id for d in rows if d.city_id == city_id and d.stage_id in order and d.state in _OUT
    ]
    return max(released, key=order.__getitem__) if released else ""


def counted_by_next_gate(scenario: Scenario, latest: str) -> bool:
    """Whether a check-in against ``latest`` is counted: by the next stage's gate,
    or (no gate ahead) by the head count, which no gate contradicts."""
    ids = [s.id for s in scenario.stages]
    ahead = scenario.stages[ids.index(latest) + 1 :] if latest in ids else scenario.stages
    gated = [i for i, s in enumerate(ahead) if s.require is not None]
    return not gated or gated[0] == 0
