"""The size guarantee: a stage the validator accepts fits in one Matrix event.

Synapse refuses an event whose PDU (canonical JSON of the whole event, envelope
included) is over 65,536 bytes. These tests build the events as the bot really
sends them (bot.content, the dispatch tag, matrix-nio's plaintext serialisation,
real megolm encryption by vodozemac) inside a worst-case envelope, independently
of the arithmetic in bot.scenario.eventsize, and check that whatever validation
accepts fits, while the texts that used to pass and did not fit are refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import vodozemac
import yaml
from canonicaljson import encode_canonical_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nio.api import Api

from bot import DISPATCH_KEY
from bot.content import stage_messages
from bot.scenario import ScenarioError, eventsize, load_scenario_text, render_stage
from bot.scenario.render import to_html

MAX_PDU = 65_536

# Worst case of everything in the envelope that the scenario does not decide (the
# spec's limits where there is one): a 255-character sender, room id and server
# name, the 10 prev_events Synapse allows, 3 auth events, a long signing key id.
_EVENT_ID = "$" + "E" * 43
_SERVER = "s" * 255
_ROOM_ID = "!" + "r" * 254
_RUN = "$" + "R" * 254


def _envelope(event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth_events": [_EVENT_ID] * 3,
        "content": content,
        "depth": 2**53 - 1,
        "hashes": {"sha256": "h" * 43},
        "origin_server_ts": 9_999_999_999_999,
        "prev_events": [_EVENT_ID] * 10,
        "room_id": _ROOM_ID,
        "sender": "@" + "u" * 203 + ":" + "s" * 50,
        "signatures": {_SERVER: {"ed25519:" + "k" * 32: "S" * 86}},
        "type": event_type,
        "unsigned": {"age_ts": 9_999_999_999_999},
    }


def _plain_pdu(content: dict[str, Any]) -> int:
    return len(encode_canonical_json(_envelope("m.room.message", content)))


def _encrypted_pdu(content: dict[str, Any]) -> int:
    # What nio's OlmMachine.group_encrypt does: {"content", "type"} plus room_id,
    # serialised with Api.to_json (ensure_ascii), megolm-encrypted, base64.
    plaintext = Api.to_json({"content": content, "type": "m.room.message", "room_id": _ROOM_ID})
    ciphertext = vodozemac.GroupSession().encrypt(plaintext.encode()).to_base64()
    encrypted = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": "K" * 43,
        "ciphertext": ciphertext,
        "session_id": "I" * 43,
        "device_id": "D" * 64,
    }
    return len(encode_canonical_json(_envelope("m.room.encrypted", encrypted)))


def _scenario(text: str, **extra: Any) -> dict[str, Any]:
    place = {"name": extra.pop("place_name", "Square"), "geo": "38.9,-77.03"}
    if "note" in extra:
        place["note"] = extra.pop("note")
    data: dict[str, Any] = {
        "version": 1,
        "id": "s" * 64,
        "title": "Size",
        "start": "2026-12-05T17:00:00Z",
        "cities": [
            {
                "id": "c" * 64,
                "name": extra.pop("city_name", "Washington"),
                "timezone": "America/New_York",
                "rooms": ["!dc:example.org"],
                "places": {"square": place},
            }
        ],
        "stages": [{"id": "t" * 64, "at": "0m", "text": text, "place": "square"}],
    }
    data.update(extra)
    return data


def _yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, allow_unicode=True, width=1 << 30)


def _load(data: dict[str, Any]) -> Any:
    return load_scenario_text(_yaml(data), "size.yaml")


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        _load(data)
    return [f"{d.line}:{d.col}: {d.message}" for d in caught.value.diagnostics]


def _worst_sent_pdu(data: dict[str, Any]) -> int:
    """The largest PDU any event of the loaded scenario's stage becomes, plain or
    encrypted, live or drill, as bot.content builds it, with a 255-character run."""
    scenario = _load(data)
    city, stage = scenario.cities[0], scenario.stages[0]
    rendered = render_stage(scenario, city.id, stage.id)
    label = f"{scenario.id} · {city.name} · {stage.id}"
    worst = 0
    for drill in (None, label):
        for message in stage_messages(rendered, drill_label=drill):
            tag = {
                "scenario": scenario.id,
                "city": city.id,
                "stage": stage.id,
                "part": str(message.part),
                "run": _RUN,
            }
            content = {**message.content, DISPATCH_KEY: tag}
            worst = max(worst, _plain_pdu(content), _encrypted_pdu(content))
    return worst


# -- the texts that used to pass and do not fit ---------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "passed_before"),
    [
        # Within the old 40,000-byte rule (body plus HTML, UTF-8), yet far over 64 KiB.
        ("backslashes", "\\" * 19_900, True),
        ("cyrillic", "ж" * 5_000, True),
        ("emoji", "🌸" * 2_500, True),
        # The other characters JSON or HTML expand, just over the new limit.
        ("quotes", '"' * 6_500, False),
        ("html-escaped", "<>&" * 3_300, False),
        ("newlines", "a\n" * 6_000, False),
    ],
)
def test_texts_that_do_not_fit_are_refused(name: str, text: str, passed_before: bool) -> None:
    data = _scenario(text)
    old_rule = len(text.encode()) + len(to_html(text).encode()) <= 40_000
    assert old_rule == passed_before
    assert _worst_sent_pdu_unchecked(data) > MAX_PDU  # they really do not fit
    errors = _errors(data)
    assert len(errors) == 1, errors
    assert errors[0].split(": ", 1)[1].startswith("stages[0].text: stage '" + "t" * 64), errors
    assert "is too large to send in city '" + "c" * 64 + "'" in errors[0], errors
    assert "bytes over the limit" in errors[0], errors


def _worst_sent_pdu_unchecked(data: dict[str, Any]) -> int:
    """Like _worst_sent_pdu for a scenario the validator may refuse (only the size)."""
    text = data["stages"][0]["text"]
    body = f"[DRILL] {'s' * 64} · {data['cities'][0]['name']} · {'t' * 64}\n{text}"
    content = {
        "msgtype": "m.text",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": to_html(body),
        DISPATCH_KEY: {"scenario": "s" * 64, "city": "c" * 64, "stage": "t" * 64, "part": "text"},
    }
    return max(_plain_pdu(content), _encrypted_pdu(content))


def test_the_message_says_how_far_over() -> None:
    errors = _errors(_scenario("\\" * 19_900))
    (message,) = errors
    over = int(message.split(" bytes over the limit")[0].rsplit(" ", 1)[1].replace(",", ""))
    limit = eventsize.CONTENT_LIMIT
    size = int(message.split(" bytes")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert size - limit == over > 0
    assert "\\" not in message  # the text itself is never quoted


def test_plain_ascii_that_fits_is_still_accepted() -> None:
    # 19,000 letters passed before and fit encrypted: no organiser loses a text.
    assert _worst_sent_pdu(_scenario("x" * 19_000)) <= MAX_PDU


def test_each_city_is_measured_with_its_own_text() -> None:
    data = _scenario("{city} " * 2_000)
    data["cities"].append(
        {**data["cities"][0], "id": "long", "name": "Ж" * 20, "rooms": ["!l:example.org"]}
    )
    errors = _errors(data)
    assert len(errors) == 1, errors
    assert "in city 'long'" in errors[0], errors


def test_a_place_too_large_for_its_pin_is_refused() -> None:
    errors = _errors(_scenario("Go", note="ж" * 9_000))
    assert len(errors) == 1, errors
    assert "stages[0].place: the map pin of place 'square'" in errors[0], errors
    assert "bytes over the limit" in errors[0], errors


def test_an_abort_text_too_large_is_refused() -> None:
    errors = _errors(_scenario("Go", abort_text="🌸" * 2_500))
    assert len(errors) == 1, errors
    assert "abort_text is too large to send in city" in errors[0], errors


def test_time_placeholders_leave_room_for_seconds() -> None:
    # {time:0m} renders as HH:MM, but after a !delay of seconds as HH:MM:SS.
    scenario = _load(_scenario("{time:0m}"))
    rendered = render_stage(scenario, scenario.cities[0].id, scenario.stages[0].id)
    assert rendered.body == "12:00"
    short = eventsize.stage_sizes(rendered, "s", "Washington", "c", "t", time_placeholders=0)
    padded = eventsize.stage_sizes(rendered, "s", "Washington", "c", "t", time_placeholders=100)
    assert padded["text"] > short["text"]


# -- the arithmetic agrees with real encryption -----------------------------------------


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 127, 128, 1000, 16_383, 16_384, 60_000])
def test_megolm_length_matches_vodozemac(length: int) -> None:
    real = len(vodozemac.GroupSession().encrypt(b"a" * length).to_base64())
    predicted = eventsize.megolm_base64_length(length)
    # The prediction assumes a 5-byte message index (a fresh session uses 1).
    assert real <= predicted <= real + 6


def test_content_limit_leaves_the_envelope_margin() -> None:
    assert eventsize.CONTENT_LIMIT == MAX_PDU - eventsize.ENVELOPE_MARGIN
    # The worst-case envelope these tests use fits in the margin.
    assert len(encode_canonical_json(_envelope("m.room.encrypted", {}))) < (
        eventsize.ENVELOPE_MARGIN
    )


# -- anything accepted fits ------------------------------------------------------------

_RUNS = st.lists(
    st.tuples(
        st.sampled_from(["x", "\\", '"', "ж", "🌸", "<", "&", "\n", "\t", "'", "é", "\u2028"]),
        st.integers(1, 6_000),
    ),
    min_size=1,
    max_size=6,
)


def _join(runs: list[tuple[str, int]]) -> str:
    return "".join(c * n for c, n in runs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_RUNS, note=_RUNS, city_name=_RUNS)
def test_anything_accepted_fits(
    text: list[tuple[str, int]], note: list[tuple[str, int]], city_name: list[tuple[str, int]]
) -> None:
    data = _scenario(
        "Go {city} at {time:0m}. " + _join(text),
        note=_join(note)[:9_000],
        city_name=_join(city_name)[:3_000].strip() or "C",
        abort_text="Stop in {city}. " + _join(text)[::2],
    )
    try:
        _load(data)
    except ScenarioError as exc:
        assert all("too large to send" in d.message for d in exc.diagnostics), exc
        return
    assert _worst_sent_pdu(data) <= MAX_PDU


def _largest_accepted(unit: str) -> int:
    low, high = 0, 70_000  # low accepted, high refused
    while high - low > 1:
        mid = (low + high) // 2
        try:
            _load(_scenario(unit * mid))
            low = mid
        except ScenarioError:
            high = mid
    return low


@pytest.mark.parametrize("unit", ["x", "\\", "ж", "🌸", "<>&", '"'])
def test_the_largest_accepted_text_fits_and_uses_most_of_the_room(unit: str) -> None:
    count = _largest_accepted(unit)
    size = _worst_sent_pdu(_scenario(unit * count))
    assert size <= MAX_PDU
    # Not so cautious that organisers lose much: within the envelope margin plus a little.
    assert size > MAX_PDU - eventsize.ENVELOPE_MARGIN - 200, (unit, count, size)


def test_json_counts_match_nio_and_synapse() -> None:
    content = {"body": 'ж🌸\\"\n\x01\u2028'}
    assert eventsize.ascii_json_length(content) == len(Api.to_json(content))
    assert eventsize.canonical_json_length(content) == len(encode_canonical_json(content))
    assert json.loads(Api.to_json(content)) == content


def test_the_measure_is_of_the_content_the_bot_builds() -> None:
    # bot.scenario.eventsize rebuilds bot.content's messages (the scenario layer
    # cannot import it); if the two ever drift apart, this fails.
    scenario = _load(_scenario('Go to {square} "now" <b>', note="by the fountain"))
    city, stage = scenario.cities[0], scenario.stages[0]
    rendered = render_stage(scenario, city.id, stage.id)
    sizes = eventsize.stage_sizes(rendered, scenario.id, city.name, city.id, stage.id)
    label = f"{scenario.id} · {city.name} · {stage.id}"
    measured = {}
    for message in stage_messages(rendered, drill_label=label):
        tag = {
            "scenario": scenario.id,
            "city": city.id,
            "stage": stage.id,
            "part": str(message.part),
            "run": "$" * eventsize.RUN_ID_BOUND,
        }
        content = {**message.content, DISPATCH_KEY: tag}
        measured[str(message.part)] = eventsize.content_length(content)
    assert measured == sizes
