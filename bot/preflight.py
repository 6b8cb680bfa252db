"""Pre-flight: will each instant's fan-out finish before the next one is due? Pure.

A homeserver sends a bot's messages at some sustained rate (an exempt bot on a
small Synapse: tens of messages a second; a bot under Synapse's default
``rc_message`` of 0.2/s with a burst of 10: one message every five seconds once
the burst is spent). ``!arm`` uses :func:`fanout_warnings` to say, before
anything is scheduled, which stages would still be reaching rooms when the next
stage is due. The numbers come from the configuration (or a measured rate); the
model is a token bucket, the same as Synapse's rate limiter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.policy import format_duration

PlanItem = tuple[datetime, int] | tuple[datetime, int, int]
"""(instant, rooms) or (instant, rooms, messages per room). Items sharing an
instant (cities due together) are one fan-out."""


def fanout_estimate(
    rooms_per_instant: int, msgs_per_room: int, msgs_per_second: float, *, burst: int = 0
) -> timedelta:
    """How long one instant's fan-out takes at ``msgs_per_second``, the first
    ``burst`` messages being free (a full rate-limit bucket)."""
    if msgs_per_second <= 0:
        raise ValueError("msgs_per_second must be positive")
    if rooms_per_instant < 0 or msgs_per_room < 0 or burst < 0:
        raise ValueError("counts must not be negative")
    messages = rooms_per_instant * msgs_per_room
    return timedelta(seconds=max(0, messages - burst) / msgs_per_second)


@dataclass(frozen=True)
class FanoutWarning:
    instant: datetime
    messages: int
    finishes: datetime  # when the last of this instant's messages is expected out
    next_instant: datetime | None  # the next instant it runs into (None: too slow anyway)
    msgs_per_second: float
    burst: int

    @property
    def takes(self) -> timedelta:
        return self.finishes - self.instant

    def __str__(self) -> str:
        rate = f"{self.msgs_per_second:g} msg/s" + (f", burst {self.burst}" if self.burst else "")
        head = (
            f"{self.instant:%Y-%m-%d %H:%M:%SZ}: {self.messages} messages take about "
            f"{format_duration(self.takes)} at {rate}"
        )
        if self.next_instant is None:
            return f"{head}; the last room hears it {format_duration(self.takes)} late."
        gap = self.next_instant - self.instant
        return (
            f"{head}, but the next stage is due {format_duration(gap)} later "
            f"({self.next_instant:%H:%M:%SZ}): rooms at the end of the fan-out will get "
            "the two close together or out of step. Exempt the bot from rate limits, "
            "or space the stages."
        )


def _grouped(plan: Iterable[PlanItem], msgs_per_room: int) -> list[tuple[datetime, int]]:
    messages: defaultdict[datetime, int] = defaultdict(int)
    for item in plan:
        instant, rooms = item[0], item[1]
        per_room = item[2] if len(item) == 3 else msgs_per_room
        if rooms < 0 or per_room < 0:
            raise ValueError("counts must not be negative")
        messages[instant] += rooms * per_room
    return sorted(messages.items())


def fanout_warnings(
    plan: Iterable[PlanItem],
    msgs_per_second: float,
    *,
    burst: int = 0,
    msgs_per_room: int = 1,
    too_slow: timedelta | None = None,
) -> list[FanoutWarning]:
    """Instants whose fan-out is still going when the next instant is due (or,
    with ``too_slow``, takes longer than that), in time order.

    The bot's messages are modelled as one token bucket of ``burst`` tokens
    refilled at ``msgs_per_second`` (full at the first instant), so a backlog
    left by one instant delays the next, as it does on the homeserver. An
    exempt bot has no burst: pass the measured fan-out rate and ``burst=0``.
    """
    if msgs_per_second <= 0:
        raise ValueError("msgs_per_second must be positive")
    if burst < 0:
        raise ValueError("burst must not be negative")
    grouped = _grouped(plan, msgs_per_room)
    warnings: list[FanoutWarning] = []
    tokens = float(burst)
    free_at: datetime | None = None  # when the previous fan-out's last message left
    last: datetime | None = None  # when the bucket was last brought up to date
    for i, (instant, messages) in enumerate(grouped):
        if last is not None:
            refill = max(0.0, (instant - last).total_seconds()) * msgs_per_second
            tokens = min(float(burst), tokens + refill)
        start = instant if free_at is None or free_at <= instant else free_at
        if start > instant:  # a backlog: the bucket was empty until then
            tokens = 0.0
        free = min(tokens, float(messages))
        tokens -= free
        finishes = start + timedelta(seconds=(messages - free) / msgs_per_second)
        free_at, last = finishes, finishes
        nxt = grouped[i + 1][0] if i + 1 < len(grouped) else None
        overlaps = nxt is not None and finishes > nxt
        slow = too_slow is not None and finishes - instant > too_slow
        if messages and (overlaps or slow):
            warnings.append(
                FanoutWarning(
                    instant=instant,
                    messages=messages,
                    finishes=finishes,
                    next_instant=nxt if overlaps else None,
                    msgs_per_second=msgs_per_second,
                    burst=burst,
                )
            )
    return warnings
