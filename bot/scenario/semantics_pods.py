"""Cross-checks of pods, roles and the rooms that carry them (docs/organisers.md,
"Pods and roles"). Part of :func:`bot.scenario.semantics.check`.

Decisions written down here because validation enforces them:

* In a city with pods every room belongs to exactly one pod; the city lists no
  rooms of its own. A city-wide room would have to be told one pod's places
  (a leak) or none. A room in two pods, or in two cities, is an error.
* A pod reaches people through its rooms, or through private participants
  when its city is ``direct``; a pod with neither reaches nobody (an error).
* Role ids and city ids share the keys of a stage's text mapping, so they must
  differ; ``default`` is neither.
"""

from __future__ import annotations

from bot.scenario.model import City, RoomEntry, Scenario
from bot.scenario.source import Path

RESERVED_IDS = frozenset({"default"})  # the fallback key of a text mapping


def _roles_phrase(scenario: Scenario) -> str:
    ids = scenario.role_ids
    return f"roles: {', '.join(ids)}" if ids else "the scenario declares no roles"


def check_rooms(scenario: Scenario) -> list[tuple[Path, str]]:
    """Each room listed once in the whole scenario; cities without pods list rooms,
    cities with pods list them only under their pods."""
    problems: list[tuple[Path, str]] = []
    owner_of: dict[str, tuple[str, str | None]] = {}
    for index, city in enumerate(scenario.cities):
        base: Path = ("cities", index)
        if city.pods is not None and city.room_entries is not None:
            problems.append(
                (
                    (*base, "rooms"),
                    "a city with pods lists its rooms under its pods (each room belongs "
                    "to one pod, so that it only learns that pod's places)",
                )
            )
        listings: list[tuple[Path, str | None, tuple[str | RoomEntry, ...]]] = [
            ((*base, "rooms"), None, city.room_entries or ())
        ]
        for pod_index, pod in enumerate(city.pods or ()):
            listings.append(((*base, "pods", pod_index, "rooms"), pod.id, pod.room_entries))
        for path, pod_id, entries in listings:
            for room_index, entry in enumerate(entries):
                room = entry.room if isinstance(entry, RoomEntry) else entry
                here = (city.id, pod_id)
                owner = owner_of.get(room)
                if owner == here:
                    problems.append(((*path, room_index), f"room {room} is listed twice"))
                elif owner is not None:
                    # One room in two cities (or pods) would get every stage twice,
                    # and a pod room another pod's places: never what was meant.
                    problems.append(
                        ((*path, room_index), f"room {room} is already a room of {_owner(*owner)}")
                    )
                else:
                    owner_of[room] = here
    return problems


def _owner(city_id: str, pod_id: str | None) -> str:
    return f"city '{city_id}'" if pod_id is None else f"pod '{pod_id}' of city '{city_id}'"


def check_pods(scenario: Scenario) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    for index, city in enumerate(scenario.cities):
        first: dict[str, int] = {}
        for pod_index, pod in enumerate(city.pods or ()):
            path: Path = ("cities", index, "pods", pod_index)
            if pod.id in first:
                problems.append(
                    (
                        (*path, "id"),
                        f"duplicate pod id '{pod.id}' in city '{city.id}' "
                        f"(also pods[{first[pod.id]}])",
                    )
                )
            first.setdefault(pod.id, pod_index)
            if not pod.room_entries and not city.direct:
                problems.append(
                    (
                        path,
                        f"pod '{pod.id}' has no rooms and city '{city.id}' takes no private "
                        "participants: it would reach nobody (add rooms, or direct: true)",
                    )
                )
            if pod.capacity is not None and not city.direct:
                problems.append(((*path, "capacity"), "capacity needs direct: true on the city"))
    return problems


def check_roles(scenario: Scenario) -> list[tuple[Path, str]]:
    """Role ids unique and apart from city ids; every role named is declared."""
    problems: list[tuple[Path, str]] = []
    cities = {c.id for c in scenario.cities}
    first: dict[str, int] = {}
    for index, role in enumerate(scenario.roles or ()):
        path: Path = ("roles", index, "id")
        if role.id in RESERVED_IDS or role.id == "none":  # "!role none" clears one's role
            problems.append((path, f"'{role.id}' is reserved and cannot be a role id"))
        elif role.id in cities:
            problems.append(
                (path, f"role id '{role.id}' is also a city id (stage text keys name both)")
            )
        if role.id in first:
            problems.append((path, f"duplicate role id '{role.id}' (also roles[{first[role.id]}])"))
        first.setdefault(role.id, index)
    known = set(scenario.role_ids)
    for index, city in enumerate(scenario.cities):
        problems += _room_roles(scenario, ("cities", index, "rooms"), city.room_entries, known)
        for pod_index, pod in enumerate(city.pods or ()):
            path = ("cities", index, "pods", pod_index, "rooms")
            problems += _room_roles(scenario, path, pod.room_entries, known)
    for index, stage in enumerate(scenario.stages):
        seen: set[str] = set()
        for position, role_id in enumerate(stage.roles or ()):
            path = ("stages", index, "roles", position)
            if role_id not in known:
                problems.append((path, f"no role '{role_id}' ({_roles_phrase(scenario)})"))
            elif role_id in seen:
                problems.append((path, f"role '{role_id}' is listed twice"))
            seen.add(role_id)
        gate = stage.require
        if gate is not None and gate.role is not None and gate.role not in known:
            problems.append(
                (
                    ("stages", index, "require", "role"),
                    f"no role '{gate.role}' ({_roles_phrase(scenario)})",
                )
            )
        if gate is not None and gate.per == "pod" and not any(c.pods for c in scenario.cities):
            problems.append((("stages", index, "require", "per"), "per: pod, but no city has pods"))
    return problems


def _room_roles(
    scenario: Scenario,
    path: Path,
    entries: tuple[str | RoomEntry, ...] | None,
    known: set[str],
) -> list[tuple[Path, str]]:
    return [
        ((*path, i, "role"), f"no role '{e.role}' ({_roles_phrase(scenario)})")
        for i, e in enumerate(entries or ())
        if isinstance(e, RoomEntry) and e.role not in known
    ]


def city_lanes_missing(city: City, place: str) -> list[str]:
    """The pods of ``city`` that cannot resolve ``place`` (neither they nor the city define it)."""
    return [p.id for p in city.pods or () if place not in p.places and place not in city.places]
