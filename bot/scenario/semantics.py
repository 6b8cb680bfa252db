"""Rules that relate values to each other, checked on a well-shaped scenario.

Each problem carries the path of the YAML node to blame, so the loader can
report it at the right line and column. Messages name ids, room ids and
placeholder names but never quote stage text or place details.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.scenario import eventsize, semantics_pods, semantics_text
from bot.scenario.audience import lanes
from bot.scenario.model import City, Pod, Scenario, Stage
from bot.scenario.render import (
    RenderError,
    effective_places,
    location_of,
    render_template,
    to_html,
)
from bot.scenario.source import Path
from bot.scenario.templates import describe, parse_template
from bot.scenario.timeline import city_t0, stage_instant

Target = tuple[City, Pod | None]
"""Where a template is rendered: a city without pods, or one pod of a city."""

# How large a target's rendered event is (bytes of content, see bot.scenario.eventsize),
# given the rendered body, the target and the number of {time:...} placeholders.
Measure = Callable[[str, Target, int], int]

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
    for check_one in (
        semantics_pods.check_rooms,
        semantics_pods.check_pods,
        semantics_pods.check_roles,
    ):
        problems += [Problem(path, message) for path, message in check_one(scenario)]
    out_of_range = _check_range(scenario)
    if out_of_range:
        # Times and templates cannot be computed; the rest would only be noise.
        return problems + out_of_range
    for index, stage in enumerate(scenario.stages):
        problems += _check_stage(scenario, index, stage)
    if scenario.abort_text is not None:

        def abort_size(body: str, target: Target, times: int) -> int:
            city, pod = target
            return eventsize.abort_size(
                body, scenario.id, city.name, city.id, time_placeholders=times, pod=_id(pod)
            )

        problems += _check_template(
            scenario,
            ("abort_text",),
            scenario.abort_text,
            all_targets(scenario.cities),
            "abort_text",
            abort_size,
        )
    problems += _check_order(scenario)
    return problems


def _check_cities(scenario: Scenario) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
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
        missing = _missing_place(scenario, stage.place)
        for message in missing:
            problems.append(Problem((*base, "place"), message))
        if not missing:
            problems += _check_pin(scenario, stage, (*base, "place"))
    what = f"stage '{stage.id}'"
    if isinstance(stage.text, str):
        measure = _text_measure(scenario, stage, None)
        targets = all_targets(scenario.cities)
        return problems + _check_template(
            scenario, (*base, "text"), stage.text, targets, what, measure
        )
    problems += [
        Problem(path, message, key=at_key)
        for path, message, at_key in semantics_text.check_keys(scenario, base, stage)
    ]
    for key, template in stage.text.items():
        users = semantics_text.cities_reading(scenario, stage, key)
        # With roles, the entry may go out as the variant named by its key: measure
        # the tag with it, so it is never counted short.
        measure = _text_measure(scenario, stage, key if scenario.roles else None)
        problems += _check_template(
            scenario, (*base, "text", key), template, all_targets(users), what, measure
        )
    return problems


def _text_measure(scenario: Scenario, stage: Stage, variant: str | None) -> Measure:
    def text_size(body: str, target: Target, times: int) -> int:
        city, pod = target
        return eventsize.text_size(
            body,
            to_html(body),
            scenario.id,
            city.name,
            city.id,
            stage.id,
            time_placeholders=times,
            pod=_id(pod),
            variant=variant,
        )

    return text_size


def _longest_variant(scenario: Scenario, stage: Stage) -> str | None:
    if not scenario.roles or isinstance(stage.text, str):
        return None
    return max(stage.text, key=len)


def _id(pod: Pod | None) -> str | None:
    return pod.id if pod is not None else None


def all_targets(cities: tuple[City, ...]) -> tuple[Target, ...]:
    """Every (city, pod) of these cities; (city, None) for a city without pods."""
    return tuple((city, pod) for city in cities for pod in lanes(city))


def where(target: Target) -> str:
    city, pod = target
    return f"city '{city.id}'" if pod is None else f"pod '{pod.id}' of city '{city.id}'"


def _missing_place(scenario: Scenario, place: str) -> list[str]:
    """Where ``place`` is not defined: the cities without pods, then each city's pods."""
    messages = []
    missing = [c.id for c in scenario.cities if not c.pods and place not in c.places]
    if missing:
        messages.append(f"place '{place}' is not defined in {_cities_phrase(missing)}")
    for city in scenario.cities:
        pods = semantics_pods.city_lanes_missing(city, place)
        if pods:
            quoted = ", ".join(f"'{p}'" for p in pods)
            messages.append(
                f"place '{place}' is not defined in pod{'s' if len(pods) > 1 else ''} {quoted} "
                f"of city '{city.id}' (define it in the pod or in the city)"
            )
    return messages


def _check_pin(scenario: Scenario, stage: Stage, path: Path) -> list[Problem]:
    """The map pin of ``stage``'s place fits in one event in every city."""
    assert stage.place is not None
    problems: list[Problem] = []
    for target in all_targets(scenario.cities):
        city, pod = target
        location = location_of(effective_places(city, pod)[stage.place])
        if location is None:
            continue
        variant = _longest_variant(scenario, stage)
        size = eventsize.location_size(
            location, scenario.id, city.id, stage.id, pod=_id(pod), variant=variant
        )
        if size > eventsize.CONTENT_LIMIT:
            problems.append(
                Problem(
                    path,
                    f"the map pin of place '{stage.place}' is too large to send in "
                    f"{where(target)}: {eventsize.too_large(size)}",
                )
            )
    return problems


def _check_template(
    scenario: Scenario,
    path: Path,
    template: str,
    targets: tuple[Target, ...],
    what: str,
    measure: Measure,
) -> list[Problem]:
    """Syntax once, then meaning and size in each city (and pod) that uses ``template``."""
    parsed = parse_template(template)
    if parsed.errors:
        return [Problem(path, error) for error in dict.fromkeys(parsed.errors)]
    messages: list[str] = []
    for target in targets:
        places = effective_places(*target)
        for placeholder in parsed.placeholders():
            if placeholder.place is None:
                continue
            place = places.get(placeholder.place)
            if place is None:
                messages.append(
                    f"{describe(placeholder.name)}: {where(target)} has no place "
                    f"'{placeholder.place}'"
                )
            elif placeholder.kind in ("geo", "map") and place.geo is None:
                messages.append(
                    f"{describe(placeholder.name)}: place '{placeholder.place}' "
                    f"has no geo in {where(target)}"
                )
    if messages:
        return [Problem(path, m) for m in dict.fromkeys(messages)]
    for target in targets:
        city, pod = target
        try:
            body = render_template(template, scenario, city, pod=pod)
        except RenderError:
            messages.append(f"{what} cannot be rendered for {where(target)}")
            continue
        if not body.strip():
            messages.append(f"{what} renders empty for {where(target)}")
            continue
        times = sum(1 for p in parsed.placeholders() if p.kind == "time")
        size = measure(body, target, times)
        if size > eventsize.CONTENT_LIMIT:
            messages.append(
                f"{what} is too large to send in {where(target)}: {eventsize.too_large(size)}"
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
