"""Failover by looking: which copies of a dispatch a room already shows. Pure.

A standby (or a member sending late) reads the room's recent events — dicts as
Matrix returns them from ``/messages`` or ``/sync``, already decrypted in
encrypted rooms — and sends only the parts no crew member has delivered. After
a partition, :func:`resolve` says which visible copies the crew redacts so the
room keeps one.

A *copy* is a visible ``m.room.message`` from a crew member whose content
carries the dispatch tag (``org.blossom.dispatch``) with this run, city, stage
and part. Not a copy: redacted events (marked in ``unsigned`` or redacted by a
redaction in the same batch), edits (``m.replace``), state events, events from
anyone outside the crew, whatever tag they carry. Hostile events never raise.

The run is the event id of the ``!arm`` (or ``!drill``) command, the same for
every member: the tag's ``run`` field.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from bot import DISPATCH_KEY
from bot.crew.duty import precedence

MESSAGE_TYPE = "m.room.message"


@dataclass(frozen=True)
class DispatchTag:
    """What identifies one part of one dispatch, in every event sent for it."""

    run: str
    city: str
    stage: str
    part: str
    scenario: str = ""


def parse_tag(content: object) -> DispatchTag | None:
    """The dispatch tag in an event's content, or ``None`` if absent or malformed.

    A tag without ``run`` (sent before runs had an identity) matches no run.
    """
    if not isinstance(content, Mapping):
        return None
    tag = content.get(DISPATCH_KEY)
    if not isinstance(tag, Mapping):
        return None
    run, city, stage, part = (tag.get(k) for k in ("run", "city", "stage", "part"))
    scenario = tag.get("scenario", "")
    if not (_text(run) and _text(city) and _text(stage) and _text(part)):
        return None
    if not isinstance(scenario, str):
        return None
    return DispatchTag(run, city, stage, part, scenario)


def _text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""


@dataclass(frozen=True, order=True)
class Copy:
    """One visible copy of a dispatch part in a room."""

    origin_server_ts: int
    event_id: str
    sender: str


def find_copies(
    events: Iterable[object],
    *,
    run: str,
    city: str,
    stage: str,
    part: str,
    members: Collection[str],
) -> tuple[Copy, ...]:
    """The visible copies of (run, city, stage, part) sent by crew ``members``,
    earliest first."""
    batch = [e for e in events if isinstance(e, Mapping)]
    redacted = _redacted_ids(batch)
    copies = set()
    for event in batch:
        found = _copy(event, members, redacted)
        if found is None:
            continue
        copy, tag = found
        if (tag.run, tag.city, tag.stage, tag.part) == (run, city, stage, part):
            copies.add(copy)
    return tuple(sorted(copies))


def missing_parts(
    events: Iterable[object],
    *,
    run: str,
    city: str,
    stage: str,
    parts: Iterable[str],
    members: Collection[str],
) -> tuple[str, ...]:
    """The parts of the dispatch no crew member has delivered visibly, in order."""
    batch = list(events)
    return tuple(
        p
        for p in parts
        if not find_copies(batch, run=run, city=city, stage=stage, part=p, members=members)
    )


def _redacted_ids(batch: list[Mapping[Any, Any]]) -> frozenset[str]:
    ids: set[str] = set()
    for event in batch:
        if event.get("type") != "m.room.redaction":
            continue
        # Room versions up to 10 put ``redacts`` at the top level, 11 and later
        # in the content.
        content = event.get("content")
        inner = content.get("redacts") if isinstance(content, Mapping) else None
        ids.update(t for t in (event.get("redacts"), inner) if isinstance(t, str))
    return frozenset(ids)


def _copy(
    event: Mapping[Any, Any], members: Collection[str], redacted: frozenset[str]
) -> tuple[Copy, DispatchTag] | None:
    event_id, sender, ts = event.get("event_id"), event.get("sender"), event.get("origin_server_ts")
    if not (isinstance(event_id, str) and isinstance(sender, str) and sender in members):
        return None
    if event.get("type") != MESSAGE_TYPE or "state_key" in event or event_id in redacted:
        return None
    unsigned = event.get("unsigned")
    if isinstance(unsigned, Mapping) and "redacted_because" in unsigned:
        return None
    content = event.get("content")
    relates = content.get("m.relates_to") if isinstance(content, Mapping) else None
    if isinstance(relates, Mapping) and relates.get("rel_type") == "m.replace":
        return None
    tag = parse_tag(content)
    if tag is None:
        return None
    stamp = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
    return Copy(stamp, event_id, sender), tag


def copy_in(event: object, members: Collection[str]) -> tuple[Copy, DispatchTag] | None:
    """One event on its own: a visible copy of a dispatch part from a crew member
    (with its tag), or ``None``. For watching a room's timeline as it arrives."""
    if not isinstance(event, Mapping):
        return None
    try:
        return _copy(event, members, frozenset())
    except Exception:  # hostile content never raises
        return None


@dataclass(frozen=True)
class Resolution:
    """What the crew does with the visible copies of one dispatch part in a room."""

    keep: Copy | None
    redact: tuple[Copy, ...]
    """Each redacted by its own sender."""

    def for_member(self, user_id: str) -> tuple[Copy, ...]:
        """The copies ``user_id`` must redact (only its own)."""
        return tuple(c for c in self.redact if c.sender == user_id)


def resolve(copies: Iterable[Copy], order: Sequence[str]) -> Resolution:
    """Keep the copy of the member earliest in the city's order (its earliest
    copy, if it has several); every other copy is redacted by its sender."""
    ranked = sorted(copies, key=lambda c: (precedence(order, c.sender), c))
    if not ranked:
        return Resolution(None, ())
    return Resolution(ranked[0], tuple(ranked[1:]))


def own_doubles(copies: Iterable[Copy], me: str) -> tuple[Copy, ...]:
    """The copies of one dispatch part that ``me`` sent beyond its earliest (by
    ``origin_server_ts``, then event id), earliest first: what it redacts. Synapse
    may send a delayed event twice after its own crash, and the homeserver's copy
    may race the bot's late send; both carry the bot as sender. Consistent with
    :func:`resolve`: that keeps at most one copy, the earliest of its member."""
    mine = sorted({c for c in copies if c.sender == me})
    return tuple(mine[1:])
