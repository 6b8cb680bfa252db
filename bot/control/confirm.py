"""One confirmation flow for every command that needs one.

A command that must be confirmed is answered with a question and remembered;
the same command followed by ``confirm``, in the same control room within the
window, goes ahead. Used by ``!purge`` (always), by commands that release and
were read late (typed long before the bot read them), and by any handler that
wants a second look (``Reply.ask``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum

from bot.clock import Clock

CONFIRM_WINDOW_S = 120.0
_KEPT = 256  # pending questions remembered at most (oldest dropped)


def command_key(raw: str) -> str:
    """The command as it is typed again with ``confirm``: ids only, lower case,
    one space apart, without a trailing ``confirm``."""
    words = raw.split()
    if words and words[-1].lower() == "confirm":
        words = words[:-1]
    return " ".join(words).lower()


class Asked(Enum):
    """What a question was about. A ``confirm`` answers only that question: one
    given for a command read late does not also wave through the warnings the
    handler would show (``!arm``'s pre-flight), which the organiser has not seen."""

    READ_LATE = "read late"
    HANDLER = "handler"  # the handler asked (Reply.ask): purge, pre-flight warnings


class Confirmations:
    def __init__(self, clock: Clock, window_s: float = CONFIRM_WINDOW_S) -> None:
        self._clock = clock
        self.window_s = window_s
        self._asked: dict[tuple[str, str], tuple[datetime, Asked]] = {}

    def ask(self, room_id: str, key: str, why: Asked = Asked.HANDLER) -> None:
        self._asked.pop((room_id, key), None)
        self._asked[(room_id, key)] = (self._wall(), why)
        while len(self._asked) > _KEPT:
            del self._asked[next(iter(self._asked))]

    def take(self, room_id: str, key: str) -> Asked | None:
        """What ``key`` was asked about in this room within the window (used up),
        or None if nothing was."""
        found = self._asked.pop((room_id, key), None)
        if found is None:
            return None
        asked, why = found
        return why if self._wall() - asked <= timedelta(seconds=self.window_s) else None

    def _wall(self) -> datetime:
        # Real time: a person's two minutes, also when the bot runs on a scaled clock.
        return self._clock.to_wall(self._clock.now())
