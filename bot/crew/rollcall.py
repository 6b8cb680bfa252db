"""Arming across the crew: who follows whom, and the roll call the speaker lists. Pure.

Every member acts on ``!arm <id>``; the run's identity is the command's event id,
so all agree on it without talking. The *reference* is the speaker — the first
member in the config's order that is not down (:meth:`bot.crew.duty.CrewView.speaker`):
it decides alone (arms, asks to confirm, or refuses) and publishes its answer in
its heartbeat (:class:`bot.crew.heartbeat.Answer`). Each other member waits,
bounded, for that answer and :func:`follow`\\ s it: it arms only when its own file
has the reference's digest and the reference armed. The speaker waits, bounded,
for every live member's answer and lists each one (:func:`roll_call`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.crew.duty import CrewView
from bot.crew.heartbeat import Answer

ARMED = "armed"
DIFFERS = "differs"
NOT_ARMED = "not armed"
REFUSED = "refused"
NOT_ANSWERING = "not answering"

DIGEST_SHOWN = 12
"""Hex digits of a digest shown in replies: enough to tell files apart."""


def roll_call_window(heartbeat: timedelta) -> timedelta:
    """How long the speaker waits for the others' answers (and a member for the
    speaker's): every live member beats at once on reading a command, so three
    heartbeats is generous; never under 5 s (federation), never over 20 s (the
    organiser is waiting for the reply)."""
    return min(max(3 * heartbeat, timedelta(seconds=5)), timedelta(seconds=20))


@dataclass(frozen=True)
class Follow:
    """What a member that is not the reference does about one ``!arm``."""

    arm: bool
    state: str
    """The answer it publishes when it does not arm."""


def follow(mine: str, reference: Answer | None) -> Follow:
    """Given the digest of this member's own file (``mine``) and the reference's
    answer (``None``: it gave none in time), whether to arm.

    A member whose file differs never arms, whatever the reference did: it
    would send other texts, places or times. One that heard nothing does not
    arm either: arming is never done on a guess.
    """
    if reference is None:
        return Follow(False, NOT_ARMED)
    if not mine or reference.digest != mine:
        return Follow(False, DIFFERS)
    if reference.state != ARMED:
        return Follow(False, NOT_ARMED)
    return Follow(True, ARMED)


@dataclass(frozen=True)
class Line:
    """One member in the roll call."""

    member: str
    state: str
    """An answer state, or :data:`NOT_ANSWERING`."""
    digest: str = ""
    down: bool = False


def answered(
    view: CrewView, answers: Mapping[str, Answer | None], at: datetime
) -> bool:
    """Whether every member that is not down at ``at`` has answered."""
    return all(
        answers.get(m) is not None or view.is_down(m, at) for m in view.crew.members
    )


def roll_call(
    view: CrewView, answers: Mapping[str, Answer | None], at: datetime
) -> tuple[Line, ...]:
    """Each member of the crew, in the config's order, with its answer."""
    lines = []
    for member in view.crew.members:
        answer = answers.get(member)
        if answer is None:
            lines.append(Line(member, NOT_ANSWERING, down=view.is_down(member, at)))
        else:
            lines.append(Line(member, answer.state, answer.digest))
    return tuple(lines)
