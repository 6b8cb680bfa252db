"""Lanes as the run manager sees them: which dispatch rows a steering target
means, what a lane is held, delayed or redirected by, and who a dispatch
reaches. Pure.

A dispatch row's ``city_id`` is its *lane* (``hk``, or ``hk/mongkok`` for a
pod) and its ``stage_id`` its *unit* (``spot``, or ``spot@front`` for a role
variant; synthetic stages start with ``!``) — :mod:`bot.scenario.timeline`.
For a scenario without pods or roles, lane and unit are exactly city and
stage, so everything here reduces to what the run manager did before.

A steering target is a city (every lane of it) or one pod (``hk/mongkok``).
A city's hold, delay and redirect apply to all its pods; a pod's own apply to
it alone and come on top (a pod's own redirect of a place wins, and a city's
redirect of a place reaches only the pods that read the city's place).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from datetime import timedelta

from bot.scenario.audience import Audience, lane_room_roles, lane_rooms, lanes
from bot.scenario.model import City, Place, Pod, Scenario
from bot.scenario.timeline import Dispatch, build_timeline, lane_id, split_lane, split_unit

__all__ = [
    "all_rooms",
    "city_of",
    "held",
    "lane_delay",
    "lane_overrides",
    "lanes_of",
    "listed_rooms",
    "member_role",
    "on_target",
    "pod_of",
    "stage_of",
    "unit_index",
]


def city_of(lane: str) -> str:
    """The city of a lane (``hk/mongkok`` → ``hk``)."""
    return split_lane(lane)[0]


def stage_of(unit: str) -> str:
    """The scenario stage of a unit (``spot@front`` → ``spot``; ``!abort`` as is)."""
    return split_unit(unit)[0]


def pod_of(scenario: Scenario, lane: str) -> tuple[City, Pod | None]:
    city_id, pod_id = split_lane(lane)
    city = scenario.city(city_id)
    return city, city.pod(pod_id) if pod_id is not None else None


def lanes_of(scenario: Scenario, target: str) -> list[str]:
    """Every lane a target means: a city's pods (the city itself without pods),
    or the one pod named. ``KeyError`` for an unknown city or pod."""
    city_id, pod_id = split_lane(target)
    city = scenario.city(city_id)
    if pod_id is not None:
        return [lane_id(city.id, city.pod(pod_id).id)]
    return [lane_id(city.id, p.id if p else None) for p in lanes(city)]


def on_target(lane: str, targets: Iterable[str]) -> bool:
    """Whether a lane is meant by one of ``targets`` (itself, or its city)."""
    return any(t == lane or t == city_of(lane) for t in targets)


def held(holds: Set[str], lane: str) -> bool:
    """A lane is held by its own hold or its city's."""
    return lane in holds or city_of(lane) in holds


def lane_delay(delays: Mapping[str, timedelta], lane: str) -> timedelta | None:
    """What the lane's instants were moved by: its city's delays and its own (a
    ``!delay`` of the city moved every pod's rows; of a pod, that pod's)."""
    parts = [delays[key] for key in {city_of(lane), lane} if key in delays]
    return sum(parts, timedelta(0)) if parts else None


def lane_overrides(
    scenario: Scenario, overrides: Mapping[str, Mapping[str, Place]], lane: str
) -> dict[str, Place] | None:
    """The redirects a lane renders with: the city's, for the places the pod does
    not define itself (it never read the city's place), then the pod's own."""
    city, pod = pod_of(scenario, lane)
    own_places = pod.places if pod is not None else {}
    merged = {k: v for k, v in overrides.get(city.id, {}).items() if k not in own_places}
    if pod is not None:
        merged.update(overrides.get(lane, {}))
    return merged or None


def unit_index(scenario: Scenario) -> dict[tuple[str, str], Dispatch]:
    """(lane, unit) → the timeline's dispatch: its rooms and audiences."""
    return {(d.lane, d.unit): d for d in build_timeline(scenario)}


def listed_rooms(
    city: City, pod: Pod | None, audiences: tuple[Audience, ...] | None
) -> tuple[str, ...]:
    """The lane's listed rooms for these audiences (None: every room of the lane)."""
    roles = lane_room_roles(city, pod)
    return tuple(r for r in lane_rooms(city, pod) if audiences is None or roles.get(r) in audiences)


def all_rooms(city: City) -> tuple[str, ...]:
    """Every room a city lists: its own, or (a city with pods) every pod's."""
    return (*city.rooms, *(r for pod in city.all_pods for r in pod.rooms))


def member_role(scenario: Scenario, role_id: str | None) -> Audience:
    """A private participant's audience: their role if the scenario has it, else
    none (a role of another scenario, or one removed from the file)."""
    return role_id if role_id in scenario.role_ids else None
