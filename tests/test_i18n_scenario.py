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
