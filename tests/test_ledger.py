"""The delivery ledger's pure rules: states, allowed transitions, identities."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.ledger import (
    DISPATCH_DONE,
    TERMINAL,
    DeliveryKey,
    DeliveryState,
    DispatchState,
    IllegalTransition,
    Part,
    check_transition,
)

P, SG, SE, F, SK = (
    DeliveryState.PENDING,
    DeliveryState.SENDING,
    DeliveryState.SENT,
    DeliveryState.FAILED,
    DeliveryState.SKIPPED,
)

ALLOWED = {
    (P, SG),
    (P, SK),
    (P, F),
    (SG, SE),
    (SG, P),
    (SG, F),
    (SG, SK),
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(DeliveryState, DeliveryState)))
def test_transition_table(old: DeliveryState, new: DeliveryState) -> None:
    """Exactly the listed transitions are allowed; everything else raises."""
    if (old, new) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_transition(old, new)
        assert info.value.old is old and info.value.new is new
        assert str(old) in str(info.value) and str(new) in str(info.value)


def test_nothing_leaves_a_terminal_state() -> None:
    assert {SE, F, SK} == TERMINAL
    for old in TERMINAL:
        for new in DeliveryState:
            with pytest.raises(IllegalTransition):
                check_transition(old, new)


def test_sent_only_from_sending() -> None:
    """A row is SENT only after a real request (SENDING), never straight from PENDING."""
    for old in DeliveryState:
        if old is SG:
            check_transition(old, SE)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(old, SE)


def test_no_self_transitions() -> None:
    for state in DeliveryState:
        with pytest.raises(IllegalTransition):
            check_transition(state, state)


@given(st.lists(st.sampled_from(list(DeliveryState)), max_size=12))
def test_any_walk_ends_sent_at_most_once(walk: list[DeliveryState]) -> None:
    """Following only allowed transitions from PENDING, SENT is reached at most once
    and, once terminal, the walk cannot move on."""
    state = P
    sent = 0
    for new in walk:
        try:
            check_transition(state, new)
        except IllegalTransition:
            continue
        assert state not in TERMINAL
        state = new
        sent += state is SE
    assert sent <= 1


def test_dispatch_done_states() -> None:
    assert {
        DispatchState.RELEASED,
        DispatchState.SKIPPED,
        DispatchState.CANCELLED,
    } == DISPATCH_DONE
    assert DispatchState.SCHEDULED not in DISPATCH_DONE
    assert DispatchState.HELD not in DISPATCH_DONE
    assert DispatchState.RELEASING not in DISPATCH_DONE


def _key(**over: object) -> DeliveryKey:
    fields: dict[str, object] = {
        "run_id": 1,
        "scenario_id": "demo",
        "city_id": "berlin",
        "stage_id": "go",
        "room_id": "!abc:example.org",
        "part": Part.TEXT,
    }
    fields.update(over)
    return DeliveryKey(**fields)  # type: ignore[arg-type]


def test_txn_id_is_deterministic_and_valid() -> None:
    a = _key().txn_id()
    assert a == _key().txn_id()
    # A txnId is a path segment: keep it URL-safe and short.
    assert re.fullmatch(r"blossom-[0-9a-f]{40}", a)


@pytest.mark.parametrize(
    "change",
    [
        {"run_id": 2},
        {"scenario_id": "other"},
        {"city_id": "vienna"},
        {"stage_id": "call"},
        {"room_id": "!def:example.org"},
        {"part": Part.LOCATION},
    ],
)
def test_txn_id_differs_per_identity_field(change: dict[str, object]) -> None:
    assert _key(**change).txn_id() != _key().txn_id()


def test_txn_id_fields_do_not_run_together() -> None:
    """Joining fields must not let ("ab", "c") and ("a", "bc") collide."""
    assert _key(city_id="ab", stage_id="c").txn_id() != _key(city_id="a", stage_id="bc").txn_id()


# Ids are slugs (scenario, city, stage) and room ids: no control characters, so the
# unit separator that joins them cannot occur inside one.
_ID = st.text(alphabet="abc-!:.", min_size=1, max_size=6)


@given(st.tuples(_ID, _ID), st.tuples(_ID, _ID))
def test_txn_id_injective_on_samples(a: tuple[str, str], b: tuple[str, str]) -> None:
    ka = _key(city_id=a[0], stage_id=a[1])
    kb = _key(city_id=b[0], stage_id=b[1])
    assert (ka.txn_id() == kb.txn_id()) == (a == b)


def test_content_tag() -> None:
    assert _key(part=Part.LOCATION).content_tag() == {
        "scenario": "demo",
        "city": "berlin",
        "stage": "go",
        "part": "location",
    }
    # The tag is global: no run id, no room (any bot recognises the dispatch in a room).
    assert _key(run_id=7).content_tag() == _key().content_tag()


def test_keys_order_and_hash() -> None:
    assert len({_key(), _key()}) == 1
    assert sorted([_key(part=Part.TEXT), _key(part=Part.LOCATION)])[0].part is Part.LOCATION


def test_dispatch_and_run_transition_tables() -> None:
    from bot.ledger import DISPATCH_PENDING, RunState, dispatch_may, dispatch_sources, run_may

    for done in DISPATCH_DONE:
        assert not any(dispatch_may(done, new) for new in DispatchState)
    # A release once started is finished, never undone or held.
    assert not dispatch_may(DispatchState.RELEASING, DispatchState.SCHEDULED)
    assert not dispatch_may(DispatchState.RELEASING, DispatchState.HELD)
    assert dispatch_may(DispatchState.HELD, DispatchState.SCHEDULED)  # !resume
    assert dispatch_sources(DispatchState.RELEASED) == {DispatchState.RELEASING}
    assert {DispatchState.SCHEDULED, DispatchState.HELD} == DISPATCH_PENDING
    assert run_may(RunState.ARMED, RunState.FINISHED)
    assert not run_may(RunState.DISARMED, RunState.ARMED)


def test_run_key_changes_txn_id_and_tag_but_not_legacy_ones() -> None:
    legacy = _key()
    keyed = _key(run_key="$arm:example.org")
    assert keyed.txn_id() != legacy.txn_id()
    assert _key(run_key="$other:example.org").txn_id() != keyed.txn_id()
    assert keyed.content_tag() == {**legacy.content_tag(), "run": "$arm:example.org"}
    from bot import DISPATCH_KEY
    from bot.ledger import is_dispatch_of

    assert is_dispatch_of({DISPATCH_KEY: keyed.content_tag()}, keyed.content_tag())
    assert not is_dispatch_of({DISPATCH_KEY: legacy.content_tag()}, keyed.content_tag())
    assert not is_dispatch_of({DISPATCH_KEY: "x"}, keyed.content_tag())
    assert not is_dispatch_of(None, keyed.content_tag())
