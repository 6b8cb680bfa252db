"""The crew's control side, pure parts (milliseconds): following the speaker at
``!arm``, the roll call, answers in the heartbeat, crew invites, and the typed
events a crew sees (crew bots are never commands or check-ins; their tagged
messages are copies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from test_matrix_events import CITY, CONTROL, ME, ev, sync, text

from bot import DISPATCH_KEY
from bot.crew import Crew, CrewView, Member
from bot.crew.heartbeat import Answer, Heartbeat, next_due, parse_heartbeat
from bot.crew.rollcall import (
    ARMED,
    DIFFERS,
    NOT_ANSWERING,
    NOT_ARMED,
    answered,
    follow,
    roll_call,
    roll_call_window,
)
from bot.matrix.events import Command, Dispatched, Said, from_sync
from bot.matrix.rooms import BY_CREW, decide_invite

A, B = "@a:north", "@b:south"
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
D1, D2 = "a1" * 32, "b2" * 32
RUN = "$arm"


def test_a_member_arms_only_the_speakers_file_when_the_speaker_armed() -> None:
    assert follow(D1, Answer(RUN, "s", D1, ARMED)).arm
    assert follow(D2, Answer(RUN, "s", D1, ARMED)).state == DIFFERS
    assert follow("", Answer(RUN, "s", D1, ARMED)).state == DIFFERS  # its file unreadable
    assert follow(D1, Answer(RUN, "s", D1, NOT_ARMED)) == follow(D1, None)
    assert not follow(D1, None).arm  # nothing heard: never arm on a guess


def test_roll_call_lists_every_member_and_waits_only_for_those_up() -> None:
    crew = Crew((A, B), timedelta(seconds=1))
    view = CrewView(crew, {B: Member(B, seen_at=T)}, me=A)
    mine = Answer(RUN, "s", D1, ARMED)
    assert not answered(view, {A: mine, B: None}, T)
    assert answered(view, {A: mine, B: None}, T + timedelta(seconds=4))  # b is down by then
    lines = roll_call(view, {A: mine, B: None}, T + timedelta(seconds=4))
    assert [(ln.member, ln.state, ln.down) for ln in lines] == [
        (A, ARMED, False),
        (B, NOT_ANSWERING, True),
    ]
    assert roll_call_window(timedelta(seconds=1)) == timedelta(seconds=5)
    assert roll_call_window(timedelta(seconds=30)) == timedelta(seconds=20)


def state_event(content: dict[str, Any], sender: str = B) -> dict[str, Any]:
    return {"type": "org.blossom.crew", "state_key": sender, "sender": sender,
            "event_id": "$1", "content": content}


def test_answers_travel_in_the_heartbeat_and_malformed_ones_are_ignored() -> None:
    beat = Heartbeat(B, T, timedelta(seconds=1), "0.1.0", answers=(Answer(RUN, "s", D2, DIFFERS),))
    content = beat.content()
    assert content["answers"] == {RUN: {"scenario": "s", "digest": D2, "state": DIFFERS}}
    assert parse_heartbeat(state_event(content), members=(A, B)) == beat
    assert "answers" not in Heartbeat(B, T, timedelta(seconds=1), "0.1.0").content()
    for bad in ({RUN: {"scenario": "s", "digest": "nope", "state": ARMED}},
                {RUN: {"scenario": "s", "digest": D1, "state": "maybe"}},
                {RUN: "armed"}, [RUN], {str(i): {} for i in range(17)}):
        assert parse_heartbeat(state_event({**content, "answers": bad}), members=(A, B)) is None
    # A new answer is published at once (the speaker is waiting for it).
    later = Heartbeat(B, T + timedelta(seconds=0.1), timedelta(seconds=1), "0.1.0",
                      answers=(Answer(RUN, "s", D2, DIFFERS),))
    assert next_due(Heartbeat(B, T, timedelta(seconds=1), "0.1.0"), later) == later.time


def test_a_crew_members_invite_opts_in_only_rooms_the_crew_serves() -> None:
    common: dict[str, Any] = {"room_id": "!r", "inviter": B, "inviter_is_core": True}
    assert decide_invite(**common, listed=True, is_control_room=False,
                         inviter_is_crew=True).reason == BY_CREW
    assert decide_invite(**common, listed=False, is_control_room=True,
                         inviter_is_crew=True).accept
    # Unlisted: declined, although its power would make it core group.
    refused = decide_invite(**common, listed=False, is_control_room=False, inviter_is_crew=True)
    assert not refused.accept
    assert decide_invite(**common, listed=False, is_control_room=False).accept  # a person


def tagged(sender: str, n: int, **tag: str) -> dict[str, Any]:
    content = {"msgtype": "m.text", "body": "go",
               DISPATCH_KEY: {"run": RUN, "city": "c", "stage": "s", "part": "text", **tag}}
    return ev("m.room.message", sender, content, n)


def test_crew_bots_are_never_commands_or_checkins_and_their_copies_are_seen() -> None:
    crew = frozenset({ME, B})
    resp = sync({CONTROL: [text(B, "!arm x", 1), text("@org:x", "!status", 2)],
                 CITY: [text(B, "!here", 3), text("@p:x", "!here", 4), tagged(B, 5),
                        tagged(ME, 6), tagged("@p:x", 7)]})
    events = from_sync(resp, me=ME, control_rooms=frozenset({CONTROL}), history=False, crew=crew)
    # A participant's "tagged" message is a message, not a copy.
    assert [type(e) for e in events] == [Command, Said, Dispatched, Dispatched, Said]
    assert [e.sender for e in events] == ["@org:x", "@p:x", B, ME, "@p:x"]
    # Without a crew nothing changes: a bot's tagged message is a message like any.
    alone = from_sync(resp, me=ME, control_rooms=frozenset({CONTROL}), history=False)
    assert [type(e) for e in alone] == [Command, Command, Said, Said, Said, Said]
