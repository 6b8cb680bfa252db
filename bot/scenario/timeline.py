"""From a scenario to its dispatches: one per (city, stage), each with its UTC instant.

Pure time arithmetic. A city's T0 is its own ``start`` (a local wall-clock time
in its zone) when it has one, else the scenario's ``start`` instant. A stage's
``at`` offset is an exact duration from T0; an absolute ``at`` is the same
instant in every city.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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

    ``delays`` (city id → duration) shifts all of that city's stages, as the
    control room's delay command does. Order: instant, then stage position in
    the file, then city position in the file.
    """
    delays = delays or {}
    known = {city.id for city in scenario.cities}
    unknown = sorted(set(delays) - known)
    if unknown:
        raise ValueError(f"delays name unknown cities: {', '.join(unknown)}")
    keyed: list[tuple[datetime, int, int, Dispatch]] = []
    for city_index, city in enumerate(scenario.cities):
        shift = delays.get(city.id, timedelta(0))
        for stage_index, stage in enumerate(scenario.stages):
            at = stage_instant(scenario, city, stage) + shift
            dispatch = Dispatch(
                scenario_id=scenario.id,
                city_id=city.id,
                stage_id=stage.id,
                at=at,
                rooms=city.rooms,
                stage_index=stage_index,
            )
            keyed.append((at, stage_index, city_index, dispatch))
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]
