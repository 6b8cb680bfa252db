"""The scenario loader as a fuzz target, shared by the hypothesis run and atheris.

Whatever the bytes, ``load_scenario_text`` gives a scenario or a ScenarioError with
positioned diagnostics; never another exception, never an "internal error", and
within the per-file bounds below.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from bot.scenario import ScenarioError, load_scenario_text

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted(
    [*(ROOT / "tests" / "invalid").glob("*.yaml"), *(ROOT / "scenarios").glob("*.yaml")]
)

# Per file, at the loader's input limits (256 KiB, 20,000 values written), on the
# 2-core machines the project runs on: measured at about 1.5 s and 12 MiB (traced).
MAX_SECONDS = 5.0
MAX_TRACED_MIB = 64.0


def check_one(data: bytes) -> str:
    """Load ``data``; "valid" or "error". Anything else raises (a finding)."""
    try:
        load_scenario_text(data, "fuzz.yaml")
    except ScenarioError as err:
        assert err.diagnostics, "a ScenarioError without diagnostics"
        for d in err.diagnostics:
            assert "internal error" not in d.message, d.message
            assert d.line >= 1 and d.col >= 1, d
            assert d.message and "\n" not in d.message, d.message
        return "error"
    return "valid"


@dataclass(frozen=True)
class Cost:
    outcome: str
    seconds: float
    traced_mib: float


def measure(data: bytes) -> Cost:
    """check_one with its wall time (untraced) and peak traced memory (a second run)."""
    started = time.perf_counter()
    outcome = check_one(data)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        check_one(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Cost(outcome, seconds, peak / 2**20)
