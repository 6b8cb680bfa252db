"""A city's ``language`` in the scenario format (the invalid corpus has the refusals)."""

from __future__ import annotations

import pytest

from bot.scenario import ScenarioError, load_scenario_text
from bot.scenario.schema import scenario_schema

BASE = """\
version: 1
id: t
title: T
start: 2026-12-05T17:00:00Z
cities:
  - id: c
    name: City
    timezone: Asia/Tehran
    rooms: ["!c:example.org"]
{extra}stages:
  - {{id: a, at: 0m, text: "Hello {{city}}"}}
"""


@pytest.mark.parametrize("tag", ["de", "fa", "zh-Hant", "pt-BR", "sr-Latn", "'no'", "ZH-hant"])
def test_a_known_tag_loads_as_written(tag: str) -> None:
    scenario = load_scenario_text(BASE.format(extra=f"    language: {tag}\n"))
    assert scenario.cities[0].language == tag.strip("'")


def test_without_language_the_city_has_none() -> None:
    assert load_scenario_text(BASE.format(extra="")).cities[0].language is None


def test_an_unknown_tag_points_at_its_value() -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(BASE.format(extra="    language: klingon\n"), "s.yaml")
    assert [str(d) for d in caught.value.diagnostics] == [
        "s.yaml:10:15: cities[0].language: unknown language tag 'klingon' "
        "(expected a BCP 47 language tag such as de, pt-BR or zh-Hant)"
    ]


def test_the_schema_offers_language_on_a_city() -> None:
    schema = scenario_schema()
    city = schema["$defs"]["City"]["properties"]["language"]
    options = city.get("anyOf", [city])
    strings = [o for o in options if o.get("type") == "string"]
    assert strings and "zh-Hant" in strings[0]["examples"]


RTL = """\
version: 1
id: t
title: T
start: 2026-12-05T17:00:00Z
cities:
  - id: teh
    name: Tehran
    timezone: Asia/Tehran
    rooms: ["!teh:example.org"]
    language: fa
    places:
      gather: {name: Azadi Square, geo: "35.6997,51.3380"}
  - id: ber
    name: Berlin
    timezone: Europe/Berlin
    rooms: ["!ber:example.org"]
    places:
      gather: {name: Alexanderplatz, geo: "52.5219,13.4132"}
stages:
  - id: go
    at: 0m
    place: gather
    text: "ساعت {time:0m} در {gather} باشید.\\nبا !here اعلام حضور کنید."
"""


def test_rtl_city_stage_text_reads_right_to_left() -> None:
    from bot.control.parse import Command, CommandSpec, parse
    from bot.i18n import bidi
    from bot.scenario import render_stage

    scenario = load_scenario_text(RTL)
    body = render_stage(scenario, "teh", "go").body
    lines = body.split("\n")
    assert all(line.startswith(bidi.RLM) for line in lines)
    assert f"{bidi.FSI}Azadi Square{bidi.PDI}" in lines[0]
    assert f"{bidi.FSI}20:30{bidi.PDI}" in lines[0]  # {time:…} keeps its format
    assert f"با{bidi.LRI} !here {bidi.PDI}اعلام" in lines[1]
    start = body.index("!here")
    specs = {"here": CommandSpec("here", (), "", "!here", True)}
    assert parse(body[start - 1 : start + 6], specs) == Command("here", {}, "!here")
    # The HTML form is the escaped body: the marks are in it too.
    assert render_stage(scenario, "teh", "go").html.startswith(bidi.RLM)


def test_ltr_city_of_the_same_scenario_is_untouched() -> None:
    from bot.scenario import render_stage

    body = render_stage(load_scenario_text(RTL), "ber", "go").body
    assert body == "ساعت 18:00 در Alexanderplatz باشید.\nبا !here اعلام حضور کنید."
