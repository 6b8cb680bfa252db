"""From a scenario to its dispatches, each with its UTC instant: one per (city,
stage) — and, in a city with pods or a scenario with roles, one per (city, pod,
stage, role variant) (:mod:`bot.scenario.audience`).

Pure time arithmetic. A city's T0 is its own ``start`` (a local wall-clock time
in its zone) when it has one, else the scenario's ``start`` instant. A stage's
``at`` offset is an exact duration from T0; an absolute ``at`` is the same
instant in every city.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.scenario.audience import lanes, role_variants, variant_rooms
from bot.scenario.model import City, Scenario, Stage


@dataclass(frozen=True)
class Dispatch:
    """One stage due in one city, to be sent to that city's rooms at ``at``."""

    scenario_id: str
    city_id: str
    stage_id: str
    at: datetime
    """UTC, timezone-aware."""
    rooms: tuple[str, ...]
    stage_index: int
    """The stage's position in the file; orders stages due at the same instant."""
    pod_id: str | None = None
    """The pod whose places this dispatch carries; None: a city without pods."""
    variant: str | None = None
    """The role variant (:class:`bot.scenario.audience.Variant` ``key``); None:
    one text for everyone the stage reaches."""
    audiences: tuple[str | None, ...] = (None,)
    """Who gets it: role ids, ``None`` for people and rooms without a role."""

    @property
    def lane(self) -> str:
        """The ledger's city column: ``hk``, or ``hk/mongkok`` for a pod (a slug has
        no ``/``), as the control room names a pod."""
        return lane_id(self.city_id, self.pod_id)

    @property
    def unit(self) -> str:
        """The ledger's stage column: ``floor``, or ``floor@hk.front`` for a role
        variant (a slug has no ``@``). With :attr:`lane`, the dispatch's identity;
        exactly ``(city_id, stage_id)`` for a scenario without pods or roles."""
        return unit_id(self.stage_id, self.variant)


def lane_id(city_id: str, pod_id: str | None) -> str:
    return city_id if pod_id is None else f"{city_id}/{pod_id}"


def unit_id(stage_id: str, variant: str | None) -> str:
    return stage_id if variant is None else f"{stage_id}@{variant}"


def split_lane(lane: str) -> tuple[str, str | None]:
    """``hk/mongkok`` → ``("hk", "mongkok")``; ``hk`` → ``("hk", None)``."""
    city, _, pod = lane.partition("/")
    return city, pod or None


def split_unit(unit: str) -> tuple[str, str | None]:
    """``floor@hk.front`` → ``("floor", "hk.front")``; ``floor`` → ``("floor", None)``."""
    stage, _, variant = unit.partition("@")
    return stage, variant or None


def city_t0(scenario: Scenario, city: City) -> datetime:
    """The city's T0 as an aware UTC instant."""
    if city.start is not None:
        # Validation guarantees this wall-clock time exists exactly once in the
        # zone, so fold=0 is the only reading.
        return city.start.replace(tzinfo=city.tz).astimezone(UTC)
    return scenario.start.astimezone(UTC)


def stage_instant(scenario: Scenario, city: City, stage: Stage) -> datetime:
    """When ``stage`` is due in ``city``, as an aware UTC instant."""
    if isinstance(stage.at, timedelta):
        return city_t0(scenario, city) + stage.at
    return stage.at.astimezone(UTC)


def build_timeline(
    scenario: Scenario, *, delays: Mapping[str, timedelta] | None = None
) -> list[Dispatch]:
    """Every dispatch of ``scenario`` in release order.

    ``delays`` (city id, or ``city/pod`` → duration) shifts all of that city's
    (or pod's) stages, as the control room's delay command does; a pod's own
    entry wins over its city's. Order: instant, then stage position in the file,
    then city position, pod position, variant position.
    """
    delays = delays or {}
    known = {lane_id(c.id, p.id if p else None) for c in scenario.cities for p in lanes(c)}
    known |= {city.id for city in scenario.cities}
    unknown = sorted(set(delays) - known)
    if unknown:
        raise ValueError(f"delays name unknown cities: {', '.join(unknown)}")
    keyed: list[tuple[datetime, int, int, int, int, Dispatch]] = []
    for city_index, city in enumerate(scenario.cities):
        for pod_index, pod in enumerate(lanes(city)):
            pod_id = pod.id if pod is not None else None
            shift = delays.get(lane_id(city.id, pod_id), delays.get(city.id, timedelta(0)))
            for stage_index, stage in enumerate(scenario.stages):
                at = stage_instant(scenario, city, stage) + shift
                for index, variant in enumerate(role_variants(scenario, city, pod, stage)):
                    dispatch = Dispatch(
                        scenario_id=scenario.id,
                        city_id=city.id,
                        stage_id=stage.id,
                        at=at,
                        rooms=variant_rooms(city, pod, variant),
                        stage_index=stage_index,
                        pod_id=pod_id,
                        variant=variant.key,
                        audiences=variant.audiences,
                    )
                    keyed.append((at, stage_index, city_index, pod_index, index, dispatch))
    keyed.sort(key=lambda item: item[:5])
    return [item[5] for item in keyed]
