"""What one room count's pairs and one in-flight level's runs say (pure: no I/O).

A *pair* is the ceiling's fan-out and Blossom's, on the same rooms with the same
message, one right after the other. Both sides are measured to the same two end
points from their own start:

- **server**: the last event's ``origin_server_ts`` (when the homeserver created
  the last room's event);
- **client**: the last reply (when the sender knows every room has it).

The ceiling's start is its first request. Blossom's is the instant: it sends its
first request a few milliseconds after it (one read and one write for all
cities), so those milliseconds are charged to Blossom, never to the ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from benchmarks.stats import ratio_of_medians, spread


def pair_record(ceiling: Any, blossom: Any) -> dict[str, Any]:
    """One pair (a ``Fanout`` and a ``BlossomRun``) with its three ratios."""
    c, b = ceiling, blossom.fanout
    return {
        "ceiling": asdict(ceiling),
        "blossom": asdict(blossom),
        "throughput_ratio": round(b.msgs_per_s / c.msgs_per_s, 4),
        "last_server_ratio": round(b.span_ms / c.span_ms, 4),
        "last_client_ratio": round(b.done_ms / c.done_ms, 4),
    }


def _col(pairs: Sequence[Mapping[str, Any]], side: str, *keys: str) -> list[float]:
    out = []
    for p in pairs:
        value: Any = p[side]
        for k in keys:
            value = value[k]
        out.append(float(value))
    return out


def summarise_size(
    rooms: int,
    concurrency: int,
    sweep_rates: Mapping[int, float],
    pairs: Sequence[Mapping[str, Any]],
    typicals: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The JSON of one room count: every pair kept, and the spreads the report uses."""
    ceiling_rate = _col(pairs, "ceiling", "msgs_per_s")
    blossom_rate = _col(pairs, "blossom", "fanout", "msgs_per_s")
    typical_rate = [float(t["msgs_per_s"]) for t in typicals]
    c_server, b_server = (
        _col(pairs, "ceiling", "span_ms"),
        _col(pairs, "blossom", "fanout", "span_ms"),
    )
    c_client, b_client = (
        _col(pairs, "ceiling", "done_ms"),
        _col(pairs, "blossom", "fanout", "done_ms"),
    )
    synapse_ms = {
        "ceiling": [
            p["ceiling"]["extra"]["synapse_cpu_s"] / p["ceiling"]["rooms"] * 1e3 for p in pairs
        ],
        "blossom": [
            p["blossom"]["synapse_cpu_s"] / p["blossom"]["fanout"]["rooms"] * 1e3 for p in pairs
        ],
        "typical_bot": [t["extra"]["synapse_cpu_s"] / t["rooms"] * 1e3 for t in typicals],
    }
    background = [
        *_col(pairs, "ceiling", "extra", "background_cores"),
        *_col(pairs, "blossom", "background_cores"),
        *(float(t["extra"]["background_cores"]) for t in typicals),
    ]
    return {
        "rooms": rooms,
        "ceiling_concurrency": concurrency,
        "sweep_msgs_per_s": {str(c): round(r, 1) for c, r in sweep_rates.items()},
        "ceiling_msgs_per_s": spread(ceiling_rate, 1),
        "blossom_msgs_per_s": spread(blossom_rate, 1),
        "typical_bot_msgs_per_s": spread(typical_rate, 1),
        "throughput_ratio": spread([float(p["throughput_ratio"]) for p in pairs]),
        "throughput_ratio_of_medians": ratio_of_medians(blossom_rate, ceiling_rate),
        "blossom_vs_typical_of_medians": ratio_of_medians(blossom_rate, typical_rate),
        "last_server_ms": {"ceiling": spread(c_server, 0), "blossom": spread(b_server, 0)},
        "last_server_ratio": spread([float(p["last_server_ratio"]) for p in pairs]),
        "last_server_ratio_of_medians": ratio_of_medians(b_server, c_server),
        "last_client_ms": {"ceiling": spread(c_client, 0), "blossom": spread(b_client, 0)},
        "last_client_ratio": spread([float(p["last_client_ratio"]) for p in pairs]),
        "last_client_ratio_of_medians": ratio_of_medians(b_client, c_client),
        "first_lateness_ms": spread(_col(pairs, "blossom", "first_lateness_ms"), 1),
        "city_skew_ms": spread(_col(pairs, "blossom", "city_skew_ms"), 0),
        "city_mean_skew_ms": spread(_col(pairs, "blossom", "city_mean_skew_ms"), 0),
        "bot_cpu_s": spread(_col(pairs, "blossom", "release_cpu_s"), 3),
        "bot_peak_rss_mb": spread(_col(pairs, "blossom", "peak_rss_mb"), 1),
        "synapse_cpu_ms_per_msg": {k: spread(v, 2) for k, v in synapse_ms.items()},
        "background_cores": spread(background, 2),
        "failed": sum(int(p["blossom"]["failed"]) for p in pairs),
        "pairs": list(pairs),
        "typical_runs": list(typicals),
    }


def summarise_level(
    max_in_flight: int, fanouts: Sequence[Any], aborts: Sequence[Any]
) -> dict[str, Any]:
    """One in-flight level of the trade-off: its fan-outs (``BlossomRun``) and its
    mid-fan-out aborts (``AbortRun``)."""
    return {
        "max_in_flight": max_in_flight,
        "fanout_client_ms": spread([f.fanout.done_ms for f in fanouts], 0),
        "fanout_server_ms": spread([f.fanout.span_ms for f in fanouts], 0),
        "msgs_per_s": spread([f.fanout.msgs_per_s for f in fanouts], 1),
        "abort_reply_ms": spread([a.reply_ms for a in aborts], 0),
        "abort_first_stop_ms": spread([a.first_stop_ms for a in aborts], 0),
        "abort_last_stop_ms": spread([a.last_stop_ms for a in aborts], 0),
        "abort_stage_rooms": spread([a.stage_rooms for a in aborts], 0),
        "failed": sum(f.failed for f in fanouts) + sum(a.stop_failed for a in aborts),
        "fanouts": [asdict(f) for f in fanouts],
        "aborts": [asdict(a) for a in aborts],
    }


def memory_model(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Least-squares line through (rooms, median peak RSS): base MiB and MiB per room."""
    import statistics

    points = [(float(r["rooms"]), r["bot_peak_rss_mb"]["median"]) for r in rows]
    points = [(x, float(y)) for x, y in points if y is not None]
    if len({x for x, _ in points}) < 2:
        return None
    fit = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return {"base_mb": round(fit.intercept, 1), "mb_per_room": round(fit.slope, 4)}


def summarise_layout(
    layout: str,
    solos: Sequence[Any],
    crews: Sequence[Mapping[str, Any]],
    grace_s: float,
) -> dict[str, Any]:
    """One layout of the crew's scale-out: its pairs (one bot's ``BlossomRun``, the
    crew's release as a dict), the last room of each side from the instant."""
    one = [float(s.last_lateness_ms) for s in solos]
    crew = [float(c["last_ms"]) for c in crews]
    out: dict[str, Any] = {
        "layout": layout,
        "pairs": min(len(one), len(crew)),
        "one_bot_last_ms": spread(one, 0),
        "crew_last_ms": spread(crew, 0),
        "ratio": spread([c / o for c, o in zip(crew, one, strict=False) if o > 0]),
        "ratio_of_medians": ratio_of_medians(crew, one),
        "one_bot_first_ms": spread([float(s.first_lateness_ms) for s in solos], 1),
        "crew_first_ms": spread([float(c["first_ms"]) for c in crews], 1),
        "one_bot_synapse_cpu_s": spread([float(s.synapse_cpu_s) for s in solos], 2),
        "crew_synapse_cpu_s": {
            side: spread([float(c["synapse_cpu_s"][side]) for c in crews], 2) for side in "ab"
        },
        "background_cores": spread(
            [
                *(float(s.background_cores) for s in solos),
                *(float(c["background_cores"]) for c in crews),
            ],
            2,
        ),
        "failed": sum(int(s.failed) for s in solos) + sum(int(c["failed"]) for c in crews),
        "duplicates": sum(int(c.get("duplicates", 0)) for c in crews),
        "one_bot_runs": [asdict(s) for s in solos],
        "crew_runs": list(crews),
    }
    if layout == "failover":
        covered = [float(c["covered_ms"]) for c in crews if c["covered_ms"] is not None]
        out["covered_ms"] = spread(covered, 0)
        out["covered_after_grace_ms"] = spread([c - grace_s * 1000 for c in covered], 0)
        out["covered_rooms"] = spread([float(c["covered"]) for c in crews], 0)
        out["before_kill_rooms"] = spread([float(c["before_kill"]) for c in crews], 0)
    return out


def summarise_scaleout(
    *,
    rooms: int,
    split: Sequence[int],
    grace_s: float,
    heartbeat_s: float,
    setup_s: Mapping[str, float],
    rounds: Sequence[tuple[str, Sequence[Any], Sequence[Mapping[str, Any]]]],
) -> dict[str, Any]:
    """The scale-out section of the results file: each layout's pairs."""
    return {
        "rooms": rooms,
        "split": list(split),
        "grace_s": grace_s,
        "heartbeat_s": heartbeat_s,
        "setup_s": dict(setup_s),
        "layouts": [summarise_layout(lay, s, c, grace_s) for lay, s, c in rounds],
    }
