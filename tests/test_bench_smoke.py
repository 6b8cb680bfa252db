"""The fan-out benchmark's code path at toy size, so it cannot rot. No timing
assertions: only that it runs end to end and writes the result fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.homeserver

REPO = Path(__file__).resolve().parent.parent
FIELDS = {
    "rooms",
    "ceiling_msgs_per_s",
    "typical_bot_msgs_per_s",
    "blossom_msgs_per_s",
    "blossom_vs_ceiling",
    "blossom_vs_typical",
    "first_lateness_ms",
    "last_lateness_ms",
    "city_skew_ms",
    "bot_cpu_s",
    "bot_peak_rss_mb",
}


@pytest.mark.timeout(120)
def test_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.fanout", "--smoke"),
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
    assert row["blossom_msgs_per_s"] > 0 and row["bot_peak_rss_mb"] > 0
    assert report["machine"]["cores"] >= 1
    abort = report["abort"]
    assert abort["rooms"] == 3 and abort["stop_failed"] == 0 and abort["reply_ms"] >= 0
