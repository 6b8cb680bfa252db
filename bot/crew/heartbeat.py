"""The crew's heartbeat: its content, reading other members', and its rate. Pure.

Each member keeps one state event in each control room: type
``org.blossom.crew``, state key = its own user id. Every room version lets only
that user write a state key that is its user id, so no one else can fake a
member's heartbeat. The content::

    {"time": 1764594194000,        # the member's clock, ms since the epoch
     "interval": 30000,            # ms until its next heartbeat at the latest
     "version": "0.1.0",           # the member's Blossom version
     "armed": ["<sha256 hex>", …], # digests of the scenario files it has armed
     "stopping": true,             # optional: it is shutting down cleanly
     "started": 1764594190000,     # optional: when this run of it started listening
     "answers": {"<!arm event id>": {"scenario": "<id>", "digest": "<sha256 hex>",
                                     "state": "armed"}}}  # optional: the roll call

``started`` (optional) tells a new run of a member from its previous one: the
others beat at once when they see a ``started`` they did not know (they answer
its start, so it hears every member that is up within its start-up window,
:class:`bot.crew.duty.Listening`), and once more a heartbeat later.

``answers`` (optional) is this member's answer to each recent ``!arm``, keyed by
the command's event id (the run key): the scenario, the digest of *its* file
("" if it could not read one) and what it did (:data:`ANSWER_STATES`). The
speaker lists them in its ``!arm`` reply (:mod:`bot.crew.rollcall`). Ids and
digests only, never content.

**Rate.** State events stay in the room's history for good, so a member beats
every ``heartbeat_seconds`` only while that matters — while it has something
armed, and for :data:`AWAKE_FOR` after it reads a control command — and every
:data:`IDLE_INTERVAL` otherwise: about 144 events a day per control room when
idle, 120 an hour while armed at 30 s. It beats at once when what it would say
changes (armed digests, a faster rate, stopping), and at once on reading a
control command: that is the *roll call* by which the others tell, within three
intervals, that a member idling at the slow rate is gone
(:meth:`bot.crew.members.Member.is_down`).

Reading is total: whatever another server relays, :func:`parse_heartbeat`
returns a :class:`Heartbeat` or ``None`` and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from bot.crew.members import DOWN_AFTER_BEATS, Member

EVENT_TYPE = "org.blossom.crew"

IDLE_INTERVAL = timedelta(minutes=10)
"""The rate with nothing armed and no recent command."""
AWAKE_FOR = timedelta(minutes=10)
"""How long a member keeps the fast rate after reading a control command."""

MAX_ARMED = 256  # more digests than any member arms; beyond it the content is hostile
MAX_ANSWERS = 16  # recent !arm answers a heartbeat carries; beyond it the content is hostile
ANSWER_STATES = frozenset({"armed", "differs", "not armed", "refused"})
_MAX_ID = 255  # event ids and scenario ids (both far shorter in practice)
_MAX_VERSION = 64
_MIN_INTERVAL_MS = 1_000
_MAX_INTERVAL_MS = 3_600_000
_MAX_TIME_MS = 221_845_392_000_000  # 9000-01-01: far from datetime's limits, exact in JSON
_DIGEST = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[\x21-\x7e]{1,64}")


@dataclass(frozen=True, order=True)
class Answer:
    """One member's answer to one ``!arm`` (the roll call): ids and a digest only."""

    run_key: str
    scenario: str
    digest: str
    """The sha256 of the member's own file, "" if it could not read one."""
    state: str
    """One of :data:`ANSWER_STATES`."""


@dataclass(frozen=True)
class Heartbeat:
    """One member's heartbeat, as it publishes it or as another member read it."""

    member: str
    time: datetime
    interval: timedelta
    version: str
    armed: frozenset[str] = frozenset()
    stopping: bool = False
    answers: tuple[Answer, ...] = ()
    started: datetime | None = None
    """When this run of the member started listening (its clock)."""

    def answer(self, run_key: str) -> Answer | None:
        return next((a for a in self.answers if a.run_key == run_key), None)

    def content(self) -> dict[str, Any]:
        """The state event's content (its state key is ``member``)."""
        content: dict[str, Any] = {
            "time": _ms(self.time - _EPOCH),
            "interval": _ms(self.interval),
            "version": self.version,
            "armed": sorted(self.armed),
        }
        if self.stopping:
            content["stopping"] = True
        if self.started is not None:
            content["started"] = _ms(self.started - _EPOCH)
        if self.answers:
            content["answers"] = {
                a.run_key: {"scenario": a.scenario, "digest": a.digest, "state": a.state}
                for a in self.answers
            }
        return content


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(delta: timedelta) -> int:
    return delta // timedelta(milliseconds=1)


def parse_heartbeat(event: object, *, members: Collection[str]) -> Heartbeat | None:
    """A crew member's heartbeat from a state event as Matrix returns it, or ``None``.

    ``None`` for anything else: another event type, a state key that is not the
    sender, a sender outside ``members``, an emptied slot (a retired member's
    ``{}``), or content of the wrong shape — a heartbeat is used whole or not at
    all, since one writer made all of it.
    """
    try:
        return _parse(event, members)
    except Exception:
        # Hostile content must never stop the bot; the checks below should
        # already catch everything, this is the last line.
        return None


def _parse(event: object, members: Collection[str]) -> Heartbeat | None:
    if not isinstance(event, Mapping) or event.get("type") != EVENT_TYPE:
        return None
    sender = event.get("sender")
    if not isinstance(sender, str) or event.get("state_key") != sender or sender not in members:
        return None
    content = event.get("content")
    if not isinstance(content, Mapping):
        return None
    time = _int(content.get("time"), 1, _MAX_TIME_MS)
    interval = _int(content.get("interval"), _MIN_INTERVAL_MS, _MAX_INTERVAL_MS)
    version, armed = content.get("version"), content.get("armed", [])
    stopping = content.get("stopping", False)
    started = content.get("started")
    if started is not None and (started := _int(started, 1, _MAX_TIME_MS)) is None:
        return None
    if time is None or interval is None or not isinstance(stopping, bool):
        return None
    if not (isinstance(version, str) and _VERSION.fullmatch(version)):
        return None
    if not (isinstance(armed, list) and len(armed) <= MAX_ARMED):
        return None
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in armed):
        return None
    answers = _answers(content.get("answers", {}))
    if answers is None:
        return None
    return Heartbeat(
        member=sender,
        time=_EPOCH + timedelta(milliseconds=time),
        interval=timedelta(milliseconds=interval),
        version=version,
        armed=frozenset(armed),
        stopping=stopping,
        answers=answers,
        started=None if started is None else _EPOCH + timedelta(milliseconds=started),
    )


def _answers(raw: object) -> tuple[Answer, ...] | None:
    """The roll-call answers, sorted; ``None`` if any is malformed (whole or not at all)."""
    if not (isinstance(raw, Mapping) and len(raw) <= MAX_ANSWERS):
        return None
    found = []
    for run_key, answer in raw.items():
        if not (_short(run_key) and isinstance(answer, Mapping)):
            return None
        scenario, digest, state = (answer.get(k) for k in ("scenario", "digest", "state"))
        if not (_short(scenario) and isinstance(digest, str) and state in ANSWER_STATES):
            return None
        if digest and not _DIGEST.fullmatch(digest):
            return None
        found.append(Answer(run_key, scenario, digest, str(state)))
    return tuple(sorted(found))


def _short(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID


def _int(value: object, low: int, high: int) -> int | None:
    """``value`` if it is a whole number (not a bool) in [low, high]."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def sighting(heartbeat: Heartbeat, received_at: datetime, *, old: bool = False) -> Member:
    """The member as seen from a heartbeat this bot received at ``received_at``
    (on its own clock).

    The heartbeat counts from when it arrived, so members' clocks may disagree
    by up to one interval without effect. One whose own time is older than one
    interval on arrival — held back by federation — counts from its own time
    instead, so a stale heartbeat can never make a dead member look alive.
    So does an ``old`` one: made before this bot started listening (read from
    the room's state at start-up, perhaps a previous run's); its announced
    interval may be the idle one, so counting it from arrival would keep a dead
    member up for half an hour.
    """
    stale = old or received_at - heartbeat.time > heartbeat.interval
    seen_at = min(heartbeat.time, received_at) if stale else received_at
    return Member(
        user_id=heartbeat.member,
        seen_at=seen_at,
        interval=heartbeat.interval,
        armed=heartbeat.armed,
        stopping=heartbeat.stopping,
    )


def clock_skew(heartbeat: Heartbeat, received_at: datetime) -> timedelta:
    """How far the member's clock seems ahead of this bot's (for ``!crew``).

    It includes the delivery delay, so only large values mean a wrong clock.
    """
    return heartbeat.time - received_at


# --- the rate --------------------------------------------------------------------


def interval(
    *, base: timedelta, armed: bool, last_command: datetime | None, now: datetime
) -> timedelta:
    """How often to beat now: ``base`` (``heartbeat_seconds``) while something is
    armed or a control command was read within :data:`AWAKE_FOR`, else
    :data:`IDLE_INTERVAL` (never faster than ``base``)."""
    awake = last_command is not None and now - last_command < AWAKE_FOR
    return base if armed or awake else max(IDLE_INTERVAL, base)


def next_due(
    last: Heartbeat | None,
    wanted: Heartbeat,
    *,
    last_command: datetime | None = None,
) -> datetime:
    """When to publish ``wanted`` (built with ``time`` = now), given the ``last``
    heartbeat this member published.

    At once when there is none, when what it says changed (armed digests, a
    faster rate, stopping, roll-call answers), and when a control command was read since (the roll
    call); otherwise one interval after the last: ``wanted.interval``, but never
    later than the ``last.interval`` that heartbeat announced — the others count
    this member down from what it promised, so slowing down (idle again after a
    command) is announced when the faster beat was due, not ten minutes later.
    """
    now = wanted.time
    if (
        last is None
        or last.armed != wanted.armed
        or wanted.interval < last.interval
        or wanted.stopping != last.stopping
        or wanted.answers != last.answers
        or (last_command is not None and last_command > last.time)
    ):
        return now
    return last.time + min(wanted.interval, last.interval)


def missed(published: Iterable[datetime], at: datetime, base: timedelta) -> bool:
    """Whether this member's heartbeats were not reaching the room at ``at``:
    no heartbeat accepted by the homeserver in the three intervals before it.

    ``published`` are the times of this member's own accepted heartbeats (a
    few recent ones are enough). Then the others counted it down at ``at`` and
    may have covered for it, so it must look before sending.
    """
    before = [t for t in published if t <= at]
    return not before or at - max(before) > DOWN_AFTER_BEATS * base
