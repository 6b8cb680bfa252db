"""The plan: order, local times, the masking rule, and its JSON and table forms."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from bot.cli import main
from bot.scenario import load_scenario_file, load_scenario_text
from bot.scenario.plan import MASK, build_plan, plan_json, plan_table

EXAMPLES = Path(__file__).parent.parent / "scenarios"
NOW = datetime(2026, 12, 5, 16, 50, tzinfo=UTC)

SECRET = """\
version: 1
id: secret
title: Secret
start: 2026-12-05T17:00:00Z
cities:
  - id: dc
    name: Washington
    timezone: America/New_York
    rooms: ["!dc:example.org"]
    places:
      spot: {name: Hidden Courtyard, geo: "38.1234,-77.5678", note: behind the gate}
stages:
  - id: early
    at: -1h
    text: "[bold red]Meet[/] near the old oak, {city}"
  - id: go
    at: 0m
    place: spot
    text: "Go to {spot} {spot.map}"
"""
SECRETS = ["old oak", "Hidden Courtyard", "38.1234", "behind the gate", "Go to", "Meet"]


def test_rows_in_order_with_local_times() -> None:
    s = load_scenario_file(EXAMPLES / "same-instant.yaml")
    rows = build_plan(s, NOW)
    assert [r.at_utc for r in rows] == sorted(r.at_utc for r in rows)
    freeze = {r.city: r for r in rows if r.stage == "freeze"}
    assert {r.at_utc for r in freeze.values()} == {datetime(2026, 12, 5, 17, tzinfo=UTC)}
    assert freeze["washington"].at_local.isoformat() == "2026-12-05T12:00:00-05:00"
    assert freeze["london"].at_local.isoformat() == "2026-12-05T17:00:00+00:00"
    assert freeze["berlin"].at_local.isoformat() == "2026-12-05T18:00:00+01:00"
    assert freeze["berlin"].until == timedelta(minutes=10) and not freeze["berlin"].past
    call = next(r for r in rows if r.stage == "call")
    assert call.past


def test_city_filter() -> None:
    s = load_scenario_file(EXAMPLES / "same-instant.yaml")
    rows = build_plan(s, NOW, city="london")
    assert {r.city for r in rows} == {"london"}
    assert [r.stage for r in rows] == [stage.id for stage in s.stages]
    with pytest.raises(KeyError):
        build_plan(s, NOW, city="paris")


def test_masked_by_default() -> None:
    s = load_scenario_text(SECRET)
    rows = build_plan(s, NOW)
    assert all(r.content is None and r.place is None for r in rows)
    items = plan_json(rows)
    assert all("text" not in i and "place" not in i for i in items)
    console = Console(width=200, record=True)
    console.print(plan_table(s, rows))
    table = console.export_text()
    assert MASK in table
    for secret in SECRETS:
        assert secret not in table and secret not in json.dumps(items)


def test_revealed() -> None:
    s = load_scenario_text(SECRET)
    rows = build_plan(s, NOW, reveal=True)
    items = plan_json(rows, reveal=True)
    assert items == [
        {
            "scenario": "secret",
            "city": "dc",
            "stage": "early",
            "at_utc": "2026-12-05T16:00:00Z",
            "at_local": "2026-12-05T11:00:00-05:00",
            "timezone": "America/New_York",
            "rooms": ["!dc:example.org"],
            "until_seconds": -3000,
            "past": True,
            "text": "[bold red]Meet[/] near the old oak, Washington",
            "place": None,
        },
        {
            "scenario": "secret",
            "city": "dc",
            "stage": "go",
            "at_utc": "2026-12-05T17:00:00Z",
            "at_local": "2026-12-05T12:00:00-05:00",
            "timezone": "America/New_York",
            "rooms": ["!dc:example.org"],
            "until_seconds": 600,
            "past": False,
            "text": "Go to Hidden Courtyard geo:38.1234,-77.5678",
            "place": {
                "id": "spot",
                "name": "Hidden Courtyard",
                "geo": [38.1234, -77.5678],
                "geo_uri": "geo:38.1234,-77.5678",
                "note": "behind the gate",
            },
        },
    ]
    console = Console(width=250, record=True)
    console.print(plan_table(s, rows, reveal=True))
    table = console.export_text()
    # Scenario text is shown as written, never interpreted as rich markup.
    assert "[bold red]Meet[/] near the old oak" in table
    assert "Hidden Courtyard" in table and MASK not in table


# --- through the CLI -------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stdout, result.stderr


def test_cli_json_on_multi_city_example() -> None:
    code, out, _ = invoke("plan", str(EXAMPLES / "same-instant.yaml"), "--format", "json")
    assert code == 0
    items = json.loads(out)
    freeze = {i["city"]: i for i in items if i["stage"] == "freeze"}
    assert freeze["washington"]["at_local"] == "2026-12-05T12:00:00-05:00"
    assert freeze["london"]["at_local"] == "2026-12-05T17:00:00+00:00"
    assert freeze["berlin"]["at_local"] == "2026-12-05T18:00:00+01:00"
    assert {i["at_utc"] for i in freeze.values()} == {"2026-12-05T17:00:00Z"}
    assert freeze["london"]["rooms"] == [
        "!london-central:example.org",
        "#freeze-london:example.org",
    ]
    assert all("text" not in i for i in items)


def test_cli_text_masked_and_revealed(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(SECRET)
    code, out, _ = invoke("plan", str(path))
    assert code == 0 and MASK in out and "!dc:example.org" in out
    for secret in SECRETS:
        assert secret not in out
    code, out, _ = invoke("plan", str(path), "--reveal", "--format", "json", "--city", "dc")
    assert code == 0 and json.loads(out)[1]["place"]["name"] == "Hidden Courtyard"


def test_cli_unknown_city_is_a_usage_error() -> None:
    code, _, err = invoke("plan", str(EXAMPLES / "same-instant.yaml"), "--city", "paris")
    assert code == 2
    assert "no city 'paris' (cities: washington, london, berlin)" in err


def test_cli_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SECRET.replace("America/New_York", "Nowhere"))
    code, out, err = invoke("plan", str(path))
    assert code == 1 and out == ""
    assert err.startswith(f"{path}:8:15: cities[0].timezone: unknown time zone 'Nowhere'")
