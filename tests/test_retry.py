"""The pure retry policy: what an error means, how long to wait, when to give up."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.retry import (
    GiveUp,
    RetryAfter,
    RetryPolicy,
    SendFailure,
    is_rate_limited,
    is_transient,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_s=0.5, cap_s=10.0, default_rate_limit_s=2.0)


def decide(
    failure: SendFailure,
    *,
    attempt: int = 1,
    deadline: datetime | None = None,
    seed: int = 0,
    policy: RetryPolicy = POLICY,
) -> RetryAfter | GiveUp:
    return policy.decide(
        failure, attempt=attempt, now=NOW, deadline=deadline, rng=random.Random(seed)
    )


def test_429_waits_as_the_server_says() -> None:
    d = decide(SendFailure(429, "M_LIMIT_EXCEEDED", retry_after_ms=1234))
    assert d == RetryAfter(timedelta(milliseconds=1234), "rate limited")


def test_429_without_retry_after_uses_the_default() -> None:
    d = decide(SendFailure(429, "M_LIMIT_EXCEEDED"))
    assert isinstance(d, RetryAfter)
    assert d.delay == timedelta(seconds=2)


def test_limit_exceeded_errcode_counts_even_without_429() -> None:
    # Some proxies turn the status into 400 but keep the body.
    assert is_rate_limited(SendFailure(400, "M_LIMIT_EXCEEDED"))
    d = decide(SendFailure(400, "M_LIMIT_EXCEEDED", retry_after_ms=500))
    assert d == RetryAfter(timedelta(milliseconds=500), "rate limited")


def test_429_wait_is_not_capped_by_the_backoff_cap() -> None:
    """The server's word wins over our cap: retrying earlier only earns another 429."""
    d = decide(SendFailure(429, retry_after_ms=60_000), attempt=20)
    assert isinstance(d, RetryAfter) and d.delay == timedelta(seconds=60)


def test_negative_retry_after_is_zero() -> None:
    d = decide(SendFailure(429, retry_after_ms=-5))
    assert isinstance(d, RetryAfter) and d.delay == timedelta(0)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, None])
def test_transient_errors_retry(status: int | None) -> None:
    failure = SendFailure(status, message="ClientConnectorError")
    assert is_transient(failure)
    d = decide(failure)
    assert isinstance(d, RetryAfter)
    assert timedelta(0) <= d.delay <= timedelta(seconds=0.5)
    assert d.reason == failure.describe()


@pytest.mark.parametrize(
    ("status", "errcode"),
    [
        (403, "M_FORBIDDEN"),
        (400, "M_BAD_JSON"),
        (404, "M_NOT_FOUND"),
        (413, "M_TOO_LARGE"),
        (401, "M_UNKNOWN_TOKEN"),
    ],
)
def test_other_4xx_give_up_at_once(status: int, errcode: str) -> None:
    failure = SendFailure(status, errcode)
    assert not is_transient(failure) and not is_rate_limited(failure)
    d = decide(failure)
    assert d == GiveUp(f"HTTP {status} {errcode}")


@given(attempt=st.integers(min_value=1, max_value=200), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_capped(attempt: int, seed: int) -> None:
    d = decide(SendFailure(503), attempt=attempt, seed=seed)
    assert isinstance(d, RetryAfter)
    ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
    assert 0 <= d.delay.total_seconds() <= ceiling


def test_backoff_ceiling_grows_exponentially() -> None:
    """The largest delay seen over many draws tracks base * 2^(attempt-1), up to the cap."""

    def largest(attempt: int) -> float:
        return max(
            d.delay.total_seconds()
            for seed in range(300)
            if isinstance(d := decide(SendFailure(502), attempt=attempt, seed=seed), RetryAfter)
        )

    assert largest(1) == pytest.approx(0.5, rel=0.05)
    assert largest(3) == pytest.approx(2.0, rel=0.05)
    assert largest(5) == pytest.approx(8.0, rel=0.05)
    assert largest(9) == pytest.approx(10.0, rel=0.05)  # capped


def test_jitter_spreads_rooms() -> None:
    delays = {
        d.delay
        for seed in range(50)
        if isinstance(d := decide(SendFailure(503), attempt=4, seed=seed), RetryAfter)
    }
    assert len(delays) > 40


def test_deadline_gives_up_when_the_wait_would_pass_it() -> None:
    failure = SendFailure(429, retry_after_ms=5_000)
    assert isinstance(decide(failure, deadline=NOW + timedelta(seconds=6)), RetryAfter)
    d = decide(failure, deadline=NOW + timedelta(seconds=4))
    assert isinstance(d, GiveUp)
    assert "deadline" in d.reason and "429" in d.reason


def test_deadline_exactly_reached_still_retries() -> None:
    d = decide(SendFailure(429, retry_after_ms=5_000), deadline=NOW + timedelta(seconds=5))
    assert isinstance(d, RetryAfter)


def test_deadline_already_passed_gives_up_on_transient() -> None:
    d = decide(SendFailure(None, message="timeout"), deadline=NOW - timedelta(seconds=1))
    assert isinstance(d, GiveUp)
    assert d.reason.startswith("network error (timeout)")


def test_no_deadline_retries_forever() -> None:
    d = decide(SendFailure(503), attempt=10_000)
    assert isinstance(d, RetryAfter)


def test_describe() -> None:
    assert SendFailure(None).describe() == "network error (no answer)"
    assert SendFailure(None, message="ClientOSError").describe() == "network error (ClientOSError)"
    assert SendFailure(502).describe() == "HTTP 502"
    assert SendFailure(403, "M_FORBIDDEN", message="secret text").describe() == (
        "HTTP 403 M_FORBIDDEN"
    )


# -- retry_call: the one retry loop -----------------------------------------------------


async def _run_retry(
    failures: list[SendFailure], policy: RetryPolicy, max_attempts: int | None
) -> tuple[str | None, list[float], int]:
    from bot.retry import RequestFailed, retry_call

    slept: list[float] = []
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise RequestFailed(failures.pop(0))
        return "ok"

    async def sleep(d: timedelta) -> None:
        slept.append(d.total_seconds())

    try:
        got: str | None = await retry_call(
            call, policy=policy, sleep=sleep, now=lambda: NOW,
            max_attempts=max_attempts, rng=random.Random(1),
        )
    except RequestFailed:
        got = None
    return got, slept, calls


async def test_retry_call_waits_as_the_server_says_then_returns() -> None:
    got, slept, calls = await _run_retry(
        [SendFailure(429, retry_after_ms=1500), SendFailure(502)], POLICY, 6
    )
    assert got == "ok" and calls == 3 and slept[0] == 1.5 and 0 <= slept[1] <= 1.0


async def test_retry_call_gives_up_on_a_client_error_or_after_max_attempts() -> None:
    got, slept, calls = await _run_retry([SendFailure(403)], POLICY, 6)
    assert got is None and calls == 1 and slept == []
    got, slept, calls = await _run_retry([SendFailure(None)] * 5, POLICY, 3)
    assert got is None and calls == 3 and len(slept) == 2


async def test_retry_call_for_ever_policy_retries_client_errors() -> None:
    forever = RetryPolicy(base_s=1.0, cap_s=30.0, give_up_on_client_errors=False)
    got, slept, calls = await _run_retry([SendFailure(401)] * 4, forever, None)
    assert got == "ok" and calls == 5 and all(0 <= s <= 30 for s in slept)
