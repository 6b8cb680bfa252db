"""bot/matrix/events.py: a /sync response as typed events, in order (pure)."""

from __future__ import annotations

from typing import Any

from nio import SyncResponse

from bot.matrix.events import (
    BotJoined,
    BotRemoved,
    Command,
    Heartbeats,
    Invited,
    MemberLeft,
    Reacted,
    RoomUpgraded,
    Said,
    from_sync,
)

ME = "@bot:x"
CONTROL = "!control"
CITY = "!city"


def ev(kind: str, sender: str, content: dict[str, Any], n: int, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "sender": sender, "event_id": f"${n}", "origin_server_ts": n,
            "content": content, **extra}


def text(sender: str, body: str, n: int) -> dict[str, Any]:
    return ev("m.room.message", sender, {"msgtype": "m.text", "body": body}, n)


def member(user: str, membership: str, n: int, prev: str | None = None,
           by: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"state_key": user}
    if prev:
        extra["unsigned"] = {"prev_content": {"membership": prev}}
    return ev("m.room.member", by or user, {"membership": membership}, n, **extra)


def sync(join: dict[str, list[dict[str, Any]]], *, invite: dict[str, Any] | None = None,
         leave: dict[str, list[dict[str, Any]]] | None = None,
         state: dict[str, list[dict[str, Any]]] | None = None) -> SyncResponse:
    body = {
        "next_batch": "s2",
        "rooms": {
            "join": {r: {"timeline": {"events": es, "limited": False},
                         "state": {"events": (state or {}).get(r, [])}}
                     for r, es in join.items()},
            "invite": {r: {"invite_state": {"events": es}} for r, es in (invite or {}).items()},
            "leave": {r: {"timeline": {"events": es}, "state": {"events": []}}
                      for r, es in (leave or {}).items()},
        },
    }
    resp = SyncResponse.from_dict(body)
    assert isinstance(resp, SyncResponse), resp
    return resp


def typed(resp: SyncResponse, *, history: bool = False) -> list[Any]:
    return from_sync(resp, me=ME, control_rooms=frozenset({CONTROL}), history=history)


def test_messages_reactions_and_members_in_timeline_order() -> None:
    resp = sync({
        CONTROL: [member(ME, "join", 1), text("@org:x", "!arm walk", 2), text(ME, "reply", 3)],
        CITY: [
            text("@p:x", "!here", 4),
            ev("m.reaction", "@p:x", {"m.relates_to": {"rel_type": "m.annotation",
                                                       "event_id": "$s", "key": "👍"}}, 5),
            ev("m.reaction", ME, {"m.relates_to": {"rel_type": "m.annotation",
                                                   "event_id": "$4", "key": "✅"}}, 6),
            member("@p:x", "leave", 7, prev="join"),
        ],
    })
    assert typed(resp) == [
        BotJoined(CONTROL, 1),
        Command(CONTROL, "$2", "@org:x", "!arm walk", 2),
        Said(CITY, "$4", "@p:x", "!here"),
        Reacted(CITY, "@p:x", "$s"),
        MemberLeft(CITY, "@p:x"),
    ]


def test_first_sync_history_is_memberships_and_invites_only() -> None:
    resp = sync(
        {CONTROL: [text("@org:x", "!abort walk", 1), member(ME, "join", 2)],
         CITY: [text("@p:x", "!here", 3), member("@p:x", "leave", 4, prev="join")]},
        invite={"!new": [member(ME, "invite", 5, by="@mod:x")]},
    )
    assert typed(resp, history=True) == [BotJoined(CONTROL, 2), Invited("!new", "@mod:x", False)]


def test_upgrades_then_invites_control_rooms_first_then_removals() -> None:
    tombstone = ev("m.room.tombstone", "@mod:x",
                   {"replacement_room": "!next", "body": "moved"}, 1, state_key="")
    direct = member(ME, "invite", 3, by="@p:x")
    direct["content"]["is_direct"] = True
    resp = sync(
        {CITY: [tombstone]},
        invite={
            "!next": [member(ME, "invite", 2, by="@mod:x"), member("@mod:x", "join", 9)],
            "!dm": [direct],
            CONTROL: [member(ME, "invite", 4, by="@org:x")],
        },
        leave={"!gone": [member(ME, "ban", 5, by="@mod:x")], "!quiet": []},
    )
    assert typed(resp) == [
        RoomUpgraded(CITY, "!next", "@mod:x"),
        Invited(CONTROL, "@org:x", False),
        Invited("!next", "@mod:x", False),
        Invited("!dm", "@p:x", True),
        BotRemoved("!gone", "@mod:x", "ban"),
        BotRemoved("!quiet", None, "leave"),
    ]


def test_crew_heartbeats_of_control_rooms_only_raw_and_last() -> None:
    beat = ev("org.blossom.crew", "@peer:y", {"v": 1}, 1, state_key="@peer:y")
    resp = sync({CONTROL: [text("@org:x", "!status", 2), beat], CITY: [dict(beat)]})
    got = typed(resp)
    assert got[0] == Command(CONTROL, "$2", "@org:x", "!status", 2)
    assert isinstance(got[-1], Heartbeats) and got[-1].room_id == CONTROL
    assert [e["type"] for e in got[-1].events] == ["org.blossom.crew"] and len(got) == 2
