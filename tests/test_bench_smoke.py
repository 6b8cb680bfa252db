"""The fan-out benchmark's code path at toy size, so it cannot rot. No timing
assertions: only that it runs end to end and writes the result fields. The
crew's scale-out (two federating Synapses) is its own test, so each stays
within its budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import NOT_MEASURED, render, render_scaleout

pytestmark = pytest.mark.homeserver

REPO = Path(__file__).resolve().parent.parent
FIELDS = {
    "rooms",
    "ceiling_msgs_per_s",
    "blossom_msgs_per_s",
    "typical_bot_msgs_per_s",
    "throughput_ratio",
    "throughput_ratio_of_medians",
    "last_server_ms",
    "last_server_ratio",
    "last_client_ms",
    "last_client_ratio",
    "first_lateness_ms",
    "city_skew_ms",
    "bot_cpu_s",
    "bot_peak_rss_mb",
    "pairs",
}


@pytest.mark.timeout(120)
def test_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.fanout", "--smoke", "--no-scaleout"),
            *("--output", str(out), "--workdir", str(tmp_path / "work")),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row.keys() >= FIELDS
    assert row["rooms"] == 3 and row["failed"] == 0
    (pair,) = row["pairs"]  # --smoke: one pair
    assert pair["ceiling"]["rooms"] == pair["blossom"]["fanout"]["rooms"] == 3
    assert pair["throughput_ratio"] > 0 and pair["last_server_ratio"] > 0
    assert row["blossom_msgs_per_s"]["median"] > 0 and row["bot_peak_rss_mb"]["median"] > 0
    assert report["machine"]["cores"] >= 1 and report["source"]["commit"]
    assert set(report["load"]) == {"start", "end"} and report["wall_s"] > 0
    (level,) = report["in_flight"]["levels"]
    (abort,) = level["aborts"]
    assert level["max_in_flight"] == 32 and level["failed"] == 0
    assert abort["rooms"] == 3 and abort["stop_failed"] == 0 and abort["reply_ms"] >= 0
    # The report renders what the run wrote, targets and trade-off included.
    text = render(report)
    assert "#### Targets" in text and "#### In flight: fan-out against abort" in text


@pytest.mark.timeout(150)
def test_scaleout_smoke(tmp_path: Path) -> None:
    """The crew's scale-out at 4 rooms (2 per server), one pair per layout: every
    room gets the stage in each layout, the killed member's rooms are covered."""
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.fanout", "--smoke", "--only-scaleout"),
            *("--output", str(out), "--workdir", str(tmp_path / "work")),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "results" not in report and report["source"]["commit"]  # --only-scaleout
    assert set(report["load"]) == {"start", "end"} and "scaleout" in report["phase_s"]
    s = report["scaleout"]
    assert s["rooms"] == 4 and s["split"] == [2, 2] and s["grace_s"] == 2.0
    layouts = {lay["layout"]: lay for lay in s["layouts"]}
    assert set(layouts) == {"sharded", "replicated", "failover"}
    for lay in layouts.values():
        (run,) = lay["crew_runs"]
        assert lay["failed"] == 0 and run["rooms"] == 4 and run["last_ms"] > 0, lay["layout"]
        assert lay["one_bot_last_ms"]["n"] == 1 and lay["ratio"]["n"] == 1
    for layout in ("sharded", "replicated"):  # each member sent its own server's rooms
        assert layouts[layout]["crew_runs"][0]["sent"] == {"a": 2, "b": 2}, layout
    (killed,) = layouts["failover"]["crew_runs"]
    assert killed["covered"] + killed["before_kill"] == 2  # b's half, every room
    assert killed["covered"] == 0 or killed["covered_ms"] >= 2000  # not before the grace
    text = render_scaleout(report)
    assert "| failover: b's member SIGKILLed at the instant | 1 |" in text
    assert render(report) == NOT_MEASURED
