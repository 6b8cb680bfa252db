"""Right-to-left text that mixes with Latin names, times and commands. Pure.

What the clients do decides the shape (checked in Element's source): Element
renders a message body in an element with ``dir="auto"`` (direction from the
first strong character) and its HTML sanitiser drops ``dir`` attributes and
``<bdi>``, so markup cannot set the direction there. What works in every client
is in the text itself:

- each line of a right-to-left reply starts with RIGHT-TO-LEFT MARK (U+200F),
  so ``dir="auto"`` (Element) and plain-text clients (a line is a paragraph)
  both lay the line out right to left even when it begins with a Latin name;
- an interpolated value is wrapped in FIRST STRONG ISOLATE … POP DIRECTIONAL
  ISOLATE (U+2068 … U+2069), so a Latin place name or a time keeps its own order
  and does not drag the punctuation around it;
- a command is wrapped in LEFT-TO-RIGHT ISOLATE … PDI (U+2066 … U+2069) *with a
  space inside on each side*: without the isolate ``!here`` after Persian text
  shows as ``here!``; with the spaces the invisible characters never touch the
  command's own characters, so selecting the visible ``!here`` (or the word with
  the spaces around it) copies exactly ``!here`` — the control parser refuses a
  command that contains format characters.

The HTML form also gets ``<div dir="rtl">`` for clients that keep the attribute.
"""

from __future__ import annotations

import re
import unicodedata

LRM = "\u200e"
RLM = "\u200f"
ALM = "\u061c"
LRE, RLE, PDF, LRO, RLO = "\u202a", "\u202b", "\u202c", "\u202d", "\u202e"
LRI, RLI, FSI, PDI = "\u2066", "\u2067", "\u2068", "\u2069"
BIDI_CONTROLS = frozenset((LRM, RLM, ALM, LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI))


def has_rtl(text: str) -> bool:
    """Whether ``text`` holds a strong right-to-left character (Hebrew, Arabic, ...)."""
    return any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text)


def isolate(value: str) -> str:
    """``value`` as one unit of its own direction inside any paragraph."""
    return f"{FSI}{value}{PDI}"


def command_slot(template: str, name: str) -> str:
    """Put the command placeholder ``%(name)s`` of ``template`` in a spaced LTR isolate.

    The template's own single space on each side moves inside the isolate, so
    the text reads with one space either way and the command stands between
    plain spaces, never next to an invisible character.
    """
    pattern = re.compile(r" ?%\(" + re.escape(name) + r"\)s ?")
    return pattern.sub(lambda _: f"{LRI} %({name})s {PDI}", template)


# A command written in a stage text: `!here` and its kin as whole words.
_COMMAND_IN_TEXT = re.compile(r" ?(?<![\w!])(!(?:here|join|stop|help|role))(?![\w-]) ?")


def isolate_commands(text: str) -> str:
    """Every command word written in ``text`` in a spaced LTR isolate (see module doc)."""
    return _COMMAND_IN_TEXT.sub(lambda m: f"{LRI} {m.group(1)} {PDI}", text)


def rtl_lines(text: str) -> str:
    """Every line of ``text`` starting with RLM, so each lays out right to left."""
    if not text.strip():
        return text  # nothing to lay out; an empty text must still look empty
    return "\n".join(RLM + line for line in text.split("\n"))


def strip_edges(text: str) -> str:
    """``text`` without white space and bidi marks at its ends (never inside).

    For a command parser that reads text copied from a right-to-left reply: a
    whole copied line brings the line's RLM and the isolate with it. Marks
    inside the text stay, so a command with a format character in it is still
    refused.
    """
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or text[start] in BIDI_CONTROLS):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in BIDI_CONTROLS):
        end -= 1
    return text[start:end]
