"""The time axis of the plan picture: where each instant sits, which gaps are cut. Pure.

Real plans mix days and minutes, so gaps are drawn to scale only up to a width; a
longer gap is cut (drawn narrow, with a break mark). See :mod:`bot.scenario.svg`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

MIN_GAP_PX = 80.0  # distinct instants never closer than this, so labels stay apart
CUT_FACTOR = 6.0  # a gap this many times longer than the median gap is cut
BREAK_PX = 110.0  # the drawn width of a cut gap


@dataclass(frozen=True)
class Axis:
    """Where each distinct instant sits on the x axis, and which gaps are cut."""

    xs: dict[datetime, float]
    breaks: list[tuple[float, float, timedelta]]  # (x0, x1, real length) of cut gaps


def layout_axis(instants: list[datetime], x0: float, x1: float) -> Axis:
    """Place the sorted distinct ``instants`` between ``x0`` and ``x1``.

    A gap longer than CUT_FACTOR times the median gap is *cut*: drawn BREAK_PX
    wide with a break mark. The other gaps share the remaining width in
    proportion to their length, none narrower than MIN_GAP_PX.
    """
    if not instants:
        return Axis({}, [])
    if len(instants) == 1:
        return Axis({instants[0]: (x0 + x1) / 2}, [])
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(instants)]
    median = sorted(gaps)[len(gaps) // 2]
    cut = [median > 0 and g > CUT_FACTOR * median for g in gaps]
    widths = [BREAK_PX if c else 0.0 for c in cut]
    # Proportional share of what is left; gaps that would be too narrow get the
    # minimum, and the share is recomputed for the rest until it settles.
    fixed = [c for c in cut]
    for _ in range(len(gaps) + 1):
        free = [i for i, f in enumerate(fixed) if not f]
        room = (x1 - x0) - sum(widths[i] for i, f in enumerate(fixed) if f)
        seconds = sum(gaps[i] for i in free)
        k = room / seconds if seconds > 0 else 0.0
        narrow = [i for i in free if gaps[i] * k < MIN_GAP_PX]
        for i in free:
            widths[i] = max(gaps[i] * k, MIN_GAP_PX)
        if not narrow:
            break
        for i in narrow:
            fixed[i] = True
    # Too many instants for the width: squeeze everything evenly.
    total = sum(widths)
    if total > x1 - x0:
        widths = [w * (x1 - x0) / total for w in widths]
    x = x0 + max(0.0, (x1 - x0) - sum(widths)) / 2
    xs = {instants[0]: x}
    breaks: list[tuple[float, float, timedelta]] = []
    for i, w in enumerate(widths):
        if cut[i]:
            breaks.append((x, x + w, instants[i + 1] - instants[i]))
        x += w
        xs[instants[i + 1]] = x
    return Axis(xs, breaks)
