"""Failover by looking (bot/crew/look.py): which copies of a dispatch a room shows,
which parts are missing, and which copies the crew redacts. Pure."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bot import DISPATCH_KEY
from bot.crew.look import Copy, find_copies, missing_parts, parse_tag, resolve

A, B, C = "@blossom:north.example", "@blossom:south.example", "@blossom:west.example"
MEMBERS = frozenset({A, B})
RUN = "$arm-event-id"
TAG = {"run": RUN, "scenario": "walk", "city": "south", "stage": "go", "part": "text"}
WHICH = {"run": RUN, "city": "south", "stage": "go", "part": "text"}


def message(
    event_id: str, sender: str = A, tag: Any = None, ts: int = 1000, **extra: Any
) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": "Go"}
    content[DISPATCH_KEY] = TAG if tag is None else tag
    return {
        "type": "m.room.message",
        "event_id": event_id,
        "sender": sender,
        "origin_server_ts": ts,
        "content": content,
        **extra,
    }


def test_a_members_visible_copy_is_found() -> None:
    events = [message("$1")]
    assert find_copies(events, members=MEMBERS, **WHICH) == (Copy(1000, "$1", A),)
    assert missing_parts(
        events, run=RUN, city="south", stage="go", parts=["text", "location"], members=MEMBERS
    ) == ("location",)


def test_what_is_not_a_copy() -> None:
    redaction_v11 = {
        "type": "m.room.redaction",
        "event_id": "$r1",
        "sender": "@mod:x",
        "content": {"redacts": "$4"},
    }
    redaction_old = {
        "type": "m.room.redaction",
        "event_id": "$r2",
        "sender": A,
        "redacts": "$5",
        "content": {},
    }
    events = [
        message("$1", sender=C),  # not a crew member, whatever it carries
        message("$2", tag={**TAG, "run": "$another-run"}),  # a previous run of the scenario
        message("$3", unsigned={"redacted_because": {"event_id": "$r"}}),
        message("$4"),
        message("$5"),
        redaction_v11,
        redaction_old,
        {**message("$6"), "state_key": ""},
        {**message("$7"), "type": "m.reaction"},
        message("$8", tag={k: v for k, v in TAG.items() if k != "run"}),  # from before runs
        message("$9", tag={**TAG, "stage": "call"}),
        message("$10", tag={**TAG, "city": "north"}),
        message("$11", tag={**TAG, "part": "location"}),
    ]
    edit = message("$12")
    edit["content"]["m.relates_to"] = {"rel_type": "m.replace", "event_id": "$4"}
    events.append(edit)
    assert find_copies(events, members=MEMBERS, **WHICH) == ()


def test_hostile_events_are_skipped() -> None:
    junk: list[Any] = [
        None,
        3,
        "x",
        [],
        {},
        {"type": "m.room.message"},
        {"type": "m.room.message", "event_id": 5, "sender": A, "content": {DISPATCH_KEY: TAG}},
        message("$1", tag="garbage"),
        message("$2", tag={**TAG, "run": 7}),
        message("$3", tag={**TAG, "stage": ""}),
        {**message("$4"), "content": []},
        {"type": "m.room.redaction", "redacts": ["$x"], "content": None},
        {**message("$5"), "unsigned": "nope"},
        {**message("$6"), "origin_server_ts": "soon"},
    ]
    copies = find_copies([*junk, message("$ok")], members=MEMBERS, **WHICH)
    # A malformed unsigned or timestamp does not hide a real copy.
    assert [c.event_id for c in copies] == ["$6", "$5", "$ok"]
    assert copies[0].origin_server_ts == 0


def test_tags_are_read_strictly() -> None:
    tag = parse_tag({DISPATCH_KEY: TAG})
    assert tag is not None and (tag.run, tag.scenario, tag.part) == (RUN, "walk", "text")
    assert parse_tag({DISPATCH_KEY: {**TAG, "scenario": 1}}) is None
    assert parse_tag({}) is None and parse_tag(None) is None


def test_after_a_partition_the_earlier_members_copy_stays() -> None:
    a, b = Copy(2000, "$a", A), Copy(1000, "$b", B)
    resolution = resolve([a, b], (A, B))
    assert resolution.keep == a and resolution.redact == (b,)
    assert resolution.for_member(B) == (b,) and resolution.for_member(A) == ()
    # The city's order decides, not the config's or who was first.
    assert resolve([a, b], (B, A)).keep == b
    # A member's own second copy (its earliest stays).
    again = Copy(3000, "$a2", A)
    assert resolve([again, a], (A, B)) == resolve([a, again], (A, B))
    assert resolve([again, a], (A, B)).keep == a
    assert resolve([], (A, B)).keep is None


COPIES = st.lists(
    st.builds(
        Copy,
        st.integers(0, 10),
        st.text("$abc", min_size=1, max_size=3),
        st.sampled_from([A, B, C]),
    ),
    unique_by=lambda c: c.event_id,
    max_size=6,
)


@settings(deadline=None)
@given(COPIES, st.permutations([A, B, C]))
def test_one_copy_stays_whatever_the_order_of_reading(copies: list[Copy], order: list[str]) -> None:
    r = resolve(copies, tuple(order))
    assert r == resolve(list(reversed(copies)), tuple(order))
    if not copies:
        assert r.keep is None and r.redact == ()
        return
    assert r.keep is not None and sorted([r.keep, *r.redact]) == sorted(copies)
    # Nobody redacts a copy of a member earlier in the order than the keeper.
    assert all(order.index(c.sender) >= order.index(r.keep.sender) for c in r.redact)


@settings(deadline=None)
@given(
    st.lists(st.sampled_from(["$1", "$2", "$3"]), max_size=3),
    st.lists(st.sampled_from([C, "@mod:x"]), max_size=3),
)
def test_outsiders_and_redactions_never_add_copies(
    redacted: list[str], outsiders: list[str]
) -> None:
    real = [message("$1"), message("$2", sender=B), message("$3")]
    noise = [message(f"$o{i}", sender=s) for i, s in enumerate(outsiders)]
    redactions = [
        {"type": "m.room.redaction", "event_id": f"$r{i}", "sender": A, "content": {"redacts": t}}
        for i, t in enumerate(redacted)
    ]
    found = find_copies([*noise, *real, *redactions], members=MEMBERS, **WHICH)
    assert {c.event_id for c in found} == {"$1", "$2", "$3"} - set(redacted)
