"""The benchmark's targets, judged from a results file (pure: no I/O).

These are goals for the benchmark, not tests: a missed target is reported, never
fails a build. Each is judged with :func:`benchmarks.stats.verdict` over its pairs
(or runs), so "met" means the pairs say so beyond the noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.stats import Verdict, spread, verdict


@dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    at_most: bool
    sizes: tuple[int, ...] | None  # room counts it is judged at; None: every one measured
    values: Callable[[Mapping[str, Any]], list[float]]  # from one size's summary
    unit: str  # "x" (a ratio to the ceiling) or "ms"


def _pair_values(key: str) -> Callable[[Mapping[str, Any]], list[float]]:
    return lambda size: [float(p[key]) for p in size["pairs"]]


def _first_lateness(size: Mapping[str, Any]) -> list[float]:
    return [float(p["blossom"]["first_lateness_ms"]) for p in size["pairs"]]


TARGETS = (
    Target(
        "Fan-out throughput ≥ 0.95 × the ceiling's (Blossom / ceiling, per pair)",
        0.95,
        False,
        (200, 1000),
        _pair_values("throughput_ratio"),
        "x",
    ),
    Target(
        "Last room, server stamp ≤ 1.1 × the ceiling's (per pair)",
        1.1,
        True,
        None,
        _pair_values("last_server_ratio"),
        "x",
    ),
    Target(
        "Last room, last reply ≤ 1.1 × the ceiling's (per pair)",
        1.1,
        True,
        None,
        _pair_values("last_client_ratio"),
        "x",
    ),
    Target("First room ≤ 25 ms after the instant", 25.0, True, None, _first_lateness, "ms"),
)

ABORT_TARGET_MS = 1000.0
ABORT_TARGET = "An !abort's first stop message ≤ 1 s after the command"


@dataclass(frozen=True)
class Judged:
    name: str
    where: str
    values: list[float]
    summary: dict[str, Any]
    verdict: Verdict
    unit: str


def judge_sizes(results: Sequence[Mapping[str, Any]]) -> list[Judged]:
    out: list[Judged] = []
    by_rooms = {int(r["rooms"]): r for r in results}
    for t in TARGETS:
        sizes = t.sizes if t.sizes is not None else tuple(sorted(by_rooms))
        for n in sizes:
            size = by_rooms.get(n)
            values = t.values(size) if size is not None else []
            out.append(
                Judged(
                    t.name,
                    f"{n} rooms",
                    values,
                    spread(values),
                    verdict(values, t.threshold, at_most=t.at_most),
                    t.unit,
                )
            )
    return out


def _first_stops(row: Mapping[str, Any]) -> list[float]:
    """One in-flight level's abort runs: ms from the command to the first room told."""
    return [float(a["first_stop_ms"]) for a in row["aborts"]]


def judge_abort(in_flight: Mapping[str, Any] | None, level: int) -> Judged:
    """The abort target at the in-flight level the bot runs with (``level``)."""
    where = f"{level} in flight"
    values: list[float] = []
    if in_flight:
        where = f"{in_flight['rooms']} rooms, {level} in flight"
        for row in in_flight["levels"]:
            if int(row["max_in_flight"]) == level:
                values = _first_stops(row)
    return Judged(
        ABORT_TARGET,
        where,
        values,
        spread(values),
        verdict(values, ABORT_TARGET_MS, at_most=True),
        "ms",
    )


def judge(report: Mapping[str, Any]) -> list[Judged]:
    level = int(report["settings"]["bot_max_in_flight"])
    return [*judge_sizes(report["results"]), judge_abort(report.get("in_flight"), level)]


@dataclass(frozen=True)
class LevelReading:
    """One in-flight level against the bot's own: the abort target's verdict, and
    its fan-out (last stamp) as the ratio of medians to the bot's level, with
    whether the two levels' ranges overlap (then the difference is within the noise)."""

    level: int
    abort: Verdict
    abort_first_ms: float | None
    fanout_ms: float | None
    fanout_vs_bot: float | None
    overlaps_bot: bool


def _median(row: Mapping[str, Any], key: str) -> float | None:
    value = row[key]["median"]
    return None if value is None else float(value)


def read_in_flight(in_flight: Mapping[str, Any], bot_level: int) -> list[LevelReading]:
    """Each level of the in-flight table read against the bot's ``max_in_flight``."""
    rows = {int(r["max_in_flight"]): r for r in in_flight["levels"]}
    own = rows.get(bot_level)
    out: list[LevelReading] = []
    for level, row in rows.items():
        fan = _median(row, "fanout_server_ms")
        ratio = overlap = None
        if own is not None and fan is not None and (base := _median(own, "fanout_server_ms")):
            ratio = round(fan / base, 3)
            mine, theirs = own["fanout_server_ms"], row["fanout_server_ms"]
            overlap = not (theirs["max"] < mine["min"] or theirs["min"] > mine["max"])
        out.append(
            LevelReading(
                level,
                verdict(_first_stops(row), ABORT_TARGET_MS, at_most=True),
                _median(row, "abort_first_stop_ms"),
                fan,
                ratio,
                bool(overlap),
            )
        )
    return out


def safest_fast_level(readings: Sequence[LevelReading]) -> LevelReading | None:
    """The level the table argues for: of those that meet the abort target, the
    fastest fan-out; if none meets it, the one whose first stop message comes
    soonest (median). Stopping a crowd in time comes before a faster fan-out."""
    met = [r for r in readings if r.abort == "met" and r.fanout_ms is not None]
    if met:
        return min(met, key=lambda r: r.fanout_ms or 0.0)
    timed = [r for r in readings if r.abort_first_ms is not None]
    return min(timed, key=lambda r: r.abort_first_ms or 0.0) if timed else None
