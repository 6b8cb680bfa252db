"""Drop the events matrix-nio cannot parse from a /sync body, before nio sees it.

nio turns most malformed events into ``BadEvent``, but some shapes make its parser
raise instead: an ``origin_server_ts`` that is not a number, an
``unsigned.prev_content`` that is not an object, an event that is not an object at
all. An exception while parsing loses the whole sync response, and since the sync
token does not advance, every retry meets the same event: the bot would stall (or,
before this, its sync task died and the bot stopped). Synapse checks the content its
own clients send, but relays events from other servers with far fewer checks, so
one hostile server is enough.

:class:`SanitizingClient` cleans every /sync body it receives: first the shape of
containers and event envelopes (pure), then whatever nio's sync schema refuses, then
each event through the nio parser its section gets, dropping the ones that raise.
What is dropped is logged by kind and reason, never by content.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import MutableMapping
from typing import Any

from nio import AsyncClient

log = logging.getLogger(__name__)

# Envelope keys and the JSON type each must have when present.
_STRING_KEYS = ("type", "sender", "event_id", "state_key", "redacts", "room_id")
_OBJECT_KEYS = ("content", "unsigned")
# Events sections under a joined, left or invited room.
_ROOM_SECTIONS = ("timeline", "state", "ephemeral", "account_data", "invite_state", "state_after")
# Events sections at the top level of the body.
_TOP_SECTIONS = ("to_device", "account_data", "presence")


def event_shape_problem(event: Any) -> str | None:
    """Why nio could not parse this event's envelope, or None if it can."""
    if not isinstance(event, dict):
        return "not an object"
    for key in _STRING_KEYS:
        if key in event and not isinstance(event[key], str):
            return f"{key} is not a string"
    for key in _OBJECT_KEYS:
        if key in event and not isinstance(event[key], dict):
            return f"{key} is not an object"
    ts = event.get("origin_server_ts")
    if "origin_server_ts" in event and (isinstance(ts, bool) or not isinstance(ts, int)):
        return "origin_server_ts is not a whole number"
    unsigned = event.get("unsigned")
    if isinstance(unsigned, dict):
        for key in ("prev_content", "redacted_because"):
            if key in unsigned and not isinstance(unsigned[key], dict):
                return f"unsigned.{key} is not an object"
        for key in ("age", "transaction_id"):
            value = unsigned.get(key)
            if key == "age" and key in unsigned and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                return "unsigned.age is not a whole number"
            if key == "transaction_id" and key in unsigned and not isinstance(value, str):
                return "unsigned.transaction_id is not a string"
    return None


def _clean_events(holder: Any, dropped: list[str]) -> None:
    """``holder`` is a ``{"events": [...]}`` section; remove its bad events."""
    if not isinstance(holder, MutableMapping) or "events" not in holder:
        return
    events = holder["events"]
    if not isinstance(events, list):
        holder["events"] = []
        dropped.append("events is not a list")
        return
    kept = []
    for event in events:
        problem = event_shape_problem(event)
        if problem is None:
            kept.append(event)
        else:
            dropped.append(problem)
    holder["events"] = kept


def sanitize_sync(body: Any) -> list[str]:
    """Remove what nio cannot parse from a /sync body, in place.

    Returns why each removed thing was removed (no content, for the log).
    """
    dropped: list[str] = []
    if not isinstance(body, MutableMapping):
        return dropped
    for section in _TOP_SECTIONS:
        if section in body and not isinstance(body[section], MutableMapping):
            del body[section]
            dropped.append(f"{section} is not an object")
        else:
            _clean_events(body.get(section), dropped)
    rooms = body.get("rooms")
    if "rooms" in body and not isinstance(rooms, MutableMapping):
        del body["rooms"]
        dropped.append("rooms is not an object")
        return dropped
    if not isinstance(rooms, MutableMapping):
        return dropped
    for kind in ("join", "leave", "invite", "knock"):
        by_room = rooms.get(kind)
        if kind in rooms and not isinstance(by_room, MutableMapping):
            del rooms[kind]
            dropped.append(f"rooms.{kind} is not an object")
            continue
        if not isinstance(by_room, MutableMapping):
            continue
        for room_id in list(by_room):
            info = by_room[room_id]
            if not isinstance(info, MutableMapping):
                del by_room[room_id]
                dropped.append(f"a room in rooms.{kind} is not an object")
                continue
            for section in _ROOM_SECTIONS:
                if section in info and not isinstance(info[section], MutableMapping):
                    del info[section]
                    dropped.append(f"a room's {section} is not an object")
                else:
                    _clean_events(info.get(section), dropped)
    return dropped


# --- against nio's own parsers -------------------------------------------------------


def _delete_at(body: Any, path: list[Any]) -> bool:
    """Delete the element at ``path`` (keys and list indexes); False if impossible."""
    if not path:
        return False
    node = body
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        del node[path[-1]]
    except (KeyError, IndexError, TypeError):
        return False
    return True


def repair_schema(body: Any, *, limit: int = 200) -> list[str]:
    """Delete what makes nio's sync schema reject the body (a room summary with a
    string count, a device list of numbers...): nio would answer a SyncError for the
    whole response, on every retry of the same token."""
    from nio.schemas import Schemas, validate_json

    dropped: list[str] = []
    for _ in range(limit):
        try:
            validate_json(body, Schemas.sync)
        except Exception as err:  # jsonschema's ValidationError, which names the path
            path = list(getattr(err, "absolute_path", None) or [])
            if path == ["next_batch"] or not _delete_at(body, path):
                dropped.append("the sync body is unusable")
                return dropped
            dropped.append("/".join(str(p) for p in path[:1]) + " did not fit the schema")
        else:
            return dropped
    return dropped


def _nio_parsers() -> dict[str, Any]:
    from nio.events import (
        AccountDataEvent,
        EphemeralEvent,
        Event,
        InviteEvent,
        ToDeviceEvent,
    )

    return {
        "room": Event.parse_event,
        "invite_state": InviteEvent.parse_event,
        "ephemeral": EphemeralEvent.parse_event,
        "account_data": AccountDataEvent.parse_event,
        "to_device": ToDeviceEvent.parse_event,
    }


def _trial(holder: Any, parse: Any, dropped: list[str]) -> None:
    if not isinstance(holder, MutableMapping) or not isinstance(holder.get("events"), list):
        return
    kept = []
    for event in holder["events"]:
        try:
            parse(copy.deepcopy(event))  # nio's parsers may change the dict they get
        except Exception as err:  # nio's parser raised: it would lose the whole sync
            dropped.append(f"nio cannot parse a {_kind(event)} event ({type(err).__name__})")
        else:
            kept.append(event)
    holder["events"] = kept


def _kind(event: Any) -> str:
    kind = event.get("type") if isinstance(event, dict) else None
    return kind[:60] if isinstance(kind, str) else "typeless"


def drop_unparseable(body: Any) -> list[str]:
    """Run each event through the nio parser its section gets, and drop the ones
    that make it raise (nio would lose the whole response for one of them)."""
    dropped: list[str] = []
    if not isinstance(body, MutableMapping):
        return dropped
    parsers = _nio_parsers()
    _trial(body.get("to_device"), parsers["to_device"], dropped)
    _trial(body.get("account_data"), parsers["account_data"], dropped)
    rooms = body.get("rooms")
    if not isinstance(rooms, MutableMapping):
        return dropped
    for kind in ("join", "leave", "invite"):
        by_room = rooms.get(kind)
        if not isinstance(by_room, MutableMapping):
            continue
        for info in by_room.values():
            if not isinstance(info, MutableMapping):
                continue
            _trial(info.get("timeline"), parsers["room"], dropped)
            _trial(info.get("state"), parsers["room"], dropped)
            _trial(info.get("invite_state"), parsers["invite_state"], dropped)
            _trial(info.get("ephemeral"), parsers["ephemeral"], dropped)
            _trial(info.get("account_data"), parsers["account_data"], dropped)
    return dropped


def clean_sync_body(body: Any) -> list[str]:
    """Everything above, in order: the shape, the schema, then nio's parsers.
    The bot never asks for presence (its filter excludes it), so it is dropped."""
    if isinstance(body, MutableMapping):
        body.pop("presence", None)
    dropped = sanitize_sync(body)
    dropped += repair_schema(body)
    dropped += drop_unparseable(body)
    return dropped


def clean_messages_body(body: Any) -> list[str]:
    """The same for a ``/rooms/{id}/messages`` page (the control watch's poll,
    crash recovery's look into a room): its ``chunk`` and ``state`` events. A page
    nio cannot parse would be asked for again from the same token, for ever."""
    dropped: list[str] = []
    if not isinstance(body, MutableMapping):
        return dropped
    parse = _nio_parsers()["room"]
    for section in ("chunk", "state"):
        if section not in body:
            continue
        holder = {"events": body[section]}
        _clean_events(holder, dropped)
        _trial(holder, parse, dropped)
        body[section] = holder["events"]
    return dropped


def _cleaner(path: str) -> tuple[str, Any] | None:
    if path.endswith("/sync"):
        return "a sync", clean_sync_body
    if path.endswith("/messages"):
        return "a page of room messages", clean_messages_body
    return None


class SanitizingClient(AsyncClient):  # type: ignore[misc]
    """The bot's nio client: /sync and /messages bodies are cleaned before nio
    parses them."""

    async def parse_body(self, transport_response: Any) -> dict[Any, Any]:
        body: dict[Any, Any] = await super().parse_body(transport_response)
        url = getattr(transport_response, "url", None)
        path = getattr(url, "path", "")
        found = _cleaner(path) if isinstance(path, str) else None
        if found is not None:
            what, clean = found
            dropped = clean(body)
            if dropped:
                reasons = Counter(dropped)
                log.warning(
                    "dropped %d malformed item(s) from %s: %s",
                    len(dropped),
                    what,
                    "; ".join(f"{why} x{n}" for why, n in reasons.most_common(5)),
                )
        return body
