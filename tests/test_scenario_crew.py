"""The crew in the scenario format: failover.grace and per-city crew orders, their
defaults, positioned errors, the schema, and the arm-time order check."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from bot.crew import Crew, unknown_members
from bot.scenario import ScenarioError, load_scenario_text
from bot.scenario.fields import is_user_id
from bot.scenario.schema import scenario_schema

NORTH, SOUTH, WEST = "@blossom:north.example", "@blossom:south.example", "@blossom:west.example"

TEXT = """\
version: 1
id: crew
title: Crew
start: 2026-12-05T17:00:00Z
{failover}cities:
  - id: north
    name: North
    timezone: Europe/Berlin
    rooms: ["!north:north.example"]
  - id: south
    name: South
    timezone: Europe/Berlin
    rooms: ["!south:south.example"]
    crew: {south_crew}
stages:
  - id: go
    at: 0m
    text: Go
"""


def scenario_text(failover: str = "", south_crew: str = f'["{SOUTH}", "{NORTH}"]') -> str:
    return TEXT.format(failover=failover, south_crew=south_crew)


def errors(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "s.yaml")
    return [str(d) for d in caught.value.diagnostics]


def test_defaults_and_values() -> None:
    s = load_scenario_text(scenario_text())
    assert s.failover.grace == timedelta(seconds=20)
    north, south = s.cities
    assert north.crew is None and south.crew == (SOUTH, NORTH)
    crew = Crew((NORTH, SOUTH))
    assert crew.order_for(north) == (NORTH, SOUTH)  # the config's order
    assert crew.order_for(south) == (SOUTH, NORTH)
    assert load_scenario_text(scenario_text("failover: {}\n")).failover.grace.total_seconds() == 20
    for text, seconds in (("2s", 2), ("1m30s", 90), ("10m", 600)):
        s = load_scenario_text(scenario_text(f"failover: {{grace: {text}}}\n"))
        assert s.failover.grace == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("failover", "crew", "expected"),
    [
        (
            "failover: {grace: 1s}\n",
            None,
            "s.yaml:5:19: failover.grace: must be between 2s and 10m (not 1s)",
        ),
        (
            "failover: {grace: 11m}\n",
            None,
            "s.yaml:5:19: failover.grace: must be between 2s and 10m (not 11m)",
        ),
        (
            "failover: {grace: 20}\n",
            None,
            "s.yaml:5:19: failover.grace: expected a duration like 10m, 1h30m or 90s",
        ),
        ("failover: 20s\n", None, "s.yaml:5:11: failover: expected a mapping of keys"),
        (
            "",
            f'["{SOUTH}", "@:x"]',
            "s.yaml:14:38: cities[1].crew[1]: '@:x' is not a Matrix user id "
            "(expected @name:server)",
        ),
        (
            "",
            f'["{SOUTH}", "{SOUTH}"]',
            f"s.yaml:14:38: cities[1].crew[1]: {SOUTH} is listed twice (also crew[0])",
        ),
        ("", f'"{SOUTH}"', "s.yaml:14:11: cities[1].crew: expected a list"),
    ],
)
def test_positioned_errors(failover: str, crew: str | None, expected: str) -> None:
    text = scenario_text(failover) if crew is None else scenario_text(south_crew=crew)
    assert errors(text) == [expected]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("@blossom:south.example", True),
        ("@blossom:127.0.0.1:8481", True),
        ("@blossom:[::1]:8448", True),
        ("@Old_Style=user/+:example.org", True),  # historical localparts are still valid
        ("blossom:example.org", False),
        ("@blossom", False),
        ("@:example.org", False),
        ("@blo ssom:example.org", False),
        ("@blossom:example.org:99999999", False),
        ("@blossom:-bad.example", False),
        ("@" + "a" * 250 + ":example.org", False),  # over 255 bytes
        ("@blössom:example.org", False),
    ],
)
def test_user_id_grammar(value: str, ok: bool) -> None:
    assert is_user_id(value) is ok


def test_schema_covers_the_crew() -> None:
    schema = scenario_schema()
    assert schema["properties"]["failover"]["default"] == {"grace": "20s"}
    assert "failover" not in schema["required"]
    assert schema["$defs"]["Failover"]["properties"]["grace"]["default"] == "20s"
    crew = schema["$defs"]["City"]["properties"]["crew"]
    assert json.dumps(crew).count("pattern") == 1
    assert "crew" not in schema["$defs"]["City"]["required"]


def test_arm_time_check_names_the_unknown_member() -> None:
    s = load_scenario_text(scenario_text(south_crew=f'["{WEST}", "{NORTH}"]'))
    assert unknown_members(s, Crew((NORTH, SOUTH, WEST))) == []
    problems = unknown_members(s, Crew((NORTH, SOUTH)))
    assert [(p.city, p.unknown) for p in problems] == [("south", (WEST,))]
    assert str(problems[0]) == (
        f"city 'south' names {WEST} in its crew order, which is not a member of this "
        f"bot's crew ({NORTH}, {SOUTH}); fix the city's crew in the scenario or "
        "crew.members in every bot's config"
    )
    # A bot without a crew is a crew of one: another bot in a city's order is unknown.
    solo = unknown_members(load_scenario_text(scenario_text()), Crew.solo(NORTH))
    assert [(p.city, p.unknown) for p in solo] == [("south", (SOUTH,))]
    assert (
        unknown_members(
            load_scenario_text(scenario_text(south_crew=f'["{NORTH}"]')), Crew.solo(NORTH)
        )
        == []
    )
