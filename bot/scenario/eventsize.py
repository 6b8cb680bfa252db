"""How many bytes a stage's events take on the wire, and the limit they must fit. Pure.

Synapse refuses an event whose PDU — the canonical JSON of the whole event, its
envelope included — is over 65,536 bytes (``MAX_PDU_SIZE``, checked in
``synapse.event_auth``). What the scenario decides is the content, and it counts
twice over:

* in a plain room the content appears in the PDU as canonical JSON: UTF-8, with
  ``\\`` and ``"`` escaped and control characters as ``\\u00XX``;
* in an encrypted room matrix-nio serialises ``{"content", "type", "room_id"}``
  with ``json.dumps`` defaults (``ensure_ascii``: every non-ASCII character
  becomes ``\\uXXXX``, two of them outside the BMP), megolm encrypts it (AES-CBC
  padded to 16 bytes, a header, an 8-byte MAC and a 64-byte signature) and the
  ciphertext goes into the ``m.room.encrypted`` content as unpadded base64.

The bot cannot know offline whether a room is encrypted, so a stage must fit
both ways; the encrypted form is always the larger. The text goes out twice in
each message (``body`` and the escaped ``formatted_body``), with the dispatch tag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bot.scenario.render import Location, RenderedStage, to_html

MAX_PDU_BYTES = 65_536

ENVELOPE_MARGIN = 4_096
"""What the rest of the PDU may take: sender, room id, event type, auth_events,
prev_events, depth, hashes, signatures, origin_server_ts, unsigned.

Measured on Synapse 1.163 (the ``event_json`` table): a message from a
212-character user id in a v12 room has a 770-byte envelope. The worst case the
spec allows (255-character sender, room id and server name, the 10 prev_events
Synapse sets at most, a long signing key id) is about 1,700 bytes; 4 KiB leaves
room beyond that for a homeserver that adds more."""

CONTENT_LIMIT = MAX_PDU_BYTES - ENVELOPE_MARGIN
"""The most a stage event's content may take, in the larger of its two forms."""

# Bounds on what goes into an event but is not known offline, each the largest
# the spec or the bot allows, so a measure never falls short of the real event.
ROOM_ID_BOUND = 255  # nio puts the room id into the encrypted plaintext
RUN_ID_BOUND = 255  # an event id, carried in the dispatch tag as the run
DEVICE_ID_BOUND = 64  # bot.config's pattern for matrix.device_id
_MEGOLM_INDEX_VARINT = 5  # a uint32 message index, at most 5 bytes as a varint
_MEGOLM_CIPHERTEXT_VARINT = 3  # ciphertext lengths below 2 MiB

DRILL_PREFIX = "[DRILL] "  # as bot.content builds a drill's messages


def canonical_json_length(value: object) -> int:
    """Bytes of ``value`` as Synapse encodes a PDU (canonical JSON, UTF-8)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return len(text.encode())


def ascii_json_length(value: object) -> int:
    """Bytes of ``value`` as matrix-nio serialises a plaintext before encrypting it."""
    return len(json.dumps(value, separators=(",", ":")))


def _varint_length(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def megolm_base64_length(plaintext_bytes: int) -> int:
    """Length of the base64 megolm ciphertext of a plaintext this long (an upper
    bound: a fresh session's message index takes 1 byte, not 5)."""
    ciphertext = 16 * (plaintext_bytes // 16 + 1)  # AES-CBC with PKCS#7 padding
    header = 1 + 1 + _MEGOLM_INDEX_VARINT + 1 + _varint_length(ciphertext)  # version, fields
    binary = header + ciphertext + 8 + 64  # MAC, Ed25519 signature
    return -(-binary * 4 // 3)  # unpadded base64


_ENCRYPTED_SHELL = canonical_json_length(
    {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "",
        "device_id": "D" * DEVICE_ID_BOUND,
        "sender_key": "K" * 43,
        "session_id": "S" * 43,
    }
)


def content_length(content: Mapping[str, Any], event_type: str = "m.room.message") -> int:
    """The larger of the two forms ``content`` takes in a PDU: plain, or as the
    ``m.room.encrypted`` content matrix-nio makes of it."""
    plaintext = {"content": content, "type": event_type, "room_id": "!" * ROOM_ID_BOUND}
    encrypted = _ENCRYPTED_SHELL + megolm_base64_length(ascii_json_length(plaintext))
    return max(canonical_json_length(content), encrypted)


def _tag(
    scenario_id: str,
    city_id: str,
    stage_id: str,
    part: str,
    pod: str | None = None,
    variant: str | None = None,
) -> dict[str, str]:
    # The dispatch tag's fields (bot.ledger.DeliveryKey.content_tag) plus the run's
    # id; a pod's or role variant's dispatch also names them (the ledger is per
    # pod and role variant, see bot.scenario.timeline.Dispatch.lane/unit).
    tag = {
        "scenario": scenario_id,
        "city": city_id,
        "stage": stage_id,
        "part": part,
        "run": "$" * RUN_ID_BOUND,
    }
    if pod is not None:
        tag["pod"] = pod
    if variant is not None:
        tag["variant"] = variant
    return tag


def _text_content(body: str, formatted: str, tag: dict[str, str]) -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": formatted,
        "org.blossom.dispatch": tag,
    }


def _location_content(location: Location, label: str, tag: dict[str, str]) -> dict[str, Any]:
    text = f"{label} ({location.geo_uri})"
    return {
        "msgtype": "m.location",
        "body": text,
        "geo_uri": location.geo_uri,
        "org.matrix.msc3488.location": {
            "uri": location.geo_uri,
            "description": location.description or label,
        },
        "org.matrix.msc1767.text": text,
        "org.blossom.dispatch": tag,
    }


def text_size(
    body: str,
    html: str,
    scenario_id: str,
    city_name: str,
    city_id: str,
    stage_id: str,
    *,
    time_placeholders: int = 0,
    pod: str | None = None,
    variant: str | None = None,
) -> int:
    """The content length (see :func:`content_length`) of a stage's text message.

    Measured in the drill form, the larger (bot.content adds a label line to a
    drill's messages). ``time_placeholders`` reserves three characters for each
    ``{time:…}`` that renders ``HH:MM`` now and ``HH:MM:SS`` after a ``!delay``.
    """
    label = f"{DRILL_PREFIX}{scenario_id} · {city_name} · {stage_id}"
    seconds = "0" * (3 * time_placeholders)
    content = _text_content(
        f"{label}\n{body}{seconds}",
        f"<b>{to_html(label)}</b><br/>{html}{seconds}",
        _tag(scenario_id, city_id, stage_id, "text", pod, variant),
    )
    return content_length(content)


def location_size(
    location: Location,
    scenario_id: str,
    city_id: str,
    stage_id: str,
    *,
    pod: str | None = None,
    variant: str | None = None,
) -> int:
    """The content length of a stage's map pin, in the drill form (the larger)."""
    label = f"{DRILL_PREFIX}{location.name}"
    tag = _tag(scenario_id, city_id, stage_id, "location", pod, variant)
    return content_length(_location_content(location, label, tag))


def stage_sizes(
    rendered: RenderedStage,
    scenario_id: str,
    city_name: str,
    city_id: str,
    stage_id: str,
    *,
    time_placeholders: int = 0,
    pod: str | None = None,
    variant: str | None = None,
) -> dict[str, int]:
    """:func:`text_size` and :func:`location_size` of a rendered stage, by part name
    (``text``, and ``location`` when the stage has a pin). For the run manager to
    check a stage again after a ``!redirect`` changed its place."""
    sizes = {
        "text": text_size(
            rendered.body,
            rendered.html,
            scenario_id,
            city_name,
            city_id,
            stage_id,
            time_placeholders=time_placeholders,
            pod=pod,
            variant=variant,
        )
    }
    if rendered.location is not None:
        sizes["location"] = location_size(
            rendered.location, scenario_id, city_id, stage_id, pod=pod, variant=variant
        )
    return sizes


def abort_size(
    body: str,
    scenario_id: str,
    city_name: str,
    city_id: str,
    *,
    time_placeholders: int = 0,
    pod: str | None = None,
) -> int:
    """The content length of the stop message ``body`` (as the run manager sends an
    abort: bold HTML, a label line in a drill)."""
    body = f"{DRILL_PREFIX}{scenario_id} · {city_name}\n{body}" + "0" * (3 * time_placeholders)
    content = _text_content(
        body, f"<b>{to_html(body)}</b>", _tag(scenario_id, city_id, "!abort", "text", pod)
    )
    return content_length(content)


def too_large(size: int) -> str:
    """The end of a refusal for a content of ``size`` bytes (over :data:`CONTENT_LIMIT`)."""
    return (
        f"{size:,} bytes as an encrypted event, {size - CONTENT_LIMIT:,} bytes over the limit "
        f"of {CONTENT_LIMIT:,} (64 KiB less {ENVELOPE_MARGIN // 1024} KiB for the event's "
        "envelope; backslashes, quotes, line breaks, <>& and non-ASCII characters "
        "take several bytes each)"
    )
