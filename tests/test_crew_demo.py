"""`blossom demo --crew` end to end (a process, no terminal): a crew of two bots;
the first stops after the first stage, the second sends the rest, and every
dispatch still arrives exactly once. Marked ``homeserver``: it needs Synapse
installed (it starts its own)."""

from __future__ import annotations

import json
import re

import pytest
from test_demo import CI_SPEED, _demo, _leftovers, _workdir

pytestmark = [pytest.mark.homeserver, pytest.mark.timeout(150)]


def test_demo_crew_fails_over_and_checks_itself() -> None:
    proc = _demo("--crew", "--speed", CI_SPEED, "--plain")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    workdir = _workdir(output)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"] is True, summary["problems"]
    assert summary["dispatches"] == summary["delivered_exactly_once"] == 12
    assert summary["problems"] == []
    assert "OK: every dispatch arrived, exactly once." in output
    first, second = "@blossom:localhost", "@blossom-two:localhost"
    assert f"stopping {first} after call: {second} takes over" in output
    for city in ("washington", "london", "berlin"):
        assert re.search(rf"{city}\s+\S+\s+call/text\s+\+.*\(from {first}\)", output), city
        for stage in ("staging", "location", "disperse"):  # after the first stopped
            pattern = rf"{city}\s+\S+\s+{stage}/text\s+\+.*\(from {second}\)"
            assert re.search(pattern, output), (city, stage)
            assert not re.search(rf"{city}\s+\S+\s+{stage}/text\s+\+.*\(from {first}\)", output)
    # The throwaway passwords go with the run: neither member's config is kept.
    assert not (workdir / "bot" / "config.yaml").exists()
    assert not (workdir / "bot2" / "config.yaml").exists()
    assert _leftovers(workdir) == []
