"""Pre-flight fan-out estimates and warnings (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.preflight import fanout_estimate, fanout_warnings

T0 = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_estimate_at_a_sustained_rate() -> None:
    assert fanout_estimate(200, 1, 50.0) == timedelta(seconds=4)
    assert fanout_estimate(100, 2, 50.0) == timedelta(seconds=4)
    assert fanout_estimate(0, 2, 50.0) == timedelta(0)


def test_estimate_with_synapse_default_limits() -> None:
    # rc_message 0.2/s, burst 10: 200 rooms -> 190 messages after the burst, 950 s.
    assert fanout_estimate(200, 1, 0.2, burst=10) == timedelta(seconds=950)
    assert fanout_estimate(5, 1, 0.2, burst=10) == timedelta(0)


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_estimate_rejects_a_non_positive_rate(rate: float) -> None:
    with pytest.raises(ValueError):
        fanout_estimate(10, 1, rate)


def test_no_warning_when_each_fanout_fits() -> None:
    plan = [(at(0), 200), (at(60), 200), (at(120), 200)]
    assert fanout_warnings(plan, 50.0) == []


def test_cities_due_together_are_one_fanout() -> None:
    # Two cities of 150 rooms at the same instant: 300 messages at 50/s = 6 s > 5 s.
    plan = [(at(0), 150), (at(0), 150), (at(5), 10)]
    (w,) = fanout_warnings(plan, 50.0)
    assert w.instant == at(0) and w.messages == 300
    assert w.next_instant == at(5) and w.takes == timedelta(seconds=6)
    assert "300 messages take about 6.0s at 50 msg/s" in str(w)
    assert "next stage is due 5.0s later" in str(w)


def test_messages_per_room_counts_location_parts() -> None:
    plan = [(at(0), 100, 2), (at(3), 100)]
    (w,) = fanout_warnings(plan, 50.0)
    assert w.messages == 200 and w.takes == timedelta(seconds=4)
    assert fanout_warnings([(at(0), 100), (at(3), 100)], 50.0) == []
    assert len(fanout_warnings([(at(0), 100), (at(3), 100)], 50.0, msgs_per_room=2)) == 1


def test_default_rate_limits_make_200_rooms_take_minutes() -> None:
    plan = [(at(0), 200), (at(600), 200)]
    (w,) = fanout_warnings(plan, 0.2, burst=10)
    assert w.takes == timedelta(seconds=950)
    assert "burst 10" in str(w)


def test_a_backlog_delays_the_next_instant() -> None:
    # 1 msg/s, no burst: 10 at t=0 end at 10 s; 10 at t=5 start at 10 and end at 20,
    # which runs into t=15.
    plan = [(at(0), 10), (at(5), 10), (at(15), 1)]
    warnings = fanout_warnings(plan, 1.0)
    assert [w.instant for w in warnings] == [at(0), at(5)]
    assert warnings[1].finishes == at(20)


def test_the_bucket_refills_between_instants() -> None:
    # Burst 10 at 1 msg/s: 10 free at t=0; by t=100 the bucket is full again.
    plan = [(at(0), 10), (at(100), 10), (at(101), 1)]
    assert fanout_warnings(plan, 1.0, burst=10) == []
    # Only 5 s later: 5 tokens back, 5 more messages take 5 s, past t=106.
    plan = [(at(0), 10), (at(5), 10), (at(6), 1)]
    (w,) = fanout_warnings(plan, 1.0, burst=10)
    assert w.instant == at(5) and w.finishes == at(10)


def test_too_slow_warns_for_the_last_stage_too() -> None:
    (w,) = fanout_warnings([(at(0), 1000)], 50.0, too_slow=timedelta(seconds=10))
    assert w.next_instant is None and w.takes == timedelta(seconds=20)
    assert "hears it 20s late" in str(w)


def test_plan_order_does_not_matter() -> None:
    plan = [(at(5), 10), (at(0), 300)]
    assert [w.instant for w in fanout_warnings(plan, 50.0)] == [at(0)]


@given(
    st.lists(st.tuples(st.integers(0, 3600), st.integers(0, 500)), min_size=1, max_size=12),
    st.floats(0.05, 500),
    st.integers(0, 50),
)
def test_warnings_are_exactly_the_overlapping_instants(
    items: list[tuple[int, int]], rate: float, burst: int
) -> None:
    plan = [(at(s), rooms) for s, rooms in items]
    warnings = fanout_warnings(plan, rate, burst=burst)
    instants = sorted({at(s) for s, _ in items})
    for w in warnings:
        assert w.next_instant is not None and w.finishes > w.next_instant
        assert w.next_instant == instants[instants.index(w.instant) + 1]
    # With no burst and no backlog, one instant's fan-out is the plain estimate.
    if burst == 0 and len(instants) == 1:
        total = sum(rooms for _, rooms in items)
        assert warnings == []
        assert fanout_estimate(total, 1, rate) >= timedelta(0)
