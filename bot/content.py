"""Matrix event content for stage messages and notices. Pure.

Every stage message is HTML-formatted ``m.text``; a stage whose place has a
``geo`` also gets an ``m.location`` event (with the MSC3488 block clients read)
so clients show a pin. The dispatch tag is added per room by the dispatcher.
"""

from __future__ import annotations

import html
from typing import Any

from bot.dispatch import Message
from bot.ledger import Part
from bot.scenario import RenderedStage

DRILL_PREFIX = "[DRILL] "


def stage_messages(
    rendered: RenderedStage, *, drill_label: str | None = None
) -> tuple[Message, ...]:
    body = rendered.body
    formatted = rendered.html
    if drill_label is not None:
        body = f"{DRILL_PREFIX}{drill_label}\n{body}"
        formatted = f"<b>{html.escape(DRILL_PREFIX + drill_label)}</b><br/>{formatted}"
    messages = [
        Message(
            Part.TEXT,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": body,
                "format": "org.matrix.custom.html",
                "formatted_body": formatted,
            },
        )
    ]
    loc = rendered.location
    if loc is not None:
        label = f"{DRILL_PREFIX}{loc.name}" if drill_label is not None else loc.name
        messages.append(
            Message(
                Part.LOCATION,
                "m.room.message",
                {
                    "msgtype": "m.location",
                    "body": f"{label} ({loc.geo_uri})",
                    "geo_uri": loc.geo_uri,
                    "org.matrix.msc3488.location": {
                        "uri": loc.geo_uri,
                        "description": loc.description or label,
                    },
                    "org.matrix.msc1767.text": f"{label} ({loc.geo_uri})",
                },
            )
        )
    return tuple(messages)


def notice(
    text: str, *, html_text: str | None = None, reply_to: str | None = None
) -> dict[str, Any]:
    """An ``m.notice`` for the control room. ``text`` is plain; ``html_text`` must
    already be escaped (built with :func:`html.escape` on every interpolated value)."""
    content: dict[str, Any] = {"msgtype": "m.notice", "body": text}
    if html_text is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html_text
    if reply_to is not None:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content


def preformatted(text: str) -> str:
    """Plain text as an escaped HTML ``<pre>`` block (tables in the control room)."""
    return f"<pre><code>{html.escape(text)}</code></pre>"


# A Matrix event is at most 64 KiB of JSON (Synapse answers 413 M_TOO_LARGE and the
# reply is lost: seen for a crew's !arm at 1,000 rooms). A notice carries its text
# twice (body and HTML, which escaping makes longer), so each is kept to this.
NOTICE_MAX_BYTES = 20_000


def fit_notice(
    text: str, table: str | None, max_bytes: int = NOTICE_MAX_BYTES
) -> tuple[str, str | None]:
    """``text`` and ``table`` cut to fit one event. Lines are cut from the middle
    (the head says what it is about, the tail what to do: "send … confirm"), a line
    saying how many; a single very long line (a list of rooms) is cut short. The
    table goes first; what fits is returned unchanged."""
    if len(text.encode()) + len((table or "").encode()) <= max_bytes:
        return text, table
    if table is not None and len(text.encode()) <= max_bytes // 2:
        return text, _cut_lines(table, max_bytes - len(text.encode()))
    return _cut_lines(text, max_bytes), None


def _shorten(line: str, max_bytes: int) -> str:
    raw = line.encode()
    return line if len(raw) <= max_bytes else raw[: max_bytes - 4].decode(errors="ignore") + " …"


def _cut_lines(text: str, max_bytes: int) -> str:
    budget = max_bytes - 120  # for the line saying what was cut
    lines = [_shorten(line, budget // 3) for line in text.split("\n")]
    size = [len(line.encode()) + 1 for line in lines]
    tail, used = len(lines), 0
    while tail > 0 and used + size[tail - 1] <= budget // 3:
        tail -= 1
        used += size[tail]
    head = 0
    while head < tail and used + size[head] <= budget:
        used += size[head]
        head += 1
    cut = tail - head
    said = f"… {cut} line(s) cut here" if cut else "… long lines cut"
    marker = f"{said}: a Matrix message holds at most 64 KiB."
    return "\n".join([*lines[:head], marker, *lines[tail:]])
