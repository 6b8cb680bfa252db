"""The scenario layer: format, loading with positioned errors, timeline and rendering."""

from bot.scenario.diagnostics import Diagnostic, ScenarioError
from bot.scenario.load import load_scenario_file, load_scenario_text
from bot.scenario.model import City, Failover, Failsafe, Gate, LatePolicy, Place, Scenario, Stage
from bot.scenario.render import (
    Location,
    RenderedStage,
    RenderError,
    render_stage,
    render_template,
)
from bot.scenario.timeline import Dispatch, build_timeline, city_t0, stage_instant

__all__ = [
    "City",
    "Diagnostic",
    "Dispatch",
    "Failover",
    "Failsafe",
    "Gate",
    "LatePolicy",
    "Location",
    "Place",
    "RenderError",
    "RenderedStage",
    "Scenario",
    "ScenarioError",
    "Stage",
    "build_timeline",
    "city_t0",
    "load_scenario_file",
    "load_scenario_text",
    "render_stage",
    "render_template",
    "stage_instant",
]
