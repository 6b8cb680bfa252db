"""Which pod a private participant is assigned to. Pure; the key is a secret.

The rule (docs/organisers.md, "Pods"):

1. A pod is *open* while it has fewer private participants than its
   ``capacity`` (no capacity: always open). No open pod: the city is full.
2. The newcomer goes to one of the open pods with the fewest participants —
   the emptiest, so sizes stay balanced and no spot is crowded while another
   stays empty.
3. Among equally empty pods the run's *level order* decides: for each size
   ``n`` the pods are ordered by HMAC-SHA256(run key, city, n, pod id). The
   order is the same for everyone who joins at that size, secret (an
   infiltrator cannot predict or pick a pod), and different for every run.

(Private participants join before any run is armed, so the bot keeps one key
per *scenario* — ``store.participants.pod_key``, made at its first ``!join``,
deleted by ``!purge`` — and "run" below means that span.)

Guarantees, for one city of one run:

* **Balance.** While nobody has left, the sizes of the open pods never differ
  by more than one. A join never widens the spread; people leaving can, and
  the next joins refill the emptiest pods first.
* **Full.** :func:`assign_pod` returns ``None`` exactly when every pod is at
  its capacity.
* **Same pod on return.** Someone who leaves (``!stop``) and joins again,
  with nobody else joining or leaving in between, lands in the pod they
  left, as long as nobody else has left for good before (the sizes are
  still those that joins alone reach; returns like this one keep them so).
  Why: the pod they left is then again among the emptiest open pods, and it
  had been filled at that size ahead of every pod that is now as empty.

What it does not promise, because balance wins where the two conflict: if
others left in the meantime, or joined and took the freed place, the returner
may land in another pod. The bot keeps no list of who left; only the current
participants' pods and the per-run key. Ordering among equally empty pods by
the *person's* hash (HMAC of key and user id) would break the third guarantee:
the freed place can then lose to another pod that person happens to rank higher.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

KEY_BYTES = 32


class AssignmentKey:
    """The per-run secret of the level order. Never printed: ``repr`` and ``str``
    hide it, so a key that reaches a log line or an error says nothing."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("an assignment key needs at least 16 bytes")
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> AssignmentKey:
        """A fresh random key, for a new run (store it with the run: a restart
        must find the same order)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @property
    def secret(self) -> bytes:
        """The key's bytes, for the store only."""
        return self._secret

    def __repr__(self) -> str:
        return "AssignmentKey(<secret>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AssignmentKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._secret).digest())

    def rank(self, city_id: str, size: int, pod_id: str) -> bytes:
        message = f"{city_id}\0{size}\0{pod_id}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()


@dataclass(frozen=True)
class PodLoad:
    """One pod as the assignment sees it."""

    pod_id: str
    members: int
    """Private participants assigned to it now."""
    capacity: int | None = None
    """The pod's ``capacity``; None: no limit."""

    @property
    def open(self) -> bool:
        return self.capacity is None or self.members < self.capacity


def assign_pod(key: AssignmentKey, city_id: str, pods: Sequence[PodLoad]) -> str | None:
    """The pod a newcomer to ``city_id`` joins, or ``None`` when every pod is full.

    ``pods``: every pod of the city with its current size (the rule above).
    """
    open_pods = [p for p in pods if p.open]
    if not open_pods:
        return None
    size = min(p.members for p in open_pods)
    emptiest = [p for p in open_pods if p.members == size]
    return min(emptiest, key=lambda p: key.rank(city_id, size, p.pod_id)).pod_id
