"""Every example in scenarios/ is valid and says what its name promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.scenario import build_timeline, load_scenario_file, load_scenario_text, render_stage

EXAMPLES = Path(__file__).parent.parent / "scenarios"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_the_required_examples_exist() -> None:
    names = {p.name for p in FILES}
    assert {
        "single-city.yaml",
        "same-instant.yaml",
        "same-local-time.yaml",
        "quorum.yaml",
        "demo.yaml",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_example_is_valid_and_renders(path: Path) -> None:
    s = load_scenario_file(path)
    for dispatch in build_timeline(s):
        rendered = render_stage(
            s, dispatch.city_id, dispatch.stage_id, pod=dispatch.pod_id, role=dispatch.audiences[0]
        )
        assert rendered.body.strip()
    if s.abort_text is not None:
        assert "{" not in s.abort_text.replace("{city}", "")


def test_single_city() -> None:
    assert len(load_scenario_file(EXAMPLES / "single-city.yaml").cities) == 1


def test_same_local_time_is_noon_everywhere() -> None:
    s = load_scenario_file(EXAMPLES / "same-local-time.yaml")
    go = [d for d in build_timeline(s) if d.stage_id == "go"]
    assert len({d.at for d in go}) == len(s.cities)  # different instants
    for d in go:
        assert d.at.astimezone(s.city(d.city_id).tz).strftime("%H:%M") == "12:00"


def test_quorum_has_a_gate_and_a_dispersal() -> None:
    s = load_scenario_file(EXAMPLES / "quorum.yaml")
    gated = [stage for stage in s.stages if stage.require is not None]
    assert gated and gated[0] is not s.stages[0]
    assert s.stages[-1].id == "disperse"


def test_demo_shape() -> None:
    s = load_scenario_file(EXAMPLES / "demo.yaml")
    assert [c.id for c in s.cities] == ["washington", "london", "berlin"]
    assert [st.id for st in s.stages] == ["call", "staging", "location", "disperse"]
    assert s.stage("location").require is not None
    assert all(c.start is None for c in s.cities)  # so overriding `start` moves everything
    assert s.abort_text is not None
    for city in s.cities:
        assert render_stage(s, city.id, "location").location is not None


def test_readme_examples_are_valid() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme.split("## Scenario format", 1)[1]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    full = load_scenario_text(blocks[0])
    assert full == load_scenario_file(EXAMPLES / "quorum.yaml")
