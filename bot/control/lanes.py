"""Pods and roles as participants meet them: which pod and role a room or
person counts for, and until when a role may change. Pure.

Which pod a newcomer gets is :mod:`bot.runs.pods` (the rule itself is
:mod:`bot.scenario.assign`), also for the run at ``!arm``. A room's pod and
role come from the scenario's room listing (a pod room belongs to its pod;
``{room: …, role: …}`` gives it a role). A private participant counts for the
pod the bot assigned and the role they picked with ``!role``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.ledger import DispatchState
from bot.scenario import City, Scenario
from bot.scenario.audience import role_matters
from bot.scenario.timeline import split_lane, split_unit
from bot.store import DispatchRow

_OUT = (DispatchState.RELEASED, DispatchState.RELEASING)


@dataclass(frozen=True)
class Lane:
    """The pod and role a check-in counts for (None: the whole city / no role)."""

    pod_id: str | None = None
    role_id: str | None = None


NO_LANE = Lane()


def room_lane(city: City, room_id: str) -> Lane | None:
    """The pod and role a room of ``city`` listed by this id counts for: a pod
    room's pod and the role it is listed with; a city room's role (no pod).
    None: not listed by this id (by an alias, say)."""
    for pod, room, role in lane_entries(city):
        if room == room_id:
            return Lane(pod, role)
    return None


def lane_entries(city: City) -> list[tuple[str | None, str, str | None]]:
    """(pod id, listed room or alias, role) of every room entry of ``city``."""
    entries: list[tuple[str | None, str, str | None]] = [
        (None, room, city.room_roles.get(room)) for room in city.rooms
    ]
    for pod in city.all_pods:
        entries += [(pod.id, room, pod.room_roles.get(room)) for room in pod.rooms]
    return entries


def role_locked(
    scenario: Scenario,
    rows: Iterable[DispatchRow],
    city_id: str,
    *,
    now: datetime | None = None,
    lead: timedelta = timedelta(0),
) -> bool:
    """Whether a participant of ``city_id`` may no longer change role: a stage
    whose sending depends on the role (:func:`role_matters`) has been released
    (or is being released) for the city, or is due within ``lead`` of ``now``
    (the run decides who gets which text that long before the instant; a change
    then would be stored but not sent). A skipped one does not lock: the role
    still matters for the next."""
    mattering = {s.id for s in scenario.stages if role_matters(scenario, s)}
    # Rows are per lane and unit where the run splits them (``hk/mongkok``,
    # ``spot@front``: bot.scenario.timeline); any pod's release locks the city.
    for d in rows:
        if split_lane(d.city_id)[0] != city_id or split_unit(d.stage_id)[0] not in mattering:
            continue
        if d.state in _OUT:
            return True
        if now is not None and d.state is DispatchState.SCHEDULED and d.due_at <= now + lead:
            return True
    return False
