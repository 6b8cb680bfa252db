"""A /sync response as the typed events the bot acts on (the Matrix boundary).

In the manner of mautrix-python's membership dispatcher: the raw response (as
nio parsed and decrypted it) is read here once, and the rest of the bot sees
only these small records — no nio type crosses. Pure; unit-tested without a
server.

Order within one sync, which the handlers rely on: first each joined room's
timeline in order (messages, reactions, memberships), then room upgrades (an
invite to a successor, in the same sync, is judged knowing the tombstone that
names it), then invites (control rooms first: the notices about city rooms go
to a control room, which must be joined first), then the rooms the bot left,
then the crew's heartbeats in the control rooms.

``crew``: the other bots of the crew (docs/crew.md). Their messages and
reactions are never commands or check-ins, whatever power they hold; their
(and this bot's) dispatch-tagged messages in other rooms become
:class:`Dispatched`, so the crew can keep one copy of each. The running bot
alone passes itself (a crew of one), so its own doubled copies are seen
(bot/runs/doubles.py); empty: no event changes.

``history``: the first sync ever on a device brings the rooms' old timelines;
none of it is a command, a check-in or a departure (it is memberships and
invites only).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nio import (
    InviteMemberEvent,
    ReactionEvent,
    RoomMemberEvent,
    RoomMessageText,
    RoomUpgradeEvent,
    SyncResponse,
)

from bot.crew.look import DispatchTag, copy_in
from bot.matrix.crew_state import crew_events


@dataclass(frozen=True)
class Command:
    """A text message in a control room: perhaps a command."""

    room_id: str
    event_id: str
    sender: str
    body: str
    ts: int  # origin_server_ts, ms


@dataclass(frozen=True)
class Said:
    """A text message in any other room (a city room, a private chat)."""

    room_id: str
    event_id: str
    sender: str
    body: str


@dataclass(frozen=True)
class Reacted:
    room_id: str
    sender: str
    reacts_to: str  # the event id reacted to


@dataclass(frozen=True)
class MemberLeft:
    """Someone other than the bot left (or was banned from) a room it is in."""

    room_id: str
    user_id: str


@dataclass(frozen=True)
class BotJoined:
    room_id: str
    ts: int


@dataclass(frozen=True)
class RoomUpgraded:
    room_id: str
    successor: str
    by: str


@dataclass(frozen=True)
class Invited:
    room_id: str
    inviter: str
    is_direct: bool


@dataclass(frozen=True)
class BotRemoved:
    """The bot is no longer in a room: left, kicked, banned, or the room went."""

    room_id: str
    by: str | None
    membership: str


@dataclass(frozen=True)
class Heartbeats:
    """The crew's ``org.blossom.crew`` events of one control room in this sync,
    raw, in order (state, then timeline), for ``bot.crew.roster.Roster.ingest``:
    only the crew's pure parser reads them."""

    room_id: str
    events: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Dispatched:
    """A visible dispatch-tagged ``m.room.message`` from a crew member (this bot
    included) in a room that is not a control room: one copy of a dispatch part."""

    room_id: str
    event_id: str
    sender: str
    ts: int
    tag: DispatchTag


MatrixEvent = (
    Command
    | Said
    | Reacted
    | MemberLeft
    | BotJoined
    | RoomUpgraded
    | Invited
    | BotRemoved
    | Heartbeats
    | Dispatched
)


def command_of(
    room_id: str, event: object, me: str, crew: Collection[str] = frozenset()
) -> Command | None:
    """A control-room text message (from the sync or the control watch); never
    one of this bot's or another crew member's."""
    if not isinstance(event, RoomMessageText) or event.sender == me or event.sender in crew:
        return None
    body = event.body if isinstance(event.body, str) else ""
    return Command(room_id, event.event_id, event.sender, body, event.server_timestamp)


def _timeline_event(
    room_id: str,
    event: object,
    *,
    me: str,
    control: bool,
    history: bool,
    crew: Collection[str] = frozenset(),
) -> MatrixEvent | None:
    if isinstance(event, RoomMemberEvent):
        if event.state_key == me:
            joined = event.membership == "join" and event.prev_membership != "join"
            return BotJoined(room_id, event.server_timestamp) if joined else None
        if (
            not history
            and event.membership in ("leave", "ban")
            and event.prev_membership == "join"
        ):
            return MemberLeft(room_id, event.state_key)
        return None
    if history:
        return None
    if crew and not control:
        dispatched = _dispatched(room_id, event, crew)
        if dispatched is not None:
            return dispatched
    if getattr(event, "sender", None) in crew:
        return None  # another bot of the crew: never a command or a check-in
    if isinstance(event, RoomMessageText):
        if control:
            return command_of(room_id, event, me)
        if event.sender == me:
            return None
        body = event.body if isinstance(event.body, str) else ""
        return Said(room_id, event.event_id, event.sender, body)
    if isinstance(event, ReactionEvent) and event.sender != me:
        reacts_to = event.reacts_to if isinstance(event.reacts_to, str) else ""
        return Reacted(room_id, event.sender, reacts_to) if reacts_to else None
    return None


def _dispatched(room_id: str, event: object, crew: Collection[str]) -> Dispatched | None:
    source = getattr(event, "source", None)
    found = copy_in(source, crew)
    if found is None:
        return None
    copy, tag = found
    return Dispatched(room_id, copy.event_id, copy.sender, copy.origin_server_ts, tag)


def _upgrades(resp: SyncResponse) -> Iterable[RoomUpgraded]:
    for room_id, joined in resp.rooms.join.items():
        for ev in (*joined.state, *joined.timeline.events):
            if isinstance(ev, RoomUpgradeEvent) and isinstance(ev.replacement_room, str):
                yield RoomUpgraded(room_id, ev.replacement_room, ev.sender)


def _invites(resp: SyncResponse, me: str, control_rooms: frozenset[str]) -> list[Invited]:
    found: list[Invited] = []
    for room_id, info in resp.rooms.invite.items():
        invite: Invited | None = None
        for ev in info.invite_state:
            # Every member event of the stripped state arrives: only ours counts.
            if not isinstance(ev, InviteMemberEvent) or ev.state_key != me:
                continue
            if ev.membership != "invite":
                continue
            content = ev.content if isinstance(ev.content, dict) else {}
            invite = Invited(room_id, ev.sender, content.get("is_direct") is True)
        if invite is not None:
            found.append(invite)
    # Control rooms first (a stable sort keeps the homeserver's order otherwise).
    return sorted(found, key=lambda i: i.room_id not in control_rooms)


def _removals(resp: SyncResponse, me: str) -> Iterable[BotRemoved]:
    for room_id, left in resp.rooms.leave.items():
        by: str | None = None
        membership = "leave"
        for ev in left.timeline.events:
            if isinstance(ev, RoomMemberEvent) and ev.state_key == me:
                by, membership = ev.sender, ev.membership
        yield BotRemoved(room_id, by, membership)


def from_sync(
    resp: SyncResponse,
    *,
    me: str,
    control_rooms: frozenset[str],
    history: bool,
    crew: frozenset[str] = frozenset(),
) -> list[MatrixEvent]:
    """Every event of one sync the bot acts on, in the order of the module doc.
    ``crew``: the crew's members (this bot among them), or empty without a crew."""
    events: list[MatrixEvent] = []
    for room_id, joined in resp.rooms.join.items():
        control = room_id in control_rooms
        for raw in joined.timeline.events:
            typed = _timeline_event(
                room_id, raw, me=me, control=control, history=history, crew=crew
            )
            if typed is not None:
                events.append(typed)
    events.extend(_upgrades(resp))
    events.extend(_invites(resp, me, control_rooms))
    events.extend(_removals(resp, me))
    events.extend(
        Heartbeats(room_id, tuple(raw))
        for room_id, raw in crew_events(resp, control_rooms).items()
    )
    return events
