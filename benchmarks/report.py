"""Markdown tables from a benchmark result, for docs/performance.md.

    python -m benchmarks.report [benchmarks/results/latest.json]

Copying numbers by hand is how a published table and its JSON drift apart;
this prints what the JSON says.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _f(value: Any, fmt: str = ".0f") -> str:
    return "–" if value is None else format(value, fmt)


FANOUT_COLUMNS = (
    "rooms",
    "ceiling msg/s (in flight)",
    "typical bot msg/s",
    "Blossom msg/s",
    "Blossom / ceiling",
    "Blossom / typical",
    "first late ms",
    "last late ms",
    "ceiling time ms",
    "city skew ms last (mean)",
    "bot CPU s",
    "bot peak RSS MiB",
    "other load (cores)",
)


def fanout_cells(r: dict[str, Any]) -> list[str]:
    """One room count's summary as the cells of FANOUT_COLUMNS (Markdown and the
    benchmark's own console table share them)."""
    return [
        str(r["rooms"]),
        f"{r['ceiling_msgs_per_s']:.1f} ({r['best_concurrency']:g})",
        f"{r['typical_bot_msgs_per_s']:.1f}",
        f"{r['blossom_msgs_per_s']:.1f}",
        f"{r['blossom_vs_ceiling']:.0%}",
        f"{r['blossom_vs_typical']:.1f}x",
        _f(r["first_lateness_ms"]),
        _f(r["last_lateness_ms"]),
        _f(r["ceiling_time_ms"]),
        f"{r['city_skew_ms']:.0f} ({r['city_mean_skew_ms']:.0f})",
        f"{r['bot_cpu_s']:.2f}",
        _f(r["bot_peak_rss_mb"]),
        f"{r['background_cores']:.2f}",
    ]


def fanout_table(report: dict[str, Any]) -> str:
    return _table(FANOUT_COLUMNS, [fanout_cells(r) for r in report["results"]])


def extras(report: dict[str, Any]) -> str:
    out: list[str] = []
    if report.get("memory"):
        m = report["memory"]
        out.append(f"Bot memory ≈ {m['base_mb']} MiB + {m['mb_per_room'] * 1024:.0f} KiB per room.")
    a = report.get("abort")
    if a:
        out.append(
            f"**!abort during a fan-out** ({a['rooms']} rooms, typed {a['abort_after_s']:g} s "
            f"after the instant): the bot replied {a['reply_ms']:.0f} ms after the command; "
            f"the first room had the stop message at +{a['first_stop_ms']:.0f} ms and every "
            f"room at +{a['last_stop_ms']:.0f} ms; the stage had reached {a['stage_rooms']} "
            f"of {a['rooms']} rooms ({a['stage_rooms_after_reply']} of them stamped after the "
            f"reply: requests already in flight); {a['stop_failed']} stop messages failed."
        )
    e = report.get("encrypted")
    if e:
        ahead, late = e["keys_shared_ahead"], e["keys_at_instant"]
        out.append(
            _table(
                ["encrypted", "fan-out ms", "first late ms", "msg/s", "bot CPU s", "decrypted"],
                [
                    [
                        name,
                        _f(v["fanout_ms"]),
                        _f(v["first_lateness_ms"]),
                        f"{v['msgs_per_s']:.1f}",
                        f"{v['bot_cpu_s']:.2f}",
                        "/".join(str(x) for x in v["participant_decrypted_rooms"]),
                    ]
                    for name, v in (
                        ("room keys shared ahead", ahead),
                        ("room keys at the instant", late),
                    )
                ],
            )
            + f"\n\n{e['rooms']} encrypted rooms, {e['participant_devices_per_room']} "
            "participant devices each; sharing keys ahead saves "
            f"{e['instant_saving_ms']:.0f} ms at the instant."
        )
    d = report.get("direct")
    if d:
        out.append(
            f"**Direct messages**: a stage to {d['participants']} private participants "
            f"({d['msgs_per_s']:.1f} msg/s): first +{d['first_lateness_ms']:.0f} ms, last "
            f"+{d['last_lateness_ms']:.0f} ms, bot CPU {d['bot_cpu_s']:.2f} s, peak RSS "
            f"{d['bot_peak_rss_mb']:.0f} MiB, {d['failed']} failed."
        )
    p = report.get("presence")
    if p:
        first, again = p["first_start"], p["restart"]
        out.append(
            f"**Presence**: the bot in {p['rooms']} rooms with {p['memberships']} members: "
            f"first start ready in {first['ready_s']:.1f} s ({first['rss_ready_mb']:.0f} MiB), "
            f"a restart in {again['ready_s']:.1f} s ({again['rss_ready_mb']:.0f} MiB); "
            f"an initial sync is {p['initial_sync_mb']:.1f} MB in {p['initial_sync_s']:.1f} s, "
            f"an incremental one with one new message {p['incremental_sync_ms']:.0f} ms."
        )
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.fanout import RESULTS  # here: fanout imports this module

    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else RESULTS
    report = json.loads(path.read_text())
    print(fanout_table(report))
    print()
    print(extras(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
