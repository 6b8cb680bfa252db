"""docs/performance.md and the README's headline come out of the results file, and
the benchmark's verdicts follow the documented sign-test rule. No server: milliseconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks import report as bench_report
from benchmarks.measure import AbortRun, BlossomRun, Fanout
from benchmarks.stats import pairs_needed, spread, verdict
from benchmarks.summary import (
    pair_record,
    summarise_level,
    summarise_scaleout,
    summarise_size,
)
from benchmarks.targets import judge

ROOT = Path(__file__).resolve().parent.parent


def test_committed_docs_are_what_the_results_file_says() -> None:
    assert bench_report.main(["--check"]) == 0, "run: python -m benchmarks.report --write"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.96, 0.97, 0.99, 1.2, 0.951], "met"),  # all 5 of 5
        ([0.96, 0.97, 0.99, 1.2, 0.90], "within the noise"),  # 4 of 5: 3 in 16 by chance
        ([0.5, 0.6, 0.7, 0.8, 0.94], "missed"),  # none of 5
        ([1.0, 1.0, 1.0, 1.0], "within the noise"),  # too few pairs to tell
        ([1.0] * 9 + [0.5], "met"),  # 9 of 10: about 1 in 100 by chance
        ([1.0] * 8 + [0.5] * 2, "within the noise"),  # 8 of 10: about 1 in 18
        ([], "not measured"),
    ],
)
def test_verdicts_by_the_sign_test(values: list[float], expected: str) -> None:
    assert verdict(values, 0.95, at_most=False) == expected


def test_at_most_targets_and_the_smallest_deciding_count() -> None:
    assert verdict([10, 12, 20, 24, 25], 25, at_most=True) == "met"  # 25 is within 25
    assert verdict([26, 30, 40, 50, 99], 25, at_most=True) == "missed"
    assert pairs_needed() == 5
    assert spread([3.0, 1.0, 2.0]) == {
        "median": 2.0, "min": 1.0, "max": 3.0, "n": 3, "values": [3.0, 1.0, 2.0]
    }


def _ceiling(rate: float, rooms: int) -> Fanout:
    done = rooms / rate * 1000
    return Fanout(rooms, rate, done * 0.8, 5.0, done,
                  {"concurrency": 64, "background_cores": 0.0, "synapse_cpu_s": rooms * 0.015})


def _blossom(rate: float, rooms: int, first: float) -> BlossomRun:
    done = rooms / rate * 1000
    return BlossomRun(
        fanout=Fanout(rooms, rate, done * 0.95, first, done, {}),
        first_lateness_ms=first, last_lateness_ms=done * 0.95, city_skew_ms=10,
        city_mean_skew_ms=5, failed=0, ready_s=1, release_cpu_s=0.5, process_cpu_s=1,
        peak_rss_mb=70 + rooms * 0.05, rss_ready_mb=70, background_cores=0.0,
        synapse_cpu_s=rooms * 0.017,
    )


def _report() -> dict[str, Any]:
    """A results file as benchmarks.fanout writes it, from made-up runs: at 200 rooms
    Blossom beats 0.95 in every pair; at 1000 it straddles it."""
    results = []
    for rooms, b_rates in ((200, [60, 62, 61, 63, 59]), (1000, [50, 66, 57, 64, 52])):
        pairs = [pair_record(_ceiling(60, rooms), _blossom(b, rooms, 9.0)) for b in b_rates]
        typical = [{"msgs_per_s": 38.0, "rooms": rooms,
                    "extra": {"synapse_cpu_s": rooms * 0.02, "background_cores": 0.1}}]
        results.append(summarise_size(rooms, 64, {64: 60.0, 32: 55.0}, pairs, typical))
    aborts = [AbortRun(1000, 1.0, 600, ms, 18000, 120, 3, 0) for ms in (700, 800, 900)]
    fanouts = [_blossom(55, 1000, 9.0)] * 3
    return {
        "format": bench_report.FORMAT,
        "started": "2026-12-01T12:00:00+00:00",
        "command": "python -m benchmarks.fanout",
        "source": {"commit": "abc123def456", "dirty": False},
        "machine": {"cores": 2, "memory_gib": 24, "platform": "Linux", "python": "3.11",
                    "versions": {"matrix-synapse": "1.163.2", "matrix-nio": "0.26.0"}},
        "load": {"start": {"loadavg_1m": 0.1}, "end": {"loadavg_1m": 0.2}},
        "settings": {"bot_max_in_flight": 32},
        "phase_s": {"results": 600.0, "in_flight": 900.0},
        "wall_s": 1600.0,
        "results": results,
        "memory": None,
        "in_flight": {"rooms": 1000, "abort_after_s": 1.0, "repeats": 3, "levels": [
            summarise_level(32, fanouts, aborts), summarise_level(64, fanouts, aborts)]},
        "scaleout": _scaleout(),
    }


def _crew(layout: str, last: float, covered: float | None = None) -> dict[str, Any]:
    return {"layout": layout, "rooms": 1000, "first_ms": 12.0, "last_ms": last,
            "sent": {"a": 500, "b": 500}, "failed": 0, "covered": 500 if covered else 0,
            "covered_ms": covered, "before_kill": 0, "background_cores": 0.1,
            "synapse_cpu_s": {"a": 9.0, "b": 8.0}, "duplicates": 0}


def _scaleout() -> dict[str, Any]:
    """Made-up pairs: one bot at 20 s; sharded 18-19 s; replicated 25 s; failover
    covered 33-35 s after the instant, with a 20 s grace."""
    one = [_blossom(50, 1000, 9.0)] * 3  # last stamp 19000 ms
    return summarise_scaleout(
        rooms=1000, split=[500, 500], grace_s=20.0, heartbeat_s=5.0, setup_s={"rooms_s": 300},
        rounds=[
            ("sharded", one, [_crew("sharded", ms) for ms in (18000, 19000, 18500)]),
            ("replicated", one, [_crew("replicated", 25000)] * 3),
            ("failover", one, [_crew("failover", ms, ms) for ms in (33000, 34000, 35000)]),
        ],
    )


def test_targets_are_judged_per_size_from_the_pairs() -> None:
    judged = {(j.name.split(" ")[0] + " " + j.name.split(" ")[1], j.where): j.verdict
              for j in judge(_report())}
    assert judged[("Fan-out throughput", "200 rooms")] == "met"
    assert judged[("Fan-out throughput", "1000 rooms")] == "within the noise"
    assert judged[("First room", "200 rooms")] == "met"
    assert judged[("An !abort's", "1000 rooms, 32 in flight")] == "within the noise"  # 3 runs


def test_the_doc_block_shows_every_pair_and_the_verdicts(tmp_path: Path) -> None:
    rep = _report()
    text = bench_report.render(rep)
    assert "| 1000 | 5 | 60.0 at 64 | 57.0 (50.0–66.0) | 95% (83%–110%) | 95% |" in text
    assert "Blossom / ceiling per pair 83%, 110%, 95%, 107%, 87%" in text
    assert "| 1000 | last reply | 16667 | 17544 (15152–20000) | 1.05 (0.91–1.20) | 1.05 |" in text
    assert "**within the noise**" in text and "**met**" in text
    assert "| 32 | 18182 | 17273 | 600 | 800 (700–900) | 18000 | 120 |" in text
    # --write then --check on copies of the docs, from a results file.
    results = tmp_path / "latest.json"
    results.write_text(json.dumps(rep))
    doc, readme = tmp_path / "performance.md", tmp_path / "README.md"
    doc.write_text((ROOT / "docs" / "performance.md").read_text())
    readme.write_text((ROOT / "README.md").read_text())
    args = [str(results), "--doc", str(doc), "--readme", str(readme)]
    assert bench_report.main([*args, "--check"]) == 1
    assert bench_report.main([*args, "--write"]) == 0
    assert bench_report.main([*args, "--check"]) == 0
    assert "95% (83%–110%) of the homeserver's ceiling (median of 5 pairs" in readme.read_text()
    assert "## What an operator can expect" in doc.read_text()  # prose kept


def test_an_old_results_file_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "latest.json"
    old.write_text(json.dumps({"benchmark": "fanout", "results": []}))
    assert bench_report.main([str(old)]) == 2


def test_the_scaleout_block_shows_each_layout_against_one_bot() -> None:
    rep = _report()
    text = bench_report.render_scaleout(rep)
    assert "1000 rooms (500 on server a, 500 on b)" in text and "Grace 20 s" in text
    assert (
        "| sharded: one member per server, standbys not joined | 3 | 19000 | "
        "18500 (18000–19000) | 0.97 (0.95–1.00) | 0.97 | 9 / 12 | 17.0 / 9.0 + 8.0 |" in text
    )
    assert (
        "| replicated: each member also joined to every room as standby | 3 | 19000 | 25000 | "
        "1.32 | 1.32 |" in text
    )
    assert "covered the last of them 34000 (33000–35000) ms after the instant" in text
    assert "that is 14000 (13000–15000) ms after the grace" in text
    # A results file without the section: the block says so, the fan-out's stays.
    del rep["scaleout"]
    assert bench_report.render_scaleout(rep) == bench_report.SCALEOUT_NOT_MEASURED
    assert "#### Targets" in bench_report.render(rep)
    # ...and one with only the section (--only-scaleout): the other way round.
    only = {k: v for k, v in _report().items() if k not in ("results", "in_flight")}
    assert bench_report.render(only) == bench_report.NOT_MEASURED
    assert "| failover: b's member SIGKILLed at the instant | 3 |" in (
        bench_report.render_scaleout(only)
    )


def test_the_crew_scenario_puts_each_member_first_for_its_own_servers_rooms() -> None:
    import yaml

    from benchmarks.scaleout import crew_scenario
    from bot.scenario import load_scenario_text

    a, b = "@crew-a:127.0.0.1:8481", "@crew-b:127.0.0.1:8482"
    a1, a2, b1, b2 = (f"!{x}:127.0.0.1:8481" for x in ("a1", "a2", "b1", "b2"))
    members = [
        SimpleNamespace(label="a", user_id=a, account=SimpleNamespace(rooms=[a1, a2])),
        SimpleNamespace(label="b", user_id=b, account=SimpleNamespace(rooms=[b1, b2])),
    ]
    data = crew_scenario("crew-x", members, 4, datetime(2030, 1, 1, tzinfo=UTC), 20.0)
    scenario = load_scenario_text(yaml.safe_dump(data))  # valid as the bots will load it
    assert data["failover"] == {"grace": "20s"}
    orders = {tuple(c.rooms): list(c.crew or []) for c in scenario.cities}
    assert orders == {(a1,): [a, b], (a2,): [a, b], (b1,): [b, a], (b2,): [b, a]}


def _level(n: int, fanout_rate: float, firsts: list[float]) -> dict[str, Any]:
    aborts = [AbortRun(1000, 1.0, ms - 50, ms, 20000, 100, 3, 0) for ms in firsts]
    return summarise_level(n, [_blossom(fanout_rate, 1000, 9.0)] * len(firsts), aborts)


def test_the_in_flight_reading_argues_for_the_fastest_level_that_keeps_the_abort_target() -> None:
    from benchmarks.targets import read_in_flight, safest_fast_level

    table = {"rooms": 1000, "abort_after_s": 1.0, "repeats": 5, "levels": [
        _level(16, 48, [500, 520, 610, 480, 700]),  # met, slowest fan-out
        _level(32, 52, [900, 1100, 950, 1200, 800]),  # straddles 1 s
        _level(64, 58, [1600, 2200, 1900, 1500, 2100]),  # missed, fastest
    ]}
    readings = {r.level: r for r in read_in_flight(table, 32)}
    assert [readings[n].abort for n in (16, 32, 64)] == ["met", "within the noise", "missed"]
    assert readings[16].fanout_vs_bot is not None and readings[16].fanout_vs_bot > 1
    best = safest_fast_level(list(readings.values()))
    assert best is not None and best.level == 16
    text = bench_report.in_flight_reading(table, 32)
    assert "argues for 16 in flight (the fastest fan-out of the levels that meet" in text
    assert "the bot ran with `max_in_flight: 32` (abort target: within the noise)" in text
    # None meets it: the soonest stop wins over a faster fan-out.
    unsure = {**table, "levels": [_level(16, 48, [500, 520, 1610, 480, 1700]),
                                  _level(32, 52, [900, 1100, 950, 1200, 1800])]}
    assert safest_fast_level(read_in_flight(unsure, 32)).level == 16  # type: ignore[union-attr]
    # Every level missing the target: the one that stops soonest.
    late = {**table, "levels": [_level(32, 52, [1500] * 5), _level(64, 58, [2500] * 5)]}
    assert safest_fast_level(read_in_flight(late, 32)).level == 32  # type: ignore[union-attr]


async def test_a_failing_part_is_recorded_and_the_parts_before_it_are_kept(
    tmp_path: Path,
) -> None:
    """The first full run lost 83 minutes of measurements to the last part's
    timeout: nothing was written. Each part now writes the file as it ends."""
    from benchmarks.fanout import _phase

    out = tmp_path / "latest.json"
    report: dict[str, Any] = {"phase_s": {}}

    async def ok() -> list[int]:
        return [1, 2]

    async def broken() -> None:
        raise TimeoutError("no reply to !arm crew-sharded-0")

    await _phase(report, "results", ok, out)
    await _phase(report, "scaleout", broken, out)
    saved = json.loads(out.read_text())
    assert saved["results"] == [1, 2]
    assert saved["failed_phases"] == {"scaleout": "TimeoutError: no reply to !arm crew-sharded-0"}
    assert "scale-out failed: TimeoutError" in bench_report.render_scaleout(saved)


def test_a_run_stopped_part_way_renders_what_it_measured() -> None:
    """Each part writes the results file as it ends, so a run stopped part-way
    leaves a file without a total or an end load: the report says it did not
    finish instead of raising (seen: KeyError 'wall_s')."""
    report = _report()
    del report["wall_s"], report["load"]["end"]
    block = bench_report.render(report)
    assert "did not finish" in block and "results 10 min, in_flight 15 min" in block
    assert "at the end not recorded" in block
