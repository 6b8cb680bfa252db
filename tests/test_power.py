"""Power levels read the way the room version defines them (pure)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bot.matrix.power import creators, creators_have_infinite_power, user_power
from bot.matrix.rooms import OPT_IN_POWER, decide_invite

ALICE, BOB, CAROL, MALLORY = "@alice:x", "@bob:x", "@carol:x", "@mallory:x"


def create(version: str | int | None = "12", sender: str = ALICE, **content: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(content)
    if version is not None:
        body["room_version"] = version
    return {"sender": sender, "content": body}


LEVELS = {"users": {BOB: 50, CAROL: 10}, "users_default": 0}


# -- room version 12: creators have unlimited power ---------------------------------------


def test_v12_creator_is_infinite_and_absent_from_levels() -> None:
    assert user_power(ALICE, power_levels=LEVELS, create_event=create()) == math.inf
    assert user_power(ALICE, power_levels=None, create_event=create()) == math.inf


def test_v12_additional_creators_are_infinite() -> None:
    ev = create(additional_creators=[BOB, CAROL])
    assert creators(ev) == {ALICE, BOB, CAROL}
    # Even if the levels (wrongly) list a creator with less, the version's rule wins.
    assert user_power(CAROL, power_levels=LEVELS, create_event=ev) == math.inf
    assert user_power(MALLORY, power_levels=LEVELS, create_event=ev) == 0


def test_v12_others_read_the_levels() -> None:
    ev = create()
    assert user_power(BOB, power_levels=LEVELS, create_event=ev) == 50
    assert user_power(CAROL, power_levels=LEVELS, create_event=ev) == 10
    assert user_power(MALLORY, power_levels=LEVELS, create_event=ev) == 0
    assert user_power(MALLORY, power_levels={"users_default": 20}, create_event=ev) == 20


def test_infinite_power_clears_any_threshold() -> None:
    assert user_power(ALICE, power_levels=LEVELS, create_event=create()) >= OPT_IN_POWER
    assert user_power(ALICE, power_levels=LEVELS, create_event=create()) >= 10**9


@pytest.mark.parametrize("version", ["12", 12, "13", "org.example.custom"])
def test_versions_from_12_on_keep_the_rule(version: str | int) -> None:
    assert creators_have_infinite_power(create(version))


@pytest.mark.parametrize("version", [str(v) for v in range(1, 12)] + [None])
def test_older_versions_use_the_levels(version: str | None) -> None:
    ev = create(version, additional_creators=[BOB])  # ignored before v12
    assert not creators_have_infinite_power(ev)
    levels = {"users": {ALICE: 100, BOB: 0}}
    assert user_power(ALICE, power_levels=levels, create_event=ev) == 100
    assert user_power(BOB, power_levels=levels, create_event=ev) == 0


def test_old_room_creator_demoted_by_levels() -> None:
    """Before v12 a creator is only as powerful as the levels say."""
    ev = create("10")
    assert user_power(ALICE, power_levels={"users": {ALICE: 0}}, create_event=ev) == 0


def test_no_levels_event_creator_100_others_0() -> None:
    ev = create("10")
    assert user_power(ALICE, power_levels=None, create_event=ev) == 100
    assert user_power(BOB, power_levels=None, create_event=ev) == 0
    assert user_power(BOB, power_levels=None, create_event=None) == 0


# -- malformed content ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (50, 50),
        ("50", 50),
        (" 75 ", 75),
        ("-5", -5),
        ("fifty", 0),
        (True, 0),
        (None, 0),
        ([50], 0),
        ({"level": 50}, 0),
        (50.0, 0),  # not an integer: the spec's power levels are integers
    ],
)
def test_malformed_user_levels_fall_back(value: Any, expected: int) -> None:
    levels = {"users": {BOB: value}, "users_default": 0}
    assert user_power(BOB, power_levels=levels, create_event=create()) == expected


@pytest.mark.parametrize("users", [None, [BOB], "bob", 50])
def test_users_not_a_mapping_uses_users_default(users: Any) -> None:
    levels = {"users": users, "users_default": "7"}
    assert user_power(BOB, power_levels=levels, create_event=create()) == 7


@pytest.mark.parametrize("default", [None, "x", False, {}])
def test_malformed_users_default_is_zero(default: Any) -> None:
    assert user_power(BOB, power_levels={"users_default": default}, create_event=create()) == 0


@pytest.mark.parametrize(
    "event",
    [
        None,
        {},
        {"sender": ALICE},
        {"sender": ALICE, "content": None},
        {"sender": ALICE, "content": "12"},
        {"sender": 42, "content": {"room_version": "12"}},
    ],
)
def test_malformed_create_event_never_raises(event: Any) -> None:
    power = user_power(ALICE, power_levels=LEVELS, create_event=event)
    assert power in (0, 100, math.inf)


def test_malformed_create_event_content_is_treated_as_an_old_room() -> None:
    # No readable version: the pre-v12 rules (the creator has 100 without levels).
    ev = {"sender": ALICE, "content": None}
    assert not creators_have_infinite_power(ev)
    assert user_power(ALICE, power_levels=None, create_event=ev) == 100


def test_sender_not_a_string_is_not_a_creator() -> None:
    ev = {"sender": 42, "content": {"room_version": "12"}}
    assert creators(ev) == frozenset()
    assert user_power(ALICE, power_levels=LEVELS, create_event=ev) == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([BOB, 7, None, {"u": CAROL}], {ALICE, BOB}),
        (BOB, {ALICE}),  # a string, not a list: ignored rather than split into letters
        (None, {ALICE}),
        ({BOB: True}, {ALICE}),
    ],
)
def test_malformed_additional_creators(extra: Any, expected: set[str]) -> None:
    assert creators(create(additional_creators=extra)) == expected


# -- invites: the pure first cut ---------------------------------------------------------


@pytest.mark.parametrize(
    ("listed", "control", "core", "accept"),
    [
        (False, True, False, True),
        (True, False, False, True),
        (False, False, True, True),
        (False, False, False, False),
    ],
)
def test_decide_invite(listed: bool, control: bool, core: bool, accept: bool) -> None:
    d = decide_invite(
        room_id="!r:x",
        inviter=MALLORY,
        listed=listed,
        is_control_room=control,
        inviter_is_core=core,
    )
    assert d.accept is accept
    assert d.reason
