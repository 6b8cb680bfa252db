"""Assigning private participants to pods (bot.scenario.assign), as properties:
balanced within one while people only join, "full" exactly past the total
capacity, and the same pod after leaving and joining again."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.scenario.assign import AssignmentKey, PodLoad, assign_pod

PODS = ("mongkok", "causeway", "shatin", "tsuenwan")


class City:
    """The bot's view of one city: who is in which pod now (never who left)."""

    def __init__(self, key: AssignmentKey, capacities: dict[str, int | None]) -> None:
        self.key = key
        self.capacities = capacities
        self.members: dict[str, str] = {}  # user → pod

    def loads(self) -> list[PodLoad]:
        sizes = {pod: 0 for pod in self.capacities}
        for pod in self.members.values():
            sizes[pod] += 1
        return [PodLoad(p, sizes[p], cap) for p, cap in self.capacities.items()]

    def join(self, user: str) -> str | None:
        pod = assign_pod(self.key, "hk", self.loads())
        if pod is not None:
            self.members[user] = pod
        return pod

    def leave(self, user: str) -> None:
        del self.members[user]

    def spread(self) -> int:
        open_sizes = [p.members for p in self.loads() if p.open]
        return max(open_sizes) - min(open_sizes) if open_sizes else 0


keys = st.binary(min_size=32, max_size=32).map(AssignmentKey)


@settings(max_examples=200, deadline=None)
@given(keys)
def test_forty_over_four_pods_balanced_then_full(key: AssignmentKey) -> None:
    city = City(key, dict.fromkeys(PODS, 10))
    for n in range(40):
        assert city.join(f"@u{n}:example.org") is not None
        assert city.spread() <= 1, city.loads()  # balanced within one at every step
    assert sorted(p.members for p in city.loads()) == [10, 10, 10, 10]
    assert city.join("@late:example.org") is None  # past the total capacity: full
    assert city.join("@later:example.org") is None


@settings(max_examples=200, deadline=None)
@given(keys, st.lists(st.integers(1, 30) | st.none(), min_size=2, max_size=5), st.integers(0, 120))
def test_balanced_within_one_with_any_capacities(
    key: AssignmentKey, capacities: list[int | None], joins: int
) -> None:
    city = City(key, {f"p{i}": cap for i, cap in enumerate(capacities)})
    total = None if None in capacities else sum(c for c in capacities if c is not None)
    for n in range(joins):
        pod = city.join(f"@u{n}:example.org")
        assert (pod is None) == (total is not None and n >= total)
        assert city.spread() <= 1
        assert all(p.capacity is None or p.members <= p.capacity for p in city.loads())


@settings(max_examples=300, deadline=None)
@given(
    keys,
    st.integers(1, 40),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
    st.sampled_from([10, 12, None]),
)
def test_the_same_pod_after_stop_and_join(
    key: AssignmentKey, joined: int, leavers: list[int], capacity: int | None
) -> None:
    city = City(key, dict.fromkeys(PODS, capacity))
    for n in range(joined):
        city.join(f"@u{n}:example.org")
    # Anyone, any number of times: !stop, then !join again with nobody in between.
    for pick in leavers:
        user = sorted(city.members)[pick % len(city.members)]
        before = city.members[user]
        city.leave(user)
        assert city.join(user) == before
        assert city.spread() <= 1


def test_the_order_differs_between_runs_and_is_not_the_file_order() -> None:
    firsts = set()
    for seed in range(40):
        city = City(AssignmentKey(random.Random(seed).randbytes(32)), dict.fromkeys(PODS, 10))
        firsts.add(city.join("@first:example.org"))
    assert firsts == set(PODS)  # an infiltrator cannot know where the first joiner goes


def test_the_key_never_shows_itself() -> None:
    secret = bytes(range(32))
    key = AssignmentKey(secret)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert secret.hex() not in text and "\\x" not in text and "<secret>" in text
    assert key == AssignmentKey(secret) and key.secret == secret
    assert AssignmentKey.generate() != AssignmentKey.generate()
    with pytest.raises(ValueError):
        AssignmentKey(b"short")
