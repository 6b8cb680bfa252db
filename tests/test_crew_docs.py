"""docs/crew.md does not drift: its config and scenario examples are accepted, and
the heartbeat it shows has the keys the bot writes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from bot.config import CrewConfig
from bot.crew import Heartbeat
from bot.scenario import load_scenario_text

DOC = Path(__file__).parent.parent / "docs" / "crew.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_config_example_is_accepted() -> None:
    configs = [b for b in blocks("yaml") if "members" in b]
    assert configs
    for block in configs:
        crew = CrewConfig.model_validate(yaml.safe_load(block)["crew"])
        assert crew.heartbeat_seconds == 30


def test_scenario_example_is_accepted() -> None:
    fragments = [b for b in blocks("yaml") if "failover" in b]
    assert fragments
    for block in fragments:
        text = "version: 1\nid: doc\ntitle: Doc\nstart: 2026-12-05T17:00:00Z\n" + block
        text += "stages:\n  - id: go\n    at: 0m\n    text: Go\n"
        scenario = load_scenario_text(text)
        assert scenario.failover.grace == timedelta(seconds=20)
        assert scenario.cities[0].crew == ("@blossom:south.example", "@blossom:north.example")


def test_heartbeat_example_has_the_keys_the_bot_writes() -> None:
    (block,) = blocks("json")
    shown = json.loads(block)
    written = Heartbeat(
        "@blossom:north.example",
        datetime(2026, 12, 5, 17, tzinfo=UTC),
        timedelta(seconds=30),
        "0.1.0",
        stopping=True,
        started=datetime(2026, 12, 5, 16, 59, 50, tzinfo=UTC),
    ).content()
    assert set(shown) == set(written)
    assert shown["time"] == written["time"] and shown["interval"] == written["interval"]
