"""Compartmentalised reveal, as a property: for any scenario with pods whose places
are unique marker strings, nothing rendered for pod A — any stage, in any role
variant, its map pin, a correction after a redirect of A, the stop message — ever
contains a marker of another pod's own places (or of another pod's redirect). The
city's shared places are, by design, everyone's. The way tests/test_leaks.py
searches for markers, without a server: this is the pure layer the run manager
renders with."""

from __future__ import annotations

import uuid
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.scenario import Place, build_timeline, load_scenario_text, render_stage
from bot.scenario.render import RenderedStage, render_template

ROLES = ("front", "support", "remote")


def _marker(kind: str) -> str:
    return f"ZQ{kind}{uuid.uuid4().hex[:10]}"


@st.composite
def pod_scenarios(draw: st.DrawFn) -> tuple[str, dict[tuple[str, str], set[str]]]:
    """A scenario, and each pod's own markers (city, pod) → strings."""
    markers: dict[tuple[str, str], set[str]] = {}
    cities = []
    place_ids = ["staging", "spot"]
    for c in range(draw(st.integers(1, 2))):
        city_id = f"c{c}"
        pods = []
        shared = {"home": {"name": _marker("HOME"), "geo": "1.5,2.5"}}
        for p in range(draw(st.integers(2, 4))):
            pod_id = f"p{p}"
            own: dict[str, Any] = {}
            mine = markers.setdefault((city_id, pod_id), set())
            for place in place_ids:
                # A pod may leave a place to its city; then the city must define it.
                if draw(st.booleans()) or place == "staging":
                    name, note = _marker("NAME"), _marker("NOTE")
                    lat = f"{draw(st.integers(10, 60))}.{uuid.uuid4().int % 10**6:06d}1"
                    own[place] = {"name": name, "note": note, "geo": f"{lat},45.5"}
                    mine |= {name, note, lat}
            rooms: list[Any] = [f"!{city_id}{pod_id}:example.org"]
            if draw(st.booleans()):
                rooms.append({"room": f"!{city_id}{pod_id}s:example.org", "role": "support"})
            pods.append({"id": pod_id, "rooms": rooms, "places": own})
        shared["spot"] = {"name": _marker("CITYSPOT"), "geo": "3.5,4.5"}
        cities.append(
            {
                "id": city_id,
                "name": f"City {c}",
                "timezone": "UTC",
                "direct": draw(st.booleans()),
                "places": shared,
                "pods": pods,
            }
        )
    stages = [
        {"id": "call", "at": "-1d", "text": "Soon in {city}."},
        {
            "id": "gather",
            "at": "-30m",
            "place": "staging",
            "text": {
                "default": "Gather at {staging} ({staging.geo}) {home}",
                "support": "Near {staging}: {staging.map}",
                "remote": "Stay home.",
            },
        },
        {
            "id": "spot",
            "at": "0m",
            "place": "spot",
            "roles": ["front", "support"],
            "text": {"front": "Now {spot} {spot.map}", "support": "Edge of {spot}"},
        },
        {"id": "disperse", "at": "+30m", "text": "Leave by {home}."},
    ]
    data = {
        "version": 1,
        "id": "compartments",
        "title": "Compartments",
        "start": "2027-01-01T12:00:00Z",
        "abort_text": "Off. Leave {staging} now ({staging.geo}).",
        "roles": [{"id": r, "name": r.title()} for r in ROLES],
        "cities": cities,
        "stages": stages,
    }
    return yaml.safe_dump(data, sort_keys=False), markers


def _strings(rendered: RenderedStage) -> list[str]:
    out = [rendered.body, rendered.html]
    if rendered.location is not None:
        loc = rendered.location
        out += [loc.name, loc.geo_uri, loc.description]
    return out


def _others(markers: dict[tuple[str, str], set[str]], city: str, pod: str) -> set[str]:
    return {m for key, ms in markers.items() if key != (city, pod) for m in ms}


def _redirect() -> dict[str, Place]:
    """A redirect of this pod's staging point, with a marker of its own."""
    return {"staging": Place(id="staging", name=_marker("REDIR"), geo=(5.0, 6.0))}


@settings(max_examples=60, deadline=None)
@given(pod_scenarios())
def test_a_pod_never_reads_another_pods_places(
    case: tuple[str, dict[tuple[str, str], set[str]]],
) -> None:
    text, markers = case
    scenario = load_scenario_text(text)
    redirects = {(c.id, p.id): _redirect() for c in scenario.cities for p in c.all_pods}
    redirect_markers = {k: {v["staging"].name} for k, v in redirects.items()}
    checked = 0
    for d in build_timeline(scenario):
        assert d.pod_id is not None
        forbidden = _others(markers, d.city_id, d.pod_id) | _others(
            redirect_markers, d.city_id, d.pod_id
        )
        for role in d.audiences:
            outputs = _strings(
                render_stage(scenario, d.city_id, d.stage_id, pod=d.pod_id, role=role)
            )
            # A correction after a redirect of this pod (the run manager re-renders).
            outputs += _strings(
                render_stage(
                    scenario,
                    d.city_id,
                    d.stage_id,
                    pod=d.pod_id,
                    role=role,
                    place_overrides=redirects[(d.city_id, d.pod_id)],
                )
            )
            for out in outputs:
                assert not any(m in out for m in forbidden), (d.lane, d.unit, role)
            if d.stage_id == "gather" and role is None:
                # Positive control: the pod's own staging point is there.
                own = scenario.city(d.city_id).pod(d.pod_id).places["staging"].name
                assert own in outputs[0]
            checked += 1
    # The stop message, as the run manager renders it for each pod.
    for city in scenario.cities:
        for pod in city.all_pods:
            forbidden = _others(markers, city.id, pod.id) | _others(
                redirect_markers, city.id, pod.id
            )
            assert scenario.abort_text is not None
            for overrides in (None, redirects[(city.id, pod.id)]):
                body = render_template(
                    scenario.abort_text, scenario, city, pod=pod, place_overrides=overrides
                )
                assert not any(m in body for m in forbidden)
                # Positive control: the pod's own staging point is there.
                own = overrides["staging"].name if overrides else pod.places["staging"].name
                assert own in body
    assert checked
