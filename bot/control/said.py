"""A participant handler's reply in the participant's language (bot.i18n)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.control.registry import Reply
from bot.i18n import Reply as Said


@dataclass(frozen=True)
class Translated(Reply):
    """A handler's reply in the participant's language: the caller sends ``said``
    (its plain body and HTML form); ``text`` is its plain body."""

    said: Said | None = None


def translated(said: Said) -> Translated:
    return Translated(said.body, said=said)
