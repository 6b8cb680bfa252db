"""A bot's own doubled copies of one dispatch part in a room (docs/crew.md, "The
switch"): Synapse may send a delayed event twice after its own crash, and the
homeserver's copy may race the bot's late send. Both carry the bot as sender,
so the crew's rule (copies from two members, bot/control/crew.py) does not see
them. Every bot, with a crew or alone, watches its own tagged copies as the sync
brings them (bot.matrix.events.Dispatched) and redacts all but the earliest
(:func:`bot.crew.look.own_doubles`); the control room is told, ids and counts
only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from bot.crew.look import Copy, own_doubles
from bot.matrix.events import Dispatched
from bot.text import crew as crew_text

log = logging.getLogger(__name__)

_KEPT = 4096  # dispatch parts whose copies are remembered (oldest dropped)


class _Run(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def control_room(self) -> str: ...


class _Armed(Protocol):
    @property
    def run(self) -> _Run: ...
    @property
    def run_key(self) -> str: ...


class _Redact(Protocol):
    async def redact(self, room_id: str, event_id: str, reason: str) -> bool: ...


class _Report(Protocol):
    async def report(self, room_id: str | None, text: str) -> None: ...


class _Repoint(Protocol):
    async def repoint(self, event_id: str, kept: str) -> bool: ...


class OwnDoubles:
    def __init__(
        self,
        me: str,
        *,
        armed: Callable[[], Iterable[_Armed]],
        matrix: _Redact,
        notifier: _Report,
        ledger: _Repoint,
    ) -> None:
        self._me = me
        self._ledger = ledger
        self._armed = armed
        self._matrix = matrix
        self._notifier = notifier
        self._copies: dict[tuple[str, ...], set[Copy]] = {}
        self._done: set[str] = set()  # event ids redacted (or tried)

    async def on_dispatched(self, ev: Dispatched) -> None:
        """One visible copy from this bot: if it now has two or more of the same
        (run, city/lane, stage/unit, part) in the room, redact all but the earliest."""
        if ev.sender != self._me:
            return
        tag = ev.tag
        key = (ev.room_id, tag.run, tag.city, tag.stage, tag.part)
        copies = self._copies.setdefault(key, set())
        copies.add(Copy(ev.ts, ev.event_id, ev.sender))
        while len(self._copies) > _KEPT:
            del self._copies[next(iter(self._copies))]
        todo = [c for c in own_doubles(copies, self._me) if c.event_id not in self._done]
        if not todo:
            return
        done = 0
        kept = min(copies)
        for copy in todo:
            self._done.add(copy.event_id)
            # The ledger may name the later copy (the bot's send after the
            # homeserver's): a !redirect's edit must go to the one kept.
            await self._ledger.repoint(copy.event_id, kept.event_id)
            ok = await self._matrix.redact(ev.room_id, copy.event_id, "duplicate copy")
            done += ok
            log.info("redacted own double %s in %s: %s", copy.event_id, ev.room_id, ok)
        armed = next((a for a in self._armed() if a.run_key == tag.run), None)
        await self._notifier.report(
            armed.run.control_room if armed is not None else None,
            crew_text.own_duplicates_removed(
                ev.room_id,
                armed.run.id if armed is not None else None,
                (tag.city, tag.stage, tag.part),
                [c.event_id for c in todo],
                len(todo) - done,
                kept.event_id,
            ),
        )
