"""`blossom demo` end to end, as a newcomer (or CI) runs it: a process, no terminal.

It starts its own homeserver, so it does not use the session's; it is marked
``homeserver`` because it needs Synapse installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.homeserver, pytest.mark.timeout(150)]

# Fast enough for CI: the scenario's half hour plays in 18 s.
CI_SPEED = "100"


def _demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A test runner may start us with SIGINT ignored; the demo must see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _workdir(output: str) -> Path:
    match = re.search(r"working directory (\S+)", output)
    assert match, output
    return Path(match.group(1))


def _leftovers(workdir: Path) -> list[str]:
    """Processes whose command line names the demo's directory (its Synapse)."""
    found = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True)
    return found.stdout.splitlines()


def test_demo_runs_end_to_end_and_checks_itself() -> None:
    started = time.monotonic()
    proc = _demo("--speed", CI_SPEED, "--plain")
    output, _ = proc.communicate(timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 0, output
    workdir = _workdir(output)
    try:
        summary = json.loads((workdir / "summary.json").read_text())
        # Its own summary: everything delivered, each dispatch exactly once per room.
        assert summary["ok"] is True, summary["problems"]
        assert summary["cities"] == 3 and summary["participants"] == 6
        assert summary["dispatches"] == summary["delivered_exactly_once"] == 12
        # call, staging (+pin), location (+pin), disperse: 6 events per room.
        assert summary["events_counted"] == 18
        assert summary["problems"] == []
        # Every participant checked in with !here, so no gate needed the organiser.
        assert summary["checkins"] == {"washington": 2, "london": 2, "berlin": 2}
        assert summary["released_by_organiser"] == []
        assert 0 <= summary["max_lateness_s"] < 3.0
        # What it printed says the same.
        assert "Dispatches delivered: 12 of 12 (3 cities)" in output
        assert "OK: every dispatch arrived, exactly once." in output
        assert f"Logs: {workdir}/logs/demo.log" in output
        for city in ("washington", "london", "berlin"):
            for stage in ("call", "staging", "location", "disperse"):
                assert re.search(rf"{city}\s+\S+\s+{stage}/text\s+\+\d", output), (city, stage)
        # The organiser's commands went through the control room.
        assert "!arm blossom-demo → Armed blossom-demo" in output
        # The plan picture, three lanes.
        svg = ET.fromstring((workdir / "plan.svg").read_bytes())
        lanes = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "lane"]
        assert len(lanes) == 3
        assert f"the plan, drawn: {workdir}/plan.svg" in output
        # Logs kept; databases and throwaway credentials gone; nothing left running.
        assert (workdir / "logs" / "demo.log").stat().st_size > 0
        assert (workdir / "logs" / "homeserver.log").exists()
        assert not (workdir / "homeserver").exists()
        assert not (workdir / "bot" / "config.yaml").exists()
        assert _leftovers(workdir) == []
        # No password in the output without --keep.
        assert "password" not in output.lower()
        assert took < 90, f"the demo took {took:.0f} s"
    finally:
        assert _leftovers(workdir) == []


def test_demo_keep_leaves_a_homeserver_to_log_in_to_then_ctrl_c_stops_all() -> None:
    proc = _demo("--speed", CI_SPEED, "--cities", "1", "--keep")
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "times fast" in line:  # the last line of the --keep notice
            break
    else:
        proc.wait(10)
        pytest.fail("".join(lines))
    output = "".join(lines)
    workdir = _workdir(output)
    try:
        assert "OK: every dispatch arrived, exactly once." in output
        assert "throwaway demo accounts" in output
        url = re.search(r"Homeserver:\s+(\S+)", output)
        login = re.search(r"Organiser:\s+(\S+)\s+password: (\S+)", output)
        assert url and login, output
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": login.group(1)},
            "password": login.group(2),
        }
        request = urllib.request.Request(
            url.group(1) + "/_matrix/client/v3/login",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert "access_token" in json.loads(response.read())
        assert _leftovers(workdir), "the homeserver should still run with --keep"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "Everything is stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    time.sleep(0.2)
    assert _leftovers(workdir) == []
