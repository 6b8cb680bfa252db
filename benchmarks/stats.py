"""Statistics for paired, noisy measurements (pure: no I/O).

The homeserver's own speed moves between repeats on one machine (on 2 shared cores
the ceiling has moved by a third from one repeat to the next), so one number per
side says little. The benchmark therefore measures in pairs (the ceiling, then
Blossom, on the same rooms, one right after the other) and judges each target from
the pairs:

- **met** when so many pairs meet it that a coin toss would rarely do as well: with
  ``n`` pairs of which ``k`` meet it, the chance of ``k`` or more heads in ``n``
  fair tosses is at most 5% (a one-sided sign test). With 5 pairs: all 5.
- **missed** likewise the other way: ``k`` or fewer heads at most 5% (5 pairs: none).
- **within the noise** otherwise: the pairs fall on both sides of the target (the
  target lies inside the pairs' range) too evenly to say which side it is on.

The sign test needs no assumption about how the noise is distributed, which on a
shared machine is anything but normal. It cannot say "met" with fewer than 5 pairs
(4 out of 4 happens 1 time in 16 by chance): fewer pairs are "within the noise"
unless every value is on one side *and* there are enough of them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Literal

Verdict = Literal["met", "missed", "within the noise", "not measured"]

SIGNIFICANCE = 0.05


def spread(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """The median, range and count of ``values`` (every value kept, rounded)."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": round(float(statistics.median(clean)), digits),
        "min": round(min(clean), digits),
        "max": round(max(clean), digits),
        "n": len(clean),
        "values": [round(v, digits) for v in clean],
    }


def ratio_of_medians(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    if not numerators or not denominators:
        return None
    below = float(statistics.median(denominators))
    if below == 0:
        return None
    return round(float(statistics.median(numerators)) / below, 3)


def _tail_at_least(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / float(2**n)


def verdict(values: Sequence[float], target: float, *, at_most: bool) -> Verdict:
    """Whether ``values`` (one per pair or run) meet ``target``: each value meets it
    when ``value <= target`` (``at_most``) or ``value >= target`` (otherwise).
    See the module docstring for the rule."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(clean)
    if n == 0:
        return "not measured"
    k = sum(1 for v in clean if (v <= target if at_most else v >= target))
    if _tail_at_least(k, n) <= SIGNIFICANCE:
        return "met"
    if _tail_at_least(n - k, n) <= SIGNIFICANCE:
        return "missed"
    return "within the noise"


def pairs_needed() -> int:
    """The fewest pairs that can give "met" or "missed" at all."""
    n = 1
    while _tail_at_least(n, n) > SIGNIFICANCE:
        n += 1
    return n
