"""Pods and roles in the scenario format: loading, text per role, the timeline per
(city, pod, stage, role variant), gates per pod and role, and the pure layer the
run manager calls. Compartmentalisation and assignment have their own files."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bot.library import ScenarioLibrary
from bot.scenario import (
    Scenario,
    ScenarioError,
    build_timeline,
    eventsize,
    load_scenario_file,
    load_scenario_text,
    render_stage,
)
from bot.scenario.audience import (
    pods_reading,
    reaches,
    role_matters,
    role_variants,
    text_key,
    variant_for,
)
from bot.scenario.gates import gate_verdicts
from bot.scenario.plan import build_plan, plan_json
from bot.scenario.render import render_template
from bot.scenario.svg import plan_html, plan_svg
from bot.scenario.timeline import split_lane, split_unit

EXAMPLES = Path(__file__).parent.parent / "scenarios"
EVERYWHERE = EXAMPLES / "blossom-everywhere.yaml"
NOW = datetime(2027, 1, 1, tzinfo=UTC)

BASE = {
    "version": 1,
    "id": "pods",
    "title": "Pods",
    "start": "2027-01-01T12:00:00Z",
    "roles": [{"id": "front", "name": "Front"}, {"id": "support", "name": "Support"}],
    "cities": [
        {
            "id": "hk",
            "name": "Hong Kong",
            "timezone": "Asia/Hong_Kong",
            "direct": True,
            "places": {"target": {"name": "CITYTARGET", "geo": "22.3,114.1"}},
            "pods": [
                {
                    "id": "mk",
                    "rooms": ["!mk:example.org", {"room": "!mks:example.org", "role": "support"}],
                    "places": {"staging": {"name": "MKSTAGING", "geo": "22.31,114.17"}},
                },
                {"id": "cb", "places": {"staging": {"name": "CBSTAGING", "geo": "22.28,114.18"}}},
            ],
        },
        {
            "id": "tp",
            "name": "Taipei",
            "timezone": "Asia/Taipei",
            "rooms": ["!tp:example.org", {"room": "!tpf:example.org", "role": "front"}],
            "places": {
                "target": {"name": "TPTARGET", "geo": "25.0,121.5"},
                "staging": {"name": "TPSTAGING", "geo": "25.01,121.5"},
            },
        },
    ],
    "stages": [
        {"id": "call", "at": "-1d", "text": "Soon in {city}."},
        {
            "id": "gather",
            "at": "-30m",
            "place": "staging",
            "text": {
                "default": "D {staging}",
                "support": "S {staging}",
                "hk.front": "HF {staging}",
                "tp": "T {staging}",
            },
        },
        {
            "id": "go",
            "at": "0m",
            "roles": ["front"],
            "place": "target",
            "require": {"checkins": 2, "per": "pod", "role": "front", "else": "skip"},
            "text": "Go {target}",
        },
    ],
}


def scenario() -> Scenario:
    return load_scenario_text(yaml.safe_dump(BASE, sort_keys=False))


def test_the_example_has_one_city_four_pods_three_roles() -> None:
    s = load_scenario_file(EVERYWHERE)
    assert len(s.cities) == 1
    assert len(s.cities[0].all_pods) == 4
    assert s.role_ids == ("front", "support", "remote")


def test_rooms_stay_plain_ids_and_carry_their_roles() -> None:
    s = scenario()
    tp = s.city("tp")
    assert tp.rooms == ("!tp:example.org", "!tpf:example.org")
    assert tp.room_roles == {"!tpf:example.org": "front"}
    assert s.city("hk").rooms == ()  # a city with pods has its rooms in its pods
    assert s.city("hk").pod("mk").rooms == ("!mk:example.org", "!mks:example.org")


def test_the_most_specific_text_wins() -> None:
    s = scenario()
    gather = s.stage("gather")
    hk, tp = s.city("hk"), s.city("tp")
    assert text_key(gather, hk, "front") == "hk.front"  # city.role
    assert text_key(gather, hk, "support") == "support"  # role
    assert text_key(gather, tp, "support") == "support"  # role before city
    assert text_key(gather, tp, "front") == "tp"  # city
    assert text_key(gather, tp, None) == "tp"
    assert text_key(gather, hk, None) == "default"


def test_a_stage_limited_to_roles_reaches_no_one_else() -> None:
    go = scenario().stage("go")
    assert reaches(go, "front")
    assert not reaches(go, "support")
    assert not reaches(go, None)  # no role: only the stages meant for everyone
    assert reaches(scenario().stage("call"), None)


def test_render_per_pod_and_role() -> None:
    s = scenario()
    assert render_stage(s, "hk", "gather", pod="mk", role="front").body == "HF MKSTAGING"
    assert render_stage(s, "hk", "gather", pod="cb", role="support").body == "S CBSTAGING"
    assert render_stage(s, "hk", "gather", pod="cb").body == "D CBSTAGING"
    pin = render_stage(s, "hk", "gather", pod="cb").location
    assert pin is not None and pin.name == "CBSTAGING"
    # A pod without its own place reads its city's.
    assert render_stage(s, "hk", "go", pod="mk", role="front").body == "Go CITYTARGET"
    hk = s.city("hk")
    assert render_template("{staging}", s, hk, pod=hk.pod("mk")) == "MKSTAGING"


def test_timeline_one_dispatch_per_city_pod_stage_and_differing_variant() -> None:
    s = scenario()
    keys = [(d.lane, d.unit) for d in build_timeline(s)]
    assert len(keys) == len(set(keys))  # the ledger identity is unique
    gather_mk = [d for d in build_timeline(s) if d.stage_id == "gather" and d.pod_id == "mk"]
    assert {(d.variant, d.audiences, d.rooms) for d in gather_mk} == {
        ("default", (None,), ("!mk:example.org",)),
        ("hk.front", ("front",), ()),  # private participants with the role only
        ("support", ("support",), ("!mks:example.org",)),
    }
    # One text for everyone it reaches: one dispatch, no variant.
    call_cb = [d for d in build_timeline(s) if d.stage_id == "call" and d.pod_id == "cb"]
    assert [(d.lane, d.unit, d.audiences) for d in call_cb] == [
        ("hk/cb", "call", (None, "front", "support"))
    ]
    # Taipei is not direct: only the roles its rooms have are audiences.
    go_tp = [d for d in build_timeline(s) if d.city_id == "tp" and d.stage_id == "go"]
    assert [(d.lane, d.unit, d.rooms) for d in go_tp] == [("tp", "go", ("!tpf:example.org",))]


def test_lane_and_unit_round_trip() -> None:
    for d in build_timeline(scenario()):
        assert split_lane(d.lane) == (d.city_id, d.pod_id)
        assert split_unit(d.unit) == (d.stage_id, d.variant)


@pytest.mark.parametrize(
    "path", [p for p in sorted(EXAMPLES.glob("*.yaml")) if p != EVERYWHERE], ids=lambda p: p.stem
)
def test_without_pods_or_roles_the_identity_is_city_and_stage(path: Path) -> None:
    s = load_scenario_file(path)
    timeline = build_timeline(s)
    assert len(timeline) == len(s.cities) * len(s.stages)
    for d in timeline:
        assert (d.lane, d.unit) == (d.city_id, d.stage_id)
        assert (d.pod_id, d.variant, d.audiences) == (None, None, (None,))
        assert d.rooms == s.city(d.city_id).rooms


def test_variant_for_a_person() -> None:
    s = scenario()
    hk = s.city("hk")
    variants = role_variants(s, hk, hk.pod("mk"), s.stage("go"))
    assert variant_for(variants, "support") is None
    chosen = variant_for(variants, "front")
    assert chosen is not None and chosen.role == "front"


def test_gate_per_pod_counts_each_pod_and_only_the_role() -> None:
    s = scenario()
    gate = s.stage("go").require
    assert gate is not None
    counts = {("mk", "front"): 2, ("mk", None): 5, ("cb", "front"): 1, ("cb", "support"): 9}
    verdicts = gate_verdicts(gate, s.city("hk"), counts)
    assert {p: (v.counted, v.action) for p, v in verdicts.items()} == {
        "mk": (2, "go"),
        "cb": (1, "skip"),  # below quorum: its else; mk still goes
    }


def test_gate_without_per_counts_the_city_as_before() -> None:
    s = scenario()
    gate = s.stage("go").require
    assert gate is not None
    city_wide = gate.model_copy(update={"per": None, "role": None})
    verdicts = gate_verdicts(city_wide, s.city("hk"), {("mk", None): 1, ("cb", "front"): 1})
    assert {p: (v.counted, v.action) for p, v in verdicts.items()} == {
        "mk": (2, "go"),
        "cb": (2, "go"),
    }
    plain = load_scenario_file(EXAMPLES / "quorum.yaml")
    floor = plain.stage("floor").require
    assert floor is not None
    (verdict,) = gate_verdicts(floor, plain.city("berlin"), {(None, None): 24}).values()
    assert (verdict.pod, verdict.counted, verdict.action) == (None, 24, "skip")


def test_plan_filters_and_columns() -> None:
    s = scenario()
    rows = build_plan(s, NOW, pod="mk", role="support")
    assert {(r.city, r.pod, r.stage) for r in rows} == {
        ("hk", "mk", "call"),
        ("hk", "mk", "gather"),
    }
    assert build_plan(s, NOW, pod="hk/cb") == build_plan(s, NOW, pod="cb")
    item = plan_json(build_plan(s, NOW, role="front"), scenario=s)[0]
    assert {"pod", "roles", "variant"} <= set(item)
    assert "text" not in item  # masked unless revealed
    with pytest.raises(KeyError):
        build_plan(s, NOW, pod="nowhere")
    with pytest.raises(KeyError):
        build_plan(s, NOW, role="nobody")


def test_plan_json_of_plain_scenarios_has_no_new_keys() -> None:
    s = load_scenario_file(EXAMPLES / "lantern-walk.yaml")
    assert all(
        {"pod", "roles", "variant"}.isdisjoint(i) for i in plan_json(build_plan(s, NOW), scenario=s)
    )


def test_the_bot_loads_pods_and_roles_and_takes_invites_to_pod_rooms(tmp_path: Path) -> None:
    # The run manager acts on pods and roles now (it refused them before it did):
    # the library finds the scenario, and an invite to a pod's room is opted in.
    shutil.copy(EVERYWHERE, tmp_path / EVERYWHERE.name)
    shutil.copy(EXAMPLES / "quorum.yaml", tmp_path / "quorum.yaml")
    library = ScenarioLibrary(tmp_path)
    assert library.find("blossom-everywhere").scenario.id == "blossom-everywhere"
    assert library.find("silent-disco-quorum").scenario.id == "silent-disco-quorum"
    assert {ls.scenario.id for ls in library.all_valid()} == {
        "blossom-everywhere",
        "silent-disco-quorum",
    }
    listed, direct = library.opt_in_facts()
    assert {"!mongkok:example.org", "!mongkok-medics:example.org"} <= listed
    assert direct


def test_svg_draws_pods_as_sub_lanes_and_stays_masked() -> None:
    s = load_scenario_file(EVERYWHERE)
    svg = plan_svg(s)
    root = ET.fromstring(svg.encode())
    ns = {"svg": "http://www.w3.org/2000/svg"}
    lanes = root.findall(".//svg:g[@class='lane']", ns)
    assert [(g.get("data-city"), g.get("data-pod")) for g in lanes] == [
        ("hk", "mongkok"),
        ("hk", "causeway"),
        ("hk", "shatin"),
        ("hk", "tsuenwan"),
    ]
    secrets = [p.name for pod in s.cities[0].all_pods for p in pod.places.values()]
    secrets += [p.name for p in s.cities[0].places.values()]
    for page in (svg, plan_html(s)):
        assert not any(secret in page for secret in secrets)
    one = ET.fromstring(plan_svg(s, pod="hk/shatin", role="support").encode())
    assert [g.get("data-pod") for g in one.findall(".//svg:g[@class='lane']", ns)] == ["shatin"]
    marks = one.findall(".//svg:g[@class='mark']", ns)
    assert {m.get("data-stage") for m in marks} == {"call", "gather", "spot", "disperse"}
    assert "Sha Tin" in plan_svg(s, reveal=True, pod="shatin")


def test_every_pod_and_role_variant_is_measured() -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["stages"][1]["text"]["support"] = "S {staging} " + "\\" * 20_000
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(yaml.safe_dump(data, sort_keys=False))
    messages = {d.message for d in caught.value.diagnostics}
    # Each pod that reads the role's entry, and the city without pods.
    assert {m.split(":")[0] for m in messages} == {"stages[1].text.support"}
    assert any("pod 'mk' of city 'hk'" in m for m in messages)
    assert any("pod 'cb' of city 'hk'" in m for m in messages)
    assert any("in city 'tp'" in m for m in messages)
    tagged = eventsize.text_size("x", "x", "s", "City", "c", "st", pod="p", variant="c.front")
    assert tagged > eventsize.text_size("x", "x", "s", "City", "c", "st")


def test_a_city_redirect_reaches_only_the_pods_that_read_the_citys_place() -> None:
    s = scenario()
    assert pods_reading(s.city("hk"), "target") == ("mk", "cb")
    assert pods_reading(s.city("hk"), "staging") == ()  # every pod has its own


def test_delays_per_city_or_per_pod() -> None:
    s = scenario()
    base = {(d.lane, d.unit): d.at for d in build_timeline(s)}
    shifted = build_timeline(s, delays={"hk": timedelta(minutes=10), "hk/cb": timedelta(1)})
    for d in shifted:
        want = {"hk/mk": timedelta(minutes=10), "hk/cb": timedelta(1)}.get(d.lane, timedelta(0))
        assert d.at - base[(d.lane, d.unit)] == want
    with pytest.raises(ValueError):
        build_timeline(s, delays={"hk/nowhere": timedelta(1)})


def test_which_stages_need_a_role() -> None:
    s = load_scenario_file(EVERYWHERE)
    assert [st.id for st in s.stages if role_matters(s, st)] == ["gather", "spot"]
    plain = load_scenario_file(EXAMPLES / "lantern-walk.yaml")
    assert not any(role_matters(plain, st) for st in plain.stages)
