"""Private participants' pods against the city's pods now: who the bot (re)assigns.

A private participant keeps the pod the bot gave them (joining again keeps it).
But one registered before the city had pods, or whose pod was removed from the
file, has a pod that is not one of the city's: a pod city sends them nothing.
They are assigned by the same rule as a newcomer (:mod:`bot.scenario.assign`),
at ``!join`` again and when the run is armed. In a city without pods nobody has
one. Which pod anyone got is not logged: it stays in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from bot.scenario import City, Scenario
from bot.scenario.assign import AssignmentKey, PodLoad, assign_pod
from bot.store import Store

log = logging.getLogger(__name__)


def stale_pod(city: City, pod_id: str | None) -> bool:
    """Whether ``pod_id`` is not what a private participant of ``city`` should
    have: not one of its pods (None in a city with pods), or any in one without."""
    if not city.pods:
        return pod_id is not None
    return pod_id not in {p.id for p in city.all_pods}


def pod_loads(city: City, sizes: Mapping[str, int]) -> list[PodLoad]:
    """Every pod of ``city`` with its private participants now (``sizes``, from
    the store; a pod nobody is in is absent there) and its capacity."""
    return [PodLoad(p.id, sizes.get(p.id, 0), p.capacity) for p in city.all_pods]


def pick_pod(key: AssignmentKey, city: City, sizes: Mapping[str, int]) -> str | None:
    """The pod a newcomer to ``city`` joins; None when every pod is full."""
    return assign_pod(key, city.id, pod_loads(city, sizes))


async def assignment_key(store: Store, scenario_id: str, *, now: datetime) -> AssignmentKey:
    """The scenario's secret, made on its first join and kept until ``!purge``:
    the level order is the same across restarts (bot.scenario.assign)."""
    fresh = AssignmentKey.generate().secret
    return AssignmentKey(await store.participants.pod_key(scenario_id, fresh, now=now))


async def count_stale(store: Store, scenario: Scenario) -> int:
    """How many private participants :func:`reassign_stale` would (re)assign."""
    n = 0
    for city in scenario.cities:
        if city.direct:
            members = await store.participants.direct_members(scenario.id, city.id)
            n += sum(stale_pod(city, m.pod_id) for m in members)
    return n


async def reassign_stale(store: Store, scenario: Scenario, *, now: datetime) -> tuple[int, int]:
    """(Re)assign every private participant whose pod is stale, in the order
    they joined: (how many got a pod of their city or lost one of a city
    without pods, how many found every pod full and have none)."""
    moved = unplaced = 0
    for city in scenario.cities:
        if not city.direct:
            continue
        members = await store.participants.direct_members(scenario.id, city.id)
        stale = [m for m in members if stale_pod(city, m.pod_id)]
        if not stale:
            continue
        key = await assignment_key(store, scenario.id, now=now) if city.pods else None
        sizes = dict(await store.participants.pod_sizes(scenario.id, city.id))
        for m in stale:
            pod = pick_pod(key, city, sizes) if key is not None else None
            await store.participants.set_pod(scenario.id, city.id, m.user_id, pod)
            if pod is not None:
                sizes[pod] = sizes.get(pod, 0) + 1
            if pod is None and city.pods:
                unplaced += 1
            else:
                moved += 1
        log.info("%d private participants of %s reassigned a pod", len(stale), city.id)
    return moved, unplaced
