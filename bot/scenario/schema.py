"""``blossom schema``: the JSON Schema of the scenario format, for editors."""

from __future__ import annotations

import json
from typing import Any

from bot.scenario.model import Scenario

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file, as editors read it (keys as written in YAML)."""
    schema = Scenario.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": SCHEMA_DIALECT, **schema}


def schema_json() -> str:
    return json.dumps(scenario_schema(), indent=2, ensure_ascii=False)
