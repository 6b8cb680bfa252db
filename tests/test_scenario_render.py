"""Template rendering: placeholders, escapes, HTML safety, locations, overrides."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.scenario import (
    Location,
    Place,
    RenderError,
    load_scenario_text,
    render_stage,
    render_template,
)
from bot.scenario.model import Scenario, format_coordinate
from bot.scenario.templates import Placeholder, parse_template

BASE = """\
version: 1
id: r
title: R
start: 2026-12-05T17:00:00Z
abort_text: "Stop in {city}; leave by {exit}."
cities:
  - id: dc
    name: Washington
    timezone: America/New_York
    rooms: ["!dc:example.org"]
    places:
      square: {name: Lafayette Square, geo: "38.8997,-77.0366", note: north lawn}
      exit: {name: the metro}
  - id: berlin
    name: Berlin
    timezone: Europe/Berlin
    start: 2026-12-05T12:00
    rooms: ["!berlin:example.org"]
    places:
      square: {name: Monbijoupark, geo: "52.5236,13.398"}
      exit: {name: die S-Bahn}
stages:
  - id: call
    at: -1h
    text: "{city} at {time:0m}, be there by {time:-10m}. {{braces}} stay."
  - id: go
    at: 0m
    place: square
    text:
      default: "Go: {square} ({square.geo}) {square.map}"
      berlin: "Los: {square}"
  - id: tags
    at: +1m
    text: "<b>bold</b> & \\"quotes\\" 'single'\\nline two"
  - id: exit
    at: +2m
    place: exit
    text: "Leave via {exit}."
"""


@pytest.fixture
def s() -> Scenario:
    return load_scenario_text(BASE)


def test_city_time_and_escapes(s: Scenario) -> None:
    assert render_stage(s, "dc", "call").body == (
        "Washington at 12:00, be there by 11:50. {braces} stay."
    )
    assert render_stage(s, "berlin", "call").body == (
        "Berlin at 12:00, be there by 11:50. {braces} stay."
    )


def test_places_and_per_city_text(s: Scenario) -> None:
    dc = render_stage(s, "dc", "go")
    assert dc.body == "Go: Lafayette Square (38.8997,-77.0366) geo:38.8997,-77.0366"
    assert dc.location == Location(
        name="Lafayette Square",
        geo_uri="geo:38.8997,-77.0366",
        description="Lafayette Square — north lawn",
    )
    berlin = render_stage(s, "berlin", "go")
    assert berlin.body == "Los: Monbijoupark"
    assert berlin.location == Location(
        name="Monbijoupark", geo_uri="geo:52.5236,13.398", description="Monbijoupark"
    )


def test_no_location_without_place_or_geo(s: Scenario) -> None:
    assert render_stage(s, "dc", "call").location is None
    assert render_stage(s, "dc", "exit").location is None  # place without geo


def test_html_is_escaped(s: Scenario) -> None:
    rendered = render_stage(s, "dc", "tags")
    assert rendered.body == "<b>bold</b> & \"quotes\" 'single'\nline two"
    assert rendered.html == (
        "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quotes&quot; &#x27;single&#x27;<br/>line two"
    )
    assert "<b>" not in rendered.html


def test_place_names_are_escaped_in_html() -> None:
    text = BASE.replace("name: Lafayette Square", "name: <script>alert(1)</script>")
    rendered = render_stage(load_scenario_text(text), "dc", "go")
    assert "<script>" in rendered.body
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html


def test_place_overrides(s: Scenario) -> None:
    moved = Place(id="square", name="Farragut Square", geo=(38.902, -77.039))
    rendered = render_stage(s, "dc", "go", place_overrides={"square": moved})
    assert rendered.body == "Go: Farragut Square (38.902,-77.039) geo:38.902,-77.039"
    assert rendered.location is not None
    assert rendered.location.geo_uri == "geo:38.902,-77.039"
    # Other cities are untouched.
    assert render_stage(s, "berlin", "go").body == "Los: Monbijoupark"
    # An override without geo: no location, and a text that needs geo cannot render.
    bare = Place(id="square", name="somewhere")
    assert render_stage(s, "berlin", "go", place_overrides={"square": bare}).location is None
    with pytest.raises(RenderError) as caught:
        render_stage(s, "dc", "go", place_overrides={"square": bare})
    assert "somewhere" not in str(caught.value)


def test_delay_shifts_times(s: Scenario) -> None:
    body = render_stage(s, "dc", "call", delay=timedelta(minutes=15)).body
    assert body.startswith("Washington at 12:15, be there by 12:05.")


def test_abort_text(s: Scenario) -> None:
    assert s.abort_text is not None
    assert (
        render_template(s.abort_text, s, s.city("dc")) == "Stop in Washington; leave by the metro."
    )
    assert render_template(s.abort_text, s, s.city("berlin")) == (
        "Stop in Berlin; leave by die S-Bahn."
    )


@pytest.mark.parametrize(
    "template",
    ["{0}", "{city.__class__}", "{city!r}", "{city:>10}", "{__import__}", "{", "}", "{time:x}"],
)
def test_no_format_tricks(s: Scenario, template: str) -> None:
    with pytest.raises(RenderError):
        render_template(template, s, s.city("dc"))


def test_unknown_ids(s: Scenario) -> None:
    with pytest.raises(KeyError):
        render_stage(s, "paris", "go")
    with pytest.raises(KeyError):
        render_stage(s, "dc", "nope")


def test_parse_template() -> None:
    parsed = parse_template("a {{b}} {city} {x.map} {time:-5m}")
    assert parsed.errors == ()
    assert parsed.parts == (
        "a {b} ",
        Placeholder("city", "city"),
        " ",
        Placeholder("map", "x.map", place="x"),
        " ",
        Placeholder("time", "time:-5m", offset=timedelta(minutes=-5)),
    )
    assert parse_template("{{{city}}}").parts == ("{", Placeholder("city", "city"), "}")
    assert parse_template("}}{{").parts == ("}{",)
    assert parse_template("{a b}").errors[0].startswith("unknown placeholder {…}")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1e-7, "0.0000001"),
        (1e-9, "0"),
        (-77.0366, "-77.0366"),
        (180.0, "180"),
        (52.52000001, "52.52"),
    ],
)
def test_coordinates_never_use_exponents(value: float, text: str) -> None:
    assert format_coordinate(value) == text
