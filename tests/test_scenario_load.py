"""Loading: parsing into the model, positioned errors, input limits, secrecy of errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.scenario import (
    Gate,
    LatePolicy,
    Place,
    Scenario,
    ScenarioError,
    load_scenario_file,
    load_scenario_text,
)
from bot.scenario.load import MAX_FILE_BYTES

BASE = """\
version: 1
id: test
title: Test
start: 2026-12-05T17:00:00Z
cities:
  - id: dc
    name: Washington
    timezone: America/New_York
    rooms: ["!dc:example.org", "#dc-alias:example.org"]
    places:
      square: {name: Lafayette Square, geo: "38.8997,-77.0366", note: north lawn}
  - id: berlin
    name: Berlin
    timezone: Europe/Berlin
    start: 2026-12-05T12:00
    rooms: ["!berlin:example.org"]
    places:
      square: {name: Monbijoupark, geo: [52.5236, 13.398]}
stages:
  - id: call
    at: -2d
    text: Hello {city}
  - id: go
    at: 0m
    place: square
    require: {checkins: 3, else: skip}
    late: {skip_after: 10m}
    text:
      default: "Go to {square}"
      berlin: "Los zum {square}"
"""


def errors(text: str | bytes) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "s.yaml")
    return [str(d) for d in caught.value.diagnostics]


def test_parses_into_the_model() -> None:
    s = load_scenario_text(BASE)
    assert isinstance(s, Scenario)
    assert s.start == datetime(2026, 12, 5, 17, tzinfo=UTC)
    dc, berlin = s.cities
    assert dc.rooms == ("!dc:example.org", "#dc-alias:example.org")
    assert dc.start is None and dc.tz.key == "America/New_York"
    assert berlin.start == datetime(2026, 12, 5, 12, 0)  # naive wall clock
    assert dc.places["square"] == Place(
        id="square", name="Lafayette Square", geo=(38.8997, -77.0366), note="north lawn"
    )
    assert berlin.places["square"].geo == (52.5236, 13.398)
    call, go = s.stages
    assert call.at == timedelta(days=-2)
    assert call.late == LatePolicy(skip_after=None)
    assert call.require is None
    assert go.require == Gate(checkins=3, otherwise="skip")
    assert go.late.skip_after == timedelta(minutes=10)
    assert go.text == {"default": "Go to {square}", "berlin": "Los zum {square}"}
    assert s.city("berlin") is berlin and s.stage("go") is go
    with pytest.raises(KeyError):
        s.city("paris")
    with pytest.raises(KeyError):
        s.stage("nope")


def test_defaults_and_shorthands() -> None:
    text = BASE.replace("late: {skip_after: 10m}", "late: send").replace(
        "{checkins: 3, else: skip}", "{checkins: 3}"
    )
    go = load_scenario_text(text).stage("go")
    assert go.late.skip_after is None
    assert go.require is not None and go.require.otherwise == "hold"


def test_absolute_at_and_offsets() -> None:
    text = BASE.replace("at: 0m", "at: 2026-12-05T18:00:00+01:00").replace("at: -2d", 'at: "+0s"')
    s = load_scenario_text(text)
    assert s.stage("go").at == datetime(2026, 12, 5, 17, tzinfo=UTC)
    assert s.stage("call").at == timedelta(0)


def test_equal_times_are_allowed() -> None:
    s = load_scenario_text(BASE.replace("at: -2d", "at: 0m"))
    assert s.stage("call").at == s.stage("go").at


def test_yaml_11_boolean_words_stay_strings_as_keys() -> None:
    # `no:` would be the boolean False to a YAML 1.1 loader.
    text = BASE.replace("  - id: berlin\n", "  - id: 'no'\n").replace(
        "      berlin: ", "      no: "
    )
    s = load_scenario_text(text)
    assert s.cities[1].id == "no"
    assert s.stage("go").text == {"default": "Go to {square}", "no": "Los zum {square}"}


def test_bytes_and_bom() -> None:
    assert load_scenario_text(("\ufeff" + BASE).encode()).id == "test"
    assert load_scenario_text(BASE.encode("utf-8")).id == "test"


def test_file_and_text_agree(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    assert load_scenario_file(path) == load_scenario_text(BASE)


def test_models_are_frozen() -> None:
    s = load_scenario_text(BASE)
    with pytest.raises(ValueError):
        s.cities[0].name = "x"  # type: ignore[misc]


def test_gate_by_name_in_code() -> None:
    assert Gate(checkins=1, otherwise="abort").otherwise == "abort"
    assert Gate.model_validate({"checkins": 1, "else": "skip"}).otherwise == "skip"


def test_all_errors_reported_with_positions() -> None:
    text = BASE.replace("America/New_York", "America/Nowhere").replace("at: -2d", "at: yesterday")
    assert errors(text) == [
        "s.yaml:8:15: cities[0].timezone: unknown time zone 'America/Nowhere' "
        "(expected an IANA name like Europe/Berlin)",
        "s.yaml:21:9: stages[0].at: expected an offset like -2d, -45m, 0m, +1h30m or +90s, "
        "or an ISO 8601 instant with an offset or Z, like 2026-12-05T17:00:00Z",
    ]


# --- input limits -------------------------------------------------------------


def test_fifty_megabytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: cheap to make
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    assert [str(d) for d in caught.value.diagnostics] == [
        f"{path}:1:1: the file is too large (52428800 bytes; at most {MAX_FILE_BYTES})"
    ]


def test_large_text_is_refused() -> None:
    assert errors(b"#" * (MAX_FILE_BYTES + 1)) == [
        f"s.yaml:1:1: the file is too large ({MAX_FILE_BYTES + 1} bytes; at most {MAX_FILE_BYTES})"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        "- " * 10_000 + "x",
        "{a: " * 10_000 + "1" + "}" * 10_000,
    ],
    ids=["flow-lists", "block-lists", "flow-maps"],
)
def test_ten_thousand_levels(text: str) -> None:
    (message,) = errors(text)
    assert message.endswith("nesting is deeper than 64 levels")


def test_billion_laughs() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join(["*" + previous] * 9) + "]")
        previous = name
    (message,) = errors("\n".join(lines))
    assert message == "s.yaml:6:4: the file expands to more than 100000 values (alias bomb?)"


def test_harmless_aliases_work() -> None:
    text = BASE.replace('rooms: ["!berlin:example.org"]', 'rooms: &rooms ["!berlin:example.org"]')
    assert load_scenario_text(text).cities[1].rooms == ("!berlin:example.org",)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "s.yaml:1:1: the file is empty (no YAML document)"),
        (b"   \n\n", "s.yaml:1:1: the file is empty (no YAML document)"),
        (b"- a\n- b\n", "s.yaml:1:1: the top level must be a mapping of keys, not a list"),
        (b"42\n", "s.yaml:1:1: the top level must be a mapping of keys, not a single value"),
        (b"id: x\ntitle: \xff\xfe\n", "s.yaml:2:8: the file is not UTF-8 (byte 0xff)"),
        (b"\x00", "s.yaml:1:1: character U+0000 is not allowed in YAML"),
    ],
)
def test_unusable_files(data: bytes, expected: str) -> None:
    assert errors(data) == [expected]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(tmp_path / "nope.yaml")
    assert str(caught.value) == (
        f"{tmp_path / 'nope.yaml'}:1:1: cannot read the file: No such file or directory"
    )


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(tmp_path)
    assert "cannot read the file" in str(caught.value)


# --- secrecy -------------------------------------------------------------------

SECRETS = ["Lafayette Square", "38.8997", "north lawn", "Monbijoupark", "Go to", "Los zum"]


def test_errors_never_quote_content() -> None:
    text = (
        BASE.replace('"38.8997,-77.0366"', '"138.8997,-77.0366"')
        .replace("Go to {square}", "Go to {square} {meet at the old oak} {")
        .replace("Los zum {square}", "Los zum {square.nope}")
    )
    messages = errors(text)
    assert messages
    for secret in [*SECRETS, "old oak", "138.8997"]:
        assert not any(secret in m for m in messages), secret
    # Once the shape is right, the cross-checks are just as discreet.
    text = BASE.replace("Go to {square}", "Go to {square} {meet at the old oak} {").replace(
        "Los zum {square}", "Los zum {square.nope}"
    )
    messages = errors(text)
    assert len(messages) == 3
    for secret in [*SECRETS, "old oak"]:
        assert not any(secret in m for m in messages), secret


# --- robustness ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_a_scenario_or_diagnostics(text: str) -> None:
    try:
        load_scenario_text(text)
    except ScenarioError as exc:
        assert exc.diagnostics
        assert not any("internal error" in d.message for d in exc.diagnostics)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_scenarios_give_diagnostics(data: st.DataObject) -> None:
    lines = BASE.splitlines()
    index = data.draw(st.integers(0, len(lines) - 1))
    action = data.draw(st.sampled_from(["drop", "replace", "duplicate", "truncate"]))
    if action == "drop":
        del lines[index]
    elif action == "duplicate":
        lines.insert(index, lines[index])
    elif action == "truncate":
        cut = data.draw(st.integers(0, len(lines[index])))
        lines[index] = lines[index][:cut]
    else:
        lines[index] = data.draw(st.text(max_size=40))
    try:
        load_scenario_text("\n".join(lines))
    except ScenarioError as exc:
        assert exc.diagnostics
        assert not any("internal error" in d.message for d in exc.diagnostics)
        for d in exc.diagnostics:
            assert d.line >= 1 and d.col >= 1
