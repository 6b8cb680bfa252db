"""Retry policy for requests: what an error means and how long to wait; and
the one retry loop (:func:`retry_call`) every caller but the dispatcher uses
(notices, joins, the sync, cross-signing). The dispatcher walks its ledger
states between attempts and calls :meth:`RetryPolicy.decide` itself.

Modelled on matrix-hookshot's retry filter: only errors that can succeed later
are retried. 429 waits as the server says; 5xx and network errors back off
exponentially with full jitter, capped; any other 4xx fails the room at once.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SendFailure:
    """What went wrong with one request, in transport-neutral terms."""

    http_status: int | None  # None: no HTTP answer (connection refused, timeout)
    errcode: str | None = None
    retry_after_ms: int | None = None
    message: str = ""
    # What a person can do about it, when the bot knows (ids only, no content).
    advice: str = ""

    def describe(self) -> str:
        if self.http_status is None:
            said = f"network error ({self.message or 'no answer'})"
        else:
            code = f" {self.errcode}" if self.errcode else ""
            said = f"HTTP {self.http_status}{code}"
        return f"{said}; {self.advice}" if self.advice else said


class RequestFailed(Exception):
    """A request failed; ``failure`` says how, in transport-neutral terms."""

    def __init__(self, failure: SendFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


@dataclass(frozen=True)
class RetryAfter:
    delay: timedelta
    reason: str


@dataclass(frozen=True)
class GiveUp:
    reason: str


Decision = RetryAfter | GiveUp


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 0.5
    cap_s: float = 10.0
    # 429 without a retry_after_ms: wait this long.
    default_rate_limit_s: float = 2.0
    # False: every failure is worth another try (the sync loop: a 4xx there is
    # a server in trouble or a token problem an operator fixes, never "give up").
    give_up_on_client_errors: bool = True

    def decide(
        self,
        failure: SendFailure,
        *,
        attempt: int,
        now: datetime,
        deadline: datetime | None,
        rng: random.Random,
    ) -> Decision:
        """``attempt`` counts the failed attempts so far (1 after the first)."""
        if is_rate_limited(failure):
            delay_s = (
                failure.retry_after_ms / 1000
                if failure.retry_after_ms is not None
                else self.default_rate_limit_s
            )
            reason = "rate limited"
        elif is_transient(failure) or not self.give_up_on_client_errors:
            # Full jitter (AWS architecture blog): spreads retries of many rooms.
            # The exponent is bounded: with no deadline a room may retry for hours,
            # and 2 ** 1024 no longer converts to a float.
            ceiling = min(self.cap_s, self.base_s * 2 ** min(max(0, attempt - 1), 60))
            delay_s = rng.uniform(0, ceiling)
            reason = failure.describe()
        else:
            return GiveUp(failure.describe())
        delay = timedelta(seconds=max(0.0, delay_s))
        if deadline is not None and now + delay > deadline:
            return GiveUp(f"{failure.describe()}; gave up at the late policy's deadline")
        return RetryAfter(delay, reason)


def is_rate_limited(failure: SendFailure) -> bool:
    return failure.http_status == 429 or failure.errcode == "M_LIMIT_EXCEEDED"


def is_transient(failure: SendFailure) -> bool:
    if failure.http_status is None:
        return True
    # 408 request timeout and 5xx (incl. 502/503 from a proxy in front of a
    # restarting homeserver) can succeed later.
    return failure.http_status >= 500 or failure.http_status == 408


async def retry_call(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    sleep: Callable[[timedelta], Awaitable[None]],
    now: Callable[[], datetime],
    max_attempts: int | None,
    rng: random.Random | None = None,
    max_delay: timedelta | None = None,
    on_retry: Callable[[SendFailure, timedelta, int], None] | None = None,
) -> T:
    """``call()`` until it returns, retrying what ``policy`` says may succeed
    later, at most ``max_attempts`` times (None: for ever). ``call`` signals a
    failure by raising :class:`RequestFailed`; the last one is re-raised when
    the policy gives up or the attempts run out. ``on_retry(failure, delay,
    attempt)`` is told of each wait (for the log)."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except RequestFailed as err:
            decision = policy.decide(
                err.failure, attempt=attempt, now=now(), deadline=None, rng=rng
            )
            if isinstance(decision, GiveUp) or (
                max_attempts is not None and attempt >= max_attempts
            ):
                raise
            delay = decision.delay if max_delay is None else min(decision.delay, max_delay)
            if on_retry is not None:
                on_retry(err.failure, delay, attempt)
            await sleep(delay)
