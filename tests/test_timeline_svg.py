"""The plan as a picture: `blossom plan FILE --svg/--html`, lanes, marks, masking."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.scenario import Scenario, build_timeline, load_scenario_file, load_scenario_text
from bot.scenario.render import render_stage
from bot.scenario.svg import plan_html, plan_svg

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "scenarios").glob("*.yaml"))
NS = {"svg": "http://www.w3.org/2000/svg"}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg.encode("utf-8"))  # well-formed XML or this raises


def lanes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{{{NS['svg']}}}g") if g.get("class") == "lane"]


def marks(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{{{NS['svg']}}}g") if g.get("class") == "mark"]


def x_of(mark: ET.Element) -> float:
    shape = next(e for e in mark if e.get("class") == "shape")
    if shape.get("cx") is not None:
        return float(shape.get("cx", "0"))
    if shape.get("x") is not None:
        return float(shape.get("x", "0")) + 7
    return float(shape.get("points", "0,0").split(",")[0])


def texts(element: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in element.iter(f"{{{NS['svg']}}}text")]


def secrets_of(scenario: Scenario) -> set[str]:
    """Every rendered stage body (each pod's, each role variant's) and every place
    name and geo URI (the pods' too)."""
    found = set()
    for city in scenario.cities:
        places = [*city.places.values(), *(p for pod in city.all_pods for p in pod.places.values())]
        for place in places:
            found.add(place.name)
            if place.geo_uri():
                found.add(str(place.geo_uri()))
    for d in build_timeline(scenario):
        rendered = render_stage(scenario, d.city_id, d.stage_id, pod=d.pod_id, role=d.audiences[0])
        found.add(rendered.body.strip())
    return found


def test_demo_lanes_and_marks() -> None:
    scenario = load_scenario_file(ROOT / "scenarios" / "demo.yaml")
    root = parse(plan_svg(scenario))
    assert [g.get("data-city") for g in lanes(root)] == ["washington", "london", "berlin"]
    assert [g.get("data-timezone") for g in lanes(root)] == [
        "America/New_York",
        "Europe/London",
        "Europe/Berlin",
    ]
    found = {(m.get("data-city"), m.get("data-stage")): m for m in marks(root)}
    assert len(found) == 12
    kinds = {stage: found[("london", stage)].get("data-kind") for stage in ("call", "staging")}
    kinds |= {s: found[("london", s)].get("data-kind") for s in ("location", "disperse")}
    assert kinds == {
        "call": "stage",
        "staging": "place",  # reveals a place
        "location": "gate",  # behind a quorum gate
        "disperse": "dispersal",  # the last stage
    }
    # The gate is spelled out; the dispersal is labelled.
    assert {"≥2 check-ins", "else hold"} <= set(texts(found[("berlin", "location")]))
    assert "dispersal" in texts(found[("berlin", "disperse")])
    # Local time under each mark, UTC on the axis.
    assert "12:00 EST" in texts(found[("washington", "location")])
    assert "17:00 GMT" in texts(found[("london", "location")])
    assert "18:00 CET" in texts(found[("berlin", "location")])
    ticks = [
        t.get("data-utc") for t in root.iter(f"{{{NS['svg']}}}text") if t.get("class") == "utc-tick"
    ]
    assert ticks == [
        "2026-12-05T16:40:00Z",
        "2026-12-05T16:50:00Z",
        "2026-12-05T17:00:00Z",
        "2026-12-05T17:10:00Z",
    ]
    # The same instant lines up across lanes; time runs left to right.
    for stage in ("call", "staging", "location", "disperse"):
        assert len({x_of(found[(c, stage)]) for c in ("washington", "london", "berlin")}) == 1
    xs = [x_of(found[("london", s)]) for s in ("call", "staging", "location", "disperse")]
    assert xs == sorted(xs) and len(set(xs)) == 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_content_is_masked(path: Path) -> None:
    scenario = load_scenario_file(path)
    svg = plan_svg(scenario)
    parse(svg)
    for secret in secrets_of(scenario):
        assert secret not in svg, f"{secret!r} leaked into the picture"
    html = plan_html(scenario)
    for secret in secrets_of(scenario):
        assert secret not in html
    assert "secret until release" in html


def test_reveal_puts_content_in_tooltips_only_when_asked() -> None:
    scenario = load_scenario_file(ROOT / "scenarios" / "demo.yaml")
    root = parse(plan_svg(scenario, reveal=True))
    berlin_go = next(
        m
        for m in marks(root)
        if (m.get("data-city"), m.get("data-stage")) == ("berlin", "location")
    )
    title = "".join(next(berlin_go.iter(f"{{{NS['svg']}}}title")).itertext())
    assert "Go now: Monbijoupark" in title
    assert "REVEALED" in "".join(texts(root))


def test_long_gaps_are_cut_and_labelled() -> None:
    scenario = load_scenario_file(ROOT / "scenarios" / "quorum.yaml")  # -3d, then minutes
    root = parse(plan_svg(scenario))
    breaks = [g for g in root.iter(f"{{{NS['svg']}}}g") if g.get("class") == "axis-break"]
    assert len(breaks) == 1
    assert "2d23h30m later" in texts(breaks[0])
    found = {m.get("data-stage"): x_of(m) for m in marks(root) if m.get("data-city") == "berlin"}
    # The minutes-apart stages are not squashed by the three-day gap.
    assert found["disperse"] - found["staging"] > 3 * (found["staging"] - found["call"])


def test_same_local_time_lanes_follow_utc() -> None:
    scenario = load_scenario_file(ROOT / "scenarios" / "same-local-time.yaml")
    root = parse(plan_svg(scenario))
    go = {m.get("data-city"): m for m in marks(root) if m.get("data-stage") == "go"}
    order = sorted(go, key=lambda c: x_of(go[c]))
    assert order == ["auckland", "berlin", "washington", "honolulu"]  # noon local, east first
    for city, label in (("auckland", "12:00 NZDT"), ("honolulu", "12:00 HST")):
        assert label in texts(go[city])
        local = datetime.fromisoformat(go[city].get("data-local", ""))
        assert (local.hour, local.minute) == (12, 0)


def test_one_city_and_stages_at_the_same_instant() -> None:
    scenario = load_scenario_text(
        """
version: 1
id: same-time
title: "Two stages at once <&> 'quoted'"
start: 2026-06-01T12:00:00Z
cities:
  - {id: oslo, name: Oslo, timezone: Europe/Oslo, rooms: ["!oslo:example.org"]}
  - {id: rome, name: Rome, timezone: Europe/Rome, rooms: ["!rome:example.org"]}
stages:
  - {id: one, at: 0m, text: first}
  - {id: two, at: 0m, text: second, require: {checkins: 3, else: skip}}
  - {id: end, at: +5m, text: bye}
"""
    )
    full = parse(plan_svg(scenario))
    only = parse(plan_svg(scenario, city="rome"))
    assert [g.get("data-city") for g in lanes(only)] == ["rome"]
    assert {m.get("data-city") for m in marks(only)} == {"rome"}
    assert float(only.get("height", "0")) < float(full.get("height", "0"))
    rome = {m.get("data-stage"): m for m in marks(only)}
    assert set(rome) == {"one", "two", "end"}
    assert rome["two"].get("data-kind") == "gate"
    assert {"≥3 check-ins", "else skip"} <= set(texts(rome["two"]))
    # The title is escaped, not markup.
    assert "Two stages at once <&> 'quoted'" in "".join(texts(full))


def test_cli_writes_svg_and_html(tmp_path: Path) -> None:
    svg, html = tmp_path / "plan.svg", tmp_path / "plan.html"
    result = CliRunner().invoke(
        main,
        ["plan", str(ROOT / "scenarios" / "demo.yaml"), "--svg", str(svg), "--html", str(html)],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"wrote {svg}", f"wrote {html}"]
    assert len(lanes(parse(svg.read_text()))) == 3
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<table>" in page
    assert page.count("<tr>") == 1 + 12  # header and one row per dispatch


def test_cli_svg_of_invalid_file_fails_without_writing(tmp_path: Path) -> None:
    bad = ROOT / "tests" / "invalid" / "unknown-timezone.yaml"
    out = tmp_path / "x.svg"
    result = CliRunner().invoke(main, ["plan", str(bad), "--svg", str(out)])
    assert result.exit_code == 1
    assert not out.exists()
