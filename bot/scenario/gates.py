"""Quorum gates per pod and per role: the decision, given the check-ins. Pure.

``require: {checkins: N}`` counts the whole city, as it always did; ``per: pod``
gates each pod on its own count; ``role: front`` counts only check-ins of
people (and rooms) with that role. The run manager counts check-ins per
(pod, role) — each person once, in the pod they were assigned and the role
they hold when the gate is checked — and asks :func:`gate_verdicts` what each
lane does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from bot.scenario.audience import lanes
from bot.scenario.model import City, Gate

Action = Literal["go", "hold", "skip", "abort"]

CheckinCounts = Mapping[tuple[str | None, str | None], int]
"""(pod id or None, role id or None) → how many distinct people checked in."""


@dataclass(frozen=True)
class GateVerdict:
    """What one lane (a pod, or a city without pods) does at a gated stage."""

    pod: str | None
    counted: int
    """The check-ins the gate counted for this lane."""
    needed: int
    action: Action
    """``go`` at or above quorum; else the gate's ``else`` (hold, skip, abort)."""


def _counted(gate: Gate, checkins: CheckinCounts, pod: str | None) -> int:
    return sum(
        count
        for (where, role), count in checkins.items()
        if (pod is None or where == pod) and (gate.role is None or role == gate.role)
    )


def gate_verdicts(gate: Gate, city: City, checkins: CheckinCounts) -> dict[str | None, GateVerdict]:
    """The verdict for every lane of ``city`` (pod id → verdict; ``None`` → the
    verdict of a city without pods).

    With ``per: pod`` each pod is counted on its own, so a pod below quorum gets
    the gate's ``else`` while the others go ahead. Without it the whole city is
    counted (every pod's check-ins together) and every lane gets the same
    verdict. Check-ins of a pod the city does not have count only city-wide.
    """
    verdicts: dict[str | None, GateVerdict] = {}
    city_count = _counted(gate, checkins, None)
    for pod in lanes(city):
        pod_id = pod.id if pod is not None else None
        count = _counted(gate, checkins, pod_id) if gate.per == "pod" and pod_id else city_count
        action: Action = "go" if count >= gate.checkins else gate.otherwise
        verdicts[pod_id] = GateVerdict(pod_id, count, gate.checkins, action)
    return verdicts
