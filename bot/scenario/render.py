"""Rendering a stage for one city: plain body, safe HTML and the location.

Substitution walks the parsed template (:mod:`bot.scenario.templates`); it never
evaluates anything the scenario wrote. The HTML form is the escaped body, so
scenario text can never inject markup into a participant's client.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from bot.i18n import bidi
from bot.i18n.tags import LanguageError, parse_language, text_direction
from bot.scenario.audience import text_key
from bot.scenario.model import City, Place, Pod, Scenario, Stage
from bot.scenario.templates import Placeholder, describe, parse_template
from bot.scenario.timeline import city_t0


class RenderError(ValueError):
    """A template cannot be rendered for a city. The message never quotes content."""


@dataclass(frozen=True)
class Location:
    """The content of an ``m.location`` message."""

    name: str
    geo_uri: str
    description: str


@dataclass(frozen=True)
class RenderedStage:
    body: str
    html: str
    """``body`` HTML-escaped, newlines as ``<br/>``."""
    location: Location | None
    """Present when the stage has a place and that place has geo."""


def stage_template(stage: Stage, city: City, role: str | None = None) -> str:
    """The template ``stage`` uses in ``city`` for ``role`` (see :func:`text_key`)."""
    if isinstance(stage.text, str):
        return stage.text
    key = text_key(stage, city, role)
    if key is None:
        raise RenderError(f"stage '{stage.id}' has no text for city '{city.id}'")
    return stage.text[key]


def _local_time(scenario: Scenario, city: City, offset: timedelta, delay: timedelta) -> str:
    local = (city_t0(scenario, city) + offset + delay).astimezone(city.tz)
    return local.strftime("%H:%M:%S" if local.second else "%H:%M")


def _lookup(
    city: City, pod: Pod | None, overrides: Mapping[str, Place] | None, place_id: str
) -> Place | None:
    # A redirect, then the pod's own place, then the city's: never another pod's.
    if overrides and place_id in overrides:
        return overrides[place_id]
    if pod is not None and place_id in pod.places:
        return pod.places[place_id]
    return city.places.get(place_id)


def effective_places(city: City, pod: Pod | None = None) -> dict[str, Place]:
    """The places a pod's people can learn: the city's, overridden by the pod's own."""
    return {**city.places, **(pod.places if pod is not None else {})}


def _where(city: City, pod: Pod | None) -> str:
    return f"city '{city.id}'" if pod is None else f"pod '{pod.id}' of city '{city.id}'"


def _substitute(
    placeholder: Placeholder,
    scenario: Scenario,
    city: City,
    pod: Pod | None,
    overrides: Mapping[str, Place] | None,
    delay: timedelta,
) -> str:
    if placeholder.kind == "city":
        return city.name
    if placeholder.kind == "time":
        assert placeholder.offset is not None  # set by the parser for this kind
        return _local_time(scenario, city, placeholder.offset, delay)
    assert placeholder.place is not None  # set by the parser for place kinds
    place = _lookup(city, pod, overrides, placeholder.place)
    if place is None:
        raise RenderError(
            f"{describe(placeholder.name)}: {_where(city, pod)} has no place '{placeholder.place}'"
        )
    if placeholder.kind == "place":
        return place.name
    value = place.geo_text() if placeholder.kind == "geo" else place.geo_uri()
    if value is None:
        raise RenderError(
            f"{describe(placeholder.name)}: place '{placeholder.place}' "
            f"has no geo in {_where(city, pod)}"
        )
    return value


def render_template(
    template: str,
    scenario: Scenario,
    city: City,
    *,
    place_overrides: Mapping[str, Place] | None = None,
    delay: timedelta | None = None,
    pod: Pod | None = None,
) -> str:
    """Substitute the placeholders of ``template`` for ``city`` (and ``pod``).

    Places come from ``place_overrides`` (place id → Place: a redirect of this
    city, or of this pod), then ``pod``'s own places, then the city's: a pod's
    text never reads another pod's places. ``delay`` shifts ``{time:...}`` like
    a delayed city. Raises :class:`RenderError`. For the stop message and a
    correction of a pod, pass that pod.
    """
    parsed = parse_template(template)
    if parsed.errors:
        raise RenderError(parsed.errors[0])
    shift = delay or timedelta(0)
    if not right_to_left(city):
        return "".join(
            part
            if isinstance(part, str)
            else _substitute(part, scenario, city, pod, place_overrides, shift)
            for part in parsed.parts
        )
    # A right-to-left city: lines laid out RTL, names and times isolated, commands
    # typeable (bot.i18n.bidi says why each is needed in Element).
    text = "".join(
        bidi.isolate_commands(part)
        if isinstance(part, str)
        else bidi.isolate(_substitute(part, scenario, city, pod, place_overrides, shift))
        for part in parsed.parts
    )
    return bidi.rtl_lines(text)


def right_to_left(city: City) -> bool:
    """Whether the city's ``language`` is written right to left (Persian, Arabic, Hebrew)."""
    if city.language is None:
        return False
    try:
        return text_direction(parse_language(city.language)) == "rtl"
    except LanguageError:  # a City built in code, never validated
        return False


def to_html(body: str) -> str:
    """The HTML form of a plain body: everything escaped, newlines as ``<br/>``."""
    return html.escape(body, quote=True).replace("\n", "<br/>")


def location_of(place: Place) -> Location | None:
    """The map pin of ``place``, or ``None`` without geo."""
    uri = place.geo_uri()
    if uri is None:
        return None
    description = f"{place.name} — {place.note}" if place.note else place.name
    return Location(name=place.name, geo_uri=uri, description=description)


def render_stage(
    scenario: Scenario,
    city_id: str,
    stage_id: str,
    *,
    place_overrides: Mapping[str, Place] | None = None,
    delay: timedelta | None = None,
    pod: str | None = None,
    role: str | None = None,
) -> RenderedStage:
    """Everything the bot sends for ``stage_id`` in ``city_id`` — to ``pod``'s
    rooms and people (its places), reading ``role``'s text (None: no role).

    Raises ``KeyError`` for an unknown city, pod or stage, :class:`RenderError`
    when the template cannot be rendered (a loaded scenario never causes this
    unless ``place_overrides`` lack something the text needs). Whether ``role``
    gets the stage at all is :func:`bot.scenario.audience.reaches`.
    """
    city = scenario.city(city_id)
    stage = scenario.stage(stage_id)
    the_pod = city.pod(pod) if pod is not None else None
    body = render_template(
        stage_template(stage, city, role),
        scenario,
        city,
        place_overrides=place_overrides,
        delay=delay,
        pod=the_pod,
    )
    location = None
    if stage.place is not None:
        place = _lookup(city, the_pod, place_overrides, stage.place)
        location = location_of(place) if place is not None else None
    return RenderedStage(body=body, html=to_html(body), location=location)
