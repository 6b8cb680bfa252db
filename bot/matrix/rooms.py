"""Which rooms this bot serves: opt-in by invite, membership, alias resolution.

This is the one place that decides where stage messages may go
(:meth:`RoomRegistry.served_rooms`): a room is served for a city when the city
lists it (by id or alias), the bot is joined, and the room opted in (a member
with power >= 50 invited the bot). A future multi-bot setup changes only this.

Room upgrades: when a served room's ``m.room.tombstone`` names a successor, the
bot records it and follows when invited there (or when it may simply join); the
opt-in carries over from the old room, checked against the new room's
``m.room.create`` ``predecessor``. A city listing the old room id is then served
in the successor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.clock import Clock
from bot.matrix.actions import ActionFailed, MatrixActions
from bot.matrix.power import OPT_IN_POWER, user_power
from bot.store import Store, StoreError

log = logging.getLogger(__name__)

__all__ = ["OPT_IN_POWER", "InviteDecision", "RoomRegistry", "decide_invite"]
Report = Callable[[str], Awaitable[None]]
# The reason recorded for a room joined as the successor of an upgraded room.
UPGRADE_OF = "upgrade of "
BY_CREW = "invited by a crew member"


@dataclass(frozen=True)
class InviteDecision:
    accept: bool
    reason: str


def decide_invite(
    *,
    room_id: str,
    inviter: str,
    listed: bool,
    is_control_room: bool,
    inviter_is_core: bool,
    is_direct: bool = False,
    direct_open: bool = False,
    successor_of: str | None = None,
    inviter_is_crew: bool = False,
) -> InviteDecision:
    """Pure first cut on an invite, before the inviter's power in the room is known.

    ``successor_of``: an opted-in room whose tombstone names this room as its
    replacement; the opt-in carries over (the inviter's power is still checked).

    ``inviter_is_crew``: another bot of this bot's crew invites it. Accepted for
    a control room or a room an armed or listed scenario names (the member that
    invites was opted in there by the room's moderator), without the power check;
    anything else it invites to is declined, whatever power it holds."""
    if inviter_is_crew:
        if is_control_room or listed:
            return InviteDecision(True, BY_CREW)
        return InviteDecision(False, f"{BY_CREW}, but no armed or listed scenario names it")
    if is_direct and direct_open and not is_control_room and not listed:
        return InviteDecision(True, "direct chat")
    if is_control_room:
        return InviteDecision(True, "control room")
    if listed:
        return InviteDecision(True, "listed by a scenario")
    if successor_of is not None:
        return InviteDecision(True, f"{UPGRADE_OF}{successor_of}")
    if inviter_is_core:
        return InviteDecision(True, "invited by a member of the core group")
    return InviteDecision(False, "not a control room, not listed by any scenario")


JOIN_AGAIN_S = (0.5, 1.0, 2.0)
"""Waits before joining again after a 403, when the invite came over federation."""


def _server(user_id: str) -> str:
    return user_id.partition(":")[2]


async def join_invited(
    join: Callable[[], Awaitable[str | None]],
    *,
    remote: bool,
    sleep: Callable[[float], Awaitable[None]],
) -> str | None:
    """Join a room the bot was invited to; ``None`` when joined, else why not.

    An invite from another homeserver reaches this one before the inviter's
    homeserver has stored it, and a join made at once is refused (403: seen
    between two federating Synapses, a crew member accepting another's
    invite), so a 403 is tried again a few times, shortly after (bounded).
    """
    why = await join()
    for wait in JOIN_AGAIN_S if remote else ():
        if why is None or "403" not in why:
            break
        await sleep(wait)
        why = await join()
    return why


class RoomRegistry:
    def __init__(
        self,
        matrix: MatrixActions,
        store: Store,
        clock: Clock,
        *,
        control_rooms: Iterable[str],
        min_control_power: int,
        crew: Iterable[str] = (),
    ) -> None:
        self._matrix = matrix
        self.crew = frozenset(crew)  # the crew's bots (empty without a crew)
        self._store = store
        self._clock = clock
        self.control_rooms = frozenset(control_rooms)
        self._min_control_power = min_control_power
        self._aliases: dict[str, str] = {}
        self._create_events: dict[str, dict[str, Any]] = {}

    # -- power -----------------------------------------------------------------------

    async def _create_event(self, room_id: str) -> dict[str, Any] | None:
        """``m.room.create`` as {sender, content}; it never changes, so it is cached."""
        if room_id in self._create_events:
            return self._create_events[room_id]
        content = await self._matrix.state_event(room_id, "m.room.create")
        if content is None:
            return None
        # The state-event endpoint returns content only; the creator is the
        # content's `creator` (v1-10) or the event's sender (v11+), which the
        # whole state (events with senders) gives.
        sender = content.get("creator") or next(
            (
                ev.get("sender")
                for ev in await self._matrix.state(room_id)
                if ev.get("type") == "m.room.create"
            ),
            None,
        )
        event = {"sender": str(sender) if sender else None, "content": content}
        self._create_events[room_id] = event
        return event

    async def power_of(self, room_id: str, user_id: str) -> float:
        create = await self._create_event(room_id)
        levels = await self._matrix.state_event(room_id, "m.room.power_levels")
        return user_power(user_id, power_levels=levels, create_event=create)

    async def is_core(self, user_id: str, room_id: str | None = None) -> bool:
        """Core group: power >= control.min_power_level in a control room
        (``room_id``, or any control room when None)."""
        rooms = [room_id] if room_id is not None else sorted(self.control_rooms)
        for room in rooms:
            if room not in self.control_rooms:
                continue
            if await self.power_of(room, user_id) >= self._min_control_power:
                return True
        return False

    # -- invites -------------------------------------------------------------------

    async def _audit_declined(self, room_id: str, inviter: str, reason: str) -> None:
        """A declined invite is a refused action, kept in the audit table like a
        refused command (a lookalike room, a stranger's room)."""
        try:
            await self._store.audit.record(
                now=self._clock.now(),
                room_id=room_id,
                sender=inviter,
                command="(invite)",
                result=f"refused: {reason}"[:500],
            )
        except StoreError as err:
            log.error("could not record the declined invite to %s: %s", room_id, err)

    async def on_invite(
        self,
        room_id: str,
        inviter: str,
        *,
        listed_rooms: set[str],
        report: Report,
        is_direct: bool = False,
        direct_open: bool = False,
    ) -> bool:
        """Handle one invite of the bot. Returns whether the bot is now joined."""
        now = self._clock.now()
        listed = room_id in await self.resolve_all(listed_rooms)
        is_control = room_id in self.control_rooms
        by_crew = inviter in self.crew and inviter != self._matrix.user_id
        successor_of = (
            None if listed or is_control or by_crew else await self._upgraded_to(room_id)
        )
        inviter_is_core = (
            (not by_crew)
            and (not is_control)
            and (not listed)
            and (not is_direct)
            and successor_of is None
            and await self.is_core(inviter)
        )
        first = decide_invite(
            room_id=room_id,
            inviter=inviter,
            listed=listed,
            is_control_room=is_control,
            inviter_is_core=inviter_is_core,
            is_direct=is_direct,
            direct_open=direct_open,
            successor_of=successor_of,
            inviter_is_crew=by_crew,
        )
        if not first.accept:
            await self._matrix.leave(room_id)  # rejects the invite
            await self._declined(room_id, inviter, first.reason, now)
            log.info("declined invite to %s from %s: %s", room_id, inviter, first.reason)
            return False
        # Power levels are readable only after joining (and nio drops m.room.create
        # from an invite's stripped state): join, then check the inviter's power.
        why = await join_invited(
            lambda: self._matrix.join(room_id),
            remote=_server(inviter) != _server(self._matrix.user_id),
            sleep=lambda s: self._clock.sleep_until(self._clock.now() + timedelta(seconds=s)),
        )
        if why is not None:
            log.warning("could not join %s: %s", room_id, why)
            return False
        # A private chat: the person inviting is the audience. A crew member: the
        # room's moderator opted it in, and the room is the crew's to serve.
        trusted = first.reason in ("direct chat", BY_CREW)
        power = math.inf if trusted else await self.power_of(room_id, inviter)
        if power < OPT_IN_POWER:
            await self._matrix.leave(room_id, forget=True)
            reason = f"inviter {inviter} has power {power:g} < {OPT_IN_POWER}"
            await self._declined(room_id, inviter, reason, now)
            log.info("left %s: %s", room_id, reason)
            await report(
                f"Did not opt in room {room_id}: the invite came from {inviter}, "
                f"who has power {power:g} there; a member with power ≥ {OPT_IN_POWER} must invite."
            )
            return False
        if successor_of is not None and not await self._replaces(room_id, successor_of):
            await self._matrix.leave(room_id)
            reason = f"does not name {successor_of} as its predecessor"
            await self._declined(room_id, inviter, reason, now)
            await report(f"Did not opt in room {room_id}: it {reason} (m.room.create).")
            return False
        await self._store.rooms.set(
            room_id, "joined", now=now, opted_in_by=inviter, note=first.reason
        )
        log.info("joined %s (opted in by %s: %s)", room_id, inviter, first.reason)
        if not is_control and not is_direct:
            await report(f"Joined {room_id}: opted in by {inviter} ({first.reason}).")
        return True

    async def _declined(self, room_id: str, inviter: str, reason: str, now: datetime) -> None:
        await self._store.rooms.set(room_id, "declined", now=now, note=reason)
        await self._audit_declined(room_id, inviter, reason)

    async def on_removed(
        self, room_id: str, by: str | None, membership: str, report: Report
    ) -> None:
        """The bot was kicked or banned (or the room went away): drop it."""
        was = await self._store.rooms.membership(room_id)
        await self._store.rooms.set(
            room_id, "left", now=self._clock.now(), note=f"{membership} by {by or 'unknown'}"
        )
        self._create_events.pop(room_id, None)
        if was == "joined" and room_id not in self.control_rooms:
            verb = "banned" if membership == "ban" else "removed"
            who = by or "someone"
            if by == self._matrix.user_id:
                who = "the server (the room was deleted or shut down)"
            await report(
                f"The bot was {verb} from {room_id} by {who}; it will send nothing more there."
            )

    # -- upgrades ------------------------------------------------------------------

    async def _upgraded_to(self, room_id: str) -> str | None:
        """The opted-in room whose tombstone names ``room_id`` as its successor."""
        opted = await self._store.rooms.opted_in()
        for old in await self._store.rooms.predecessors_of(room_id):
            if old in opted:
                return old
        return None

    async def _replaces(self, room_id: str, old: str) -> bool:
        """Whether ``room_id``'s m.room.create names ``old`` as its predecessor (a
        tombstone points one way; the new room must point back)."""
        create = await self._create_event(room_id)
        content = create.get("content") if create else None
        predecessor = content.get("predecessor") if isinstance(content, Mapping) else None
        return isinstance(predecessor, Mapping) and predecessor.get("room_id") == old

    async def on_tombstone(
        self, room_id: str, successor: str, upgraded_by: str, report: Report
    ) -> None:
        """A served room was upgraded: remember where it went, and follow it there
        if the new room lets the bot join; otherwise the room's moderators invite
        the bot (the opt-in carries over). Seen again (a restart's full state), it
        changes nothing."""
        if not successor.startswith("!") or successor == room_id:
            return
        if room_id in self.control_rooms or await self._store.rooms.membership(room_id) != "joined":
            return
        if (await self._store.rooms.successors()).get(room_id) == successor:
            return
        now = self._clock.now()
        await self._store.rooms.set_successor(room_id, successor, upgraded_by=upgraded_by, now=now)
        log.info("%s was upgraded to %s by %s", room_id, successor, upgraded_by)
        # Synapse moves the old room's local aliases to the new room.
        for alias in [a for a, rid in self._aliases.items() if rid == room_id]:
            await self.resolve(alias, refresh=True)
        if await self._store.rooms.membership(successor) == "joined":
            followed = True  # invited there before the tombstone reached us
        else:
            followed = await self._follow(room_id, successor)
        if followed:
            await report(
                f"{room_id} was upgraded to {successor} by {upgraded_by}; the bot followed, "
                f"and stages for {room_id} now go to {successor}."
            )
        else:
            await report(
                f"{room_id} was upgraded to {successor} by {upgraded_by}. Stages for it go to "
                f"the new room once a member with power ≥ {OPT_IN_POWER} invites the bot "
                "there (the opt-in carries over); until then they cannot be delivered."
            )

    async def _follow(self, old: str, successor: str) -> bool:
        """Join the successor uninvited (a public or restricted room allows it) and
        carry the opt-in over; False if the bot has to be invited."""
        if await self._matrix.join(successor, retry=False) is not None:
            return False
        if not await self._replaces(successor, old):
            await self._matrix.leave(successor)
            await self._store.rooms.set(
                successor,
                "declined",
                now=self._clock.now(),
                note=f"does not name {old} as its predecessor",
            )
            return False
        await self._store.rooms.set(
            successor,
            "joined",
            now=self._clock.now(),
            opted_in_by=await self._store.rooms.opted_in_by(old),
            note=f"{UPGRADE_OF}{old}",
        )
        log.info("followed the upgrade of %s to %s", old, successor)
        return True

    def _current(self, room_id: str, successors: Mapping[str, str], opted: set[str]) -> str:
        """``room_id``, or the latest successor of it the bot is in and that opted in.

        A listed alias that Synapse moved to an upgraded room's successor, where
        the bot is not (yet), means the old room: it is served, and reported,
        as the same room listed by id would be."""
        if room_id not in opted:
            room_id = next(
                (old for old, new in successors.items() if new == room_id and old in opted),
                room_id,
            )
        seen = {room_id}
        while (nxt := successors.get(room_id)) is not None and nxt not in seen:
            if nxt not in opted or not self._matrix.in_room(nxt):
                break
            seen.add(nxt)
            room_id = nxt
        return room_id

    async def wait_known(self, room_id: str, seconds: float = 15.0) -> None:
        """Wait until the sync has brought ``room_id`` into the client (nio's
        room_send refuses rooms it does not know)."""
        await self._matrix.wait_in_room(room_id, seconds)

    # -- aliases and served rooms ------------------------------------------------------

    async def resolve(self, room: str, *, refresh: bool = False) -> str | None:
        if room.startswith("!"):
            return room
        if room in self._aliases and not refresh:
            return self._aliases[room]
        try:
            rid = await self._matrix.resolve_alias(room)
        except ActionFailed:
            return self._aliases.get(room)
        if rid is not None:
            self._aliases[room] = rid
        return rid

    async def resolve_all(self, rooms: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for room in rooms:
            rid = await self.resolve(room)
            if rid is not None:
                found.add(rid)
        return found

    async def served_rooms(self, listed: Iterable[str], *, refresh: bool = False) -> list[str]:
        """The rooms, of those a city lists, that get its stages now: resolved,
        followed through upgrades, joined (known to the client) and opted in.
        Order follows the listing."""
        opted = await self._store.rooms.opted_in()
        successors = await self._store.rooms.successors()
        served: list[str] = []
        for room in listed:
            rid = await self.resolve(room, refresh=refresh)
            if rid is None:
                continue
            rid = self._current(rid, successors, opted)
            if rid in opted and self._matrix.in_room(rid) and rid not in served:
                served.append(rid)
        return served

    async def missing_rooms(self, listed: Iterable[str]) -> dict[str, str]:
        """Listed rooms that will not be served, with why (for !arm's reply)."""
        opted = await self._store.rooms.opted_in()
        successors = await self._store.rooms.successors()
        missing: dict[str, str] = {}
        for room in listed:
            rid = await self.resolve(room)
            if rid is None:
                missing[room] = "alias does not resolve"
                continue
            rid = self._current(rid, successors, opted)
            if rid in successors:
                missing[room] = (
                    f"upgraded to {successors[rid]}: invite the bot there from an account "
                    "with power ≥ 50"
                )
            elif rid not in opted or not self._matrix.in_room(rid):
                missing[room] = (
                    "the bot is not in this room (invite it from an account with power ≥ 50)"
                )
        return missing
