"""Rules that relate values to each other, checked on a well-shaped scenario.

Each problem carries the path of the YAML node to blame, so the loader can
report it at the right line and column. Messages name ids, room ids and
placeholder names but never quote stage text or place details.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.scenario import eventsize
from bot.scenario.model import City, Scenario, Stage
from bot.scenario.render import RenderError, location_of, render_template, to_html
from bot.scenario.source import Path
from bot.scenario.templates import describe, parse_template
from bot.scenario.timeline import city_t0, stage_instant

# How large a city's rendered event is (bytes of content, see bot.scenario.eventsize),
# given the rendered body, the city and the number of {time:...} placeholders.
Measure = Callable[[str, City, int], int]

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_RANGE = "outside the years 1970 to 8999"

RESERVED_CITY_IDS = frozenset({"default"})  # the fallback key of a text mapping


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    key: bool = False
    """Point at the key of ``path`` rather than its value (e.g. an unknown key)."""


def check(scenario: Scenario) -> list[Problem]:
    """Every cross-field problem of ``scenario`` (empty when it is sound)."""
    problems: list[Problem] = []
    problems += _check_cities(scenario)
    problems += _check_city_crews(scenario)
    problems += _check_stage_ids(scenario)
    out_of_range = _check_range(scenario)
    if out_of_range:
        # Times and templates cannot be computed; the rest would only be noise.
        return problems + out_of_range
    for index, stage in enumerate(scenario.stages):
        problems += _check_stage(scenario, index, stage)
    if scenario.abort_text is not None:

        def abort_size(body: str, city: City, times: int) -> int:
            return eventsize.abort_size(
                body, scenario.id, city.name, city.id, time_placeholders=times
            )

        problems += _check_template(
            scenario,
            ("abort_text",),
            scenario.abort_text,
            scenario.cities,
            "abort_text",
            abort_size,
        )
    problems += _check_order(scenario)
    return problems


def _check_cities(scenario: Scenario) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    room_owner: dict[str, str] = {}
    for index, city in enumerate(scenario.cities):
        if city.id in RESERVED_CITY_IDS:
            problems.append(
                Problem(("cities", index, "id"), f"'{city.id}' is reserved and cannot be a city id")
            )
        if city.id in seen:
            problems.append(
                Problem(
                    ("cities", index, "id"),
                    f"duplicate city id '{city.id}' (also cities[{seen[city.id]}])",
                )
            )
        seen.setdefault(city.id, index)
        if city.direct_limit is not None and not city.direct:
            problems.append(
                Problem(("cities", index, "direct_limit"), "direct_limit needs direct: true")
            )
        for room_index, room in enumerate(city.rooms):
            path = ("cities", index, "rooms", room_index)
            owner = room_owner.get(room)
            if owner == city.id:
                problems.append(Problem(path, f"room {room} is listed twice"))
            elif owner is not None:
                # One room in two cities would get every stage twice, at two
                # different times: never what the core group meant.
                problems.append(Problem(path, f"room {room} is already a room of city '{owner}'"))
            else:
                room_owner[room] = city.id
    return problems


def _check_city_crews(scenario: Scenario) -> list[Problem]:
    """A city's crew order names each member once (docs/crew.md).

    Whether the members belong to the bots' crew is known only to the bot, so
    ``!arm`` checks that (:func:`bot.crew.order.unknown_members`).
    """
    problems: list[Problem] = []
    for index, city in enumerate(scenario.cities):
        first: dict[str, int] = {}
        for position, member in enumerate(city.crew or ()):
            if member in first:
                problems.append(
                    Problem(
                        ("cities", index, "crew", position),
                        f"{member} is listed twice (also crew[{first[member]}])",
                    )
                )
            first.setdefault(member, position)
    return problems


def _check_stage_ids(scenario: Scenario) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, stage in enumerate(scenario.stages):
        if stage.id in seen:
            problems.append(
                Problem(
                    ("stages", index, "id"),
                    f"duplicate stage id '{stage.id}' (also stages[{seen[stage.id]}])",
                )
            )
        seen.setdefault(stage.id, index)
    return problems


def _check_stage(scenario: Scenario, index: int, stage: Stage) -> list[Problem]:
    problems: list[Problem] = []
    base: Path = ("stages", index)
    if index == 0 and stage.require is not None:
        problems.append(
            Problem(
                (*base, "require"),
                "the first stage cannot have a check-in gate "
                "(there is nothing to check in to before it)",
            )
        )
    if stage.place is not None:
        missing = [c.id for c in scenario.cities if stage.place not in c.places]
        if missing:
            problems.append(
                Problem(
                    (*base, "place"),
                    f"place '{stage.place}' is not defined in {_cities_phrase(missing)}",
                )
            )
        else:
            problems += _check_pin(scenario, stage, (*base, "place"))

    def text_size(body: str, city: City, times: int) -> int:
        return eventsize.text_size(
            body, to_html(body), scenario.id, city.name, city.id, stage.id, time_placeholders=times
        )

    what = f"stage '{stage.id}'"
    if isinstance(stage.text, str):
        problems += _check_template(
            scenario, (*base, "text"), stage.text, scenario.cities, what, text_size
        )
        return problems
    city_ids = {c.id for c in scenario.cities}
    for key in stage.text:
        if key != "default" and key not in city_ids:
            problems.append(
                Problem(
                    (*base, "text", key),
                    f"no city '{key}' (text keys are city ids or 'default')",
                    key=True,
                )
            )
    if "default" not in stage.text:
        uncovered = [c.id for c in scenario.cities if c.id not in stage.text]
        if uncovered:
            problems.append(
                Problem(
                    (*base, "text"),
                    f"no text for {_cities_phrase(uncovered)} (add an entry or a 'default')",
                )
            )
    for key, template in stage.text.items():
        if key == "default":
            users = tuple(c for c in scenario.cities if c.id not in stage.text)
        else:
            users = tuple(c for c in scenario.cities if c.id == key)
        problems += _check_template(
            scenario, (*base, "text", key), template, users, what, text_size
        )
    return problems


def _check_pin(scenario: Scenario, stage: Stage, path: Path) -> list[Problem]:
    """The map pin of ``stage``'s place fits in one event in every city."""
    assert stage.place is not None
    problems: list[Problem] = []
    for city in scenario.cities:
        location = location_of(city.places[stage.place])
        if location is None:
            continue
        size = eventsize.location_size(location, scenario.id, city.id, stage.id)
        if size > eventsize.CONTENT_LIMIT:
            problems.append(
                Problem(
                    path,
                    f"the map pin of place '{stage.place}' is too large to send in city "
                    f"'{city.id}': {eventsize.too_large(size)}",
                )
            )
    return problems


def _check_template(
    scenario: Scenario,
    path: Path,
    template: str,
    cities: tuple[City, ...],
    what: str,
    measure: Measure,
) -> list[Problem]:
    """Syntax once, then meaning and size in each city that uses ``template``."""
    parsed = parse_template(template)
    if parsed.errors:
        return [Problem(path, error) for error in dict.fromkeys(parsed.errors)]
    messages: list[str] = []
    for city in cities:
        for placeholder in parsed.placeholders():
            if placeholder.place is None:
                continue
            place = city.places.get(placeholder.place)
            if place is None:
                messages.append(
                    f"{describe(placeholder.name)}: city '{city.id}' has no place "
                    f"'{placeholder.place}'"
                )
            elif placeholder.kind in ("geo", "map") and place.geo is None:
                messages.append(
                    f"{describe(placeholder.name)}: place '{placeholder.place}' "
                    f"has no geo in city '{city.id}'"
                )
    if messages:
        return [Problem(path, m) for m in dict.fromkeys(messages)]
    for city in cities:
        try:
            body = render_template(template, scenario, city)
        except RenderError:
            messages.append(f"{what} cannot be rendered for city '{city.id}'")
            continue
        if not body.strip():
            messages.append(f"{what} renders empty for city '{city.id}'")
            continue
        times = sum(1 for p in parsed.placeholders() if p.kind == "time")
        size = measure(body, city, times)
        if size > eventsize.CONTENT_LIMIT:
            messages.append(
                f"{what} is too large to send in city '{city.id}': {eventsize.too_large(size)}"
            )
    return [Problem(path, m) for m in messages]


def _check_range(scenario: Scenario) -> list[Problem]:
    """Every T0 and stage instant lies in years the bot can compute with.

    The bounds keep T0 plus any template offset (at most 366 days) and any
    local reading of an instant far from ``datetime``'s limits.
    """
    problems: list[Problem] = []
    for index, city in enumerate(scenario.cities):
        try:
            t0: datetime | None = city_t0(scenario, city)
        except OverflowError:
            t0 = None
        if not _in_range(t0):
            where: Path = ("cities", index, "start") if city.start else ("start",)
            problems.append(Problem(where, f"T0 of city '{city.id}' is {_RANGE}"))
            continue
        for stage_index, stage in enumerate(scenario.stages):
            try:
                at: datetime | None = stage_instant(scenario, city, stage)
            except OverflowError:
                at = None
            if not _in_range(at):
                problems.append(
                    Problem(("stages", stage_index, "at"), f"in city '{city.id}' it is {_RANGE}")
                )
    return problems


def _in_range(moment: datetime | None) -> bool:
    return moment is not None and EARLIEST <= moment < LATEST


def _check_order(scenario: Scenario) -> list[Problem]:
    """Stages go out in file order in every city; equal instants are allowed."""
    problems: list[Problem] = []
    for city in scenario.cities:
        previous: tuple[Stage, datetime] | None = None
        for index, stage in enumerate(scenario.stages):
            instant = stage_instant(scenario, city, stage)
            if previous is not None and instant < previous[1]:
                before, before_at = previous
                problems.append(
                    Problem(
                        ("stages", index, "at"),
                        f"out of order in city '{city.id}': at {_local(instant, city)}, "
                        f"before stage '{before.id}' above it ({_local(before_at, city)})",
                    )
                )
            previous = (stage, instant)
    return problems


def _local(instant: datetime, city: City) -> str:
    return instant.astimezone(city.tz).strftime("%Y-%m-%d %H:%M %Z")


def _cities_phrase(ids: list[str]) -> str:
    quoted = ", ".join(f"'{i}'" for i in ids)
    return f"city {quoted}" if len(ids) == 1 else f"cities {quoted}"
