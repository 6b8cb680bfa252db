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
from bot.scenario.model import City, Place, Scenario, Stage
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


def stage_template(stage: Stage, city: City) -> str:
    """The template ``stage`` uses in ``city``: its own entry, else ``default``."""
    if isinstance(stage.text, str):
        return stage.text
    template = stage.text.get(city.id, stage.text.get("default"))
    if template is None:
        raise RenderError(f"stage '{stage.id}' has no text for city '{city.id}'")
    return template


def _local_time(scenario: Scenario, city: City, offset: timedelta, delay: timedelta) -> str:
    local = (city_t0(scenario, city) + offset + delay).astimezone(city.tz)
    return local.strftime("%H:%M:%S" if local.second else "%H:%M")


def _lookup(city: City, overrides: Mapping[str, Place] | None, place_id: str) -> Place | None:
    if overrides and place_id in overrides:
        return overrides[place_id]
    return city.places.get(place_id)


def _substitute(
    placeholder: Placeholder,
    scenario: Scenario,
    city: City,
    overrides: Mapping[str, Place] | None,
    delay: timedelta,
) -> str:
    if placeholder.kind == "city":
        return city.name
    if placeholder.kind == "time":
        assert placeholder.offset is not None  # set by the parser for this kind
        return _local_time(scenario, city, placeholder.offset, delay)
    assert placeholder.place is not None  # set by the parser for place kinds
    place = _lookup(city, overrides, placeholder.place)
    if place is None:
        raise RenderError(
            f"{describe(placeholder.name)}: city '{city.id}' has no place '{placeholder.place}'"
        )
    if placeholder.kind == "place":
        return place.name
    value = place.geo_text() if placeholder.kind == "geo" else place.geo_uri()
    if value is None:
        raise RenderError(
            f"{describe(placeholder.name)}: place '{placeholder.place}' "
            f"has no geo in city '{city.id}'"
        )
    return value


def render_template(
    template: str,
    scenario: Scenario,
    city: City,
    *,
    place_overrides: Mapping[str, Place] | None = None,
    delay: timedelta | None = None,
) -> str:
    """Substitute the placeholders of ``template`` for ``city``.

    ``place_overrides`` (place id → Place) take precedence over the city's own
    places (a redirect). ``delay`` shifts ``{time:...}`` like a delayed city.
    Raises :class:`RenderError`.
    """
    parsed = parse_template(template)
    if parsed.errors:
        raise RenderError(parsed.errors[0])
    shift = delay or timedelta(0)
    if not right_to_left(city):
        return "".join(
            part
            if isinstance(part, str)
            else _substitute(part, scenario, city, place_overrides, shift)
            for part in parsed.parts
        )
    # A right-to-left city: lines laid out RTL, names and times isolated, commands
    # typeable (bot.i18n.bidi says why each is needed in Element).
    text = "".join(
        bidi.isolate_commands(part)
        if isinstance(part, str)
        else bidi.isolate(_substitute(part, scenario, city, place_overrides, shift))
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
) -> RenderedStage:
    """Everything the bot sends for ``stage_id`` in ``city_id``.

    Raises ``KeyError`` for an unknown city or stage, :class:`RenderError` when
    the template cannot be rendered (a loaded scenario never causes this unless
    ``place_overrides`` lack something the text needs).
    """
    city = scenario.city(city_id)
    stage = scenario.stage(stage_id)
    body = render_template(
        stage_template(stage, city),
        scenario,
        city,
        place_overrides=place_overrides,
        delay=delay,
    )
    location = None
    if stage.place is not None:
        place = _lookup(city, place_overrides, stage.place)
        location = location_of(place) if place is not None else None
    return RenderedStage(body=body, html=to_html(body), location=location)
