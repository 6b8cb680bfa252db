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
