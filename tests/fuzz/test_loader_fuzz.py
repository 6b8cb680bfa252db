"""The scenario loader under fuzzing: any bytes give a scenario or a clear error, never a
traceback or a hang, within a time and memory bound per file.

- A bounded hypothesis run (always, in ``make test``): byte-level mutations and
  splices of the seed files (the invalid corpus and the examples), and raw bytes.
  ``BLOSSOM_FUZZ_EXAMPLES`` (default 300) sets how many inputs it tries.
- Files at the loader's limits, each timed and its memory traced against the bound.
- Coverage-guided fuzzing with atheris, only when ``BLOSSOM_FUZZ_SECONDS`` is set
  (e.g. ``BLOSSOM_FUZZ_SECONDS=600 .venv/bin/pytest -q tests/fuzz``); it needs
  ``pip install -e '.[fuzz]'``.

The existing property tests in tests/test_scenario_load.py mutate the YAML text line
by line; these work on bytes and at the size limits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from figures import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loader_target import (
    MAX_SECONDS,
    MAX_TRACED_MIB,
    ROOT,
    SEEDS,
    Cost,
    check_one,
    measure,
)

from bot.library import LibraryError, load_file
from bot.scenario.load import MAX_FILE_BYTES
from bot.scenario.source import MAX_DEPTH, MAX_WRITTEN

SEED_BYTES = [p.read_bytes() for p in SEEDS]
EXAMPLES = int(os.environ.get("BLOSSOM_FUZZ_EXAMPLES", "300"))
FUZZ_SECONDS = int(os.environ.get("BLOSSOM_FUZZ_SECONDS", "0") or 0)

_TOKENS = [
    b"\n", b": ", b"- ", b"{", b"}", b"[", b"]", b"&a ", b"*a", b"!!python/object ", b"<<: ",
    b"'", b'"', b"\t", b"#", b"---\n", b"...\n", b"\xef\xbb\xbf", b"\x00", b"\xff",
    b"\xe2\x80\xae", b"{city}", b"{", b"+99999999999d", b"9" * 40, b".nan", b"~",
    b"2026-02-30T25:61:00Z", b"!room:x", b"#alias:x", b"geo: 91,181",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEED_BYTES)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "token", "delete", "dup", "splice"]))
        if action == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif action == "token":
            data[pos:pos] = draw(st.sampled_from(_TOKENS))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif action == "dup":
            chunk = bytes(data[pos : pos + draw(st.integers(1, 200))])
            data[pos:pos] = chunk * draw(st.integers(1, 50))
        elif action == "splice":
            other = draw(st.sampled_from(SEED_BYTES))
            cut = draw(st.integers(0, len(other)))
            data = data[:pos] + bytearray(other[cut:])
    return bytes(data)


def test_seeds_are_there() -> None:
    assert len(SEEDS) >= 80, len(SEEDS)


def test_bounded_hypothesis_run() -> None:
    outcomes: Counter[str] = Counter()
    slowest = 0.0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(st.one_of(mutated(), st.binary(max_size=512)))
    def one(data: bytes) -> None:
        nonlocal slowest
        import time

        started = time.perf_counter()
        outcomes[check_one(data)] += 1
        elapsed = time.perf_counter() - started
        slowest = max(slowest, elapsed)
        assert elapsed < MAX_SECONDS, f"{len(data)} bytes took {elapsed:.2f} s"

    one()
    tried = sum(outcomes.values())
    assert tried >= min(EXAMPLES, 50)
    record(
        "bad-input/loader-hypothesis",
        section="Bad input",
        what="Scenario loader: byte mutations and splices of the seed files, and raw bytes "
        "(hypothesis): a scenario or positioned diagnostics, never a traceback",
        tried=tried,
        held=tried,
        unit="files",
        command="BLOSSOM_FUZZ_EXAMPLES=300 .venv/bin/pytest -q tests/fuzz -k hypothesis",
        by_kind=dict(sorted(outcomes.items())),
        measured={"slowest s": round(slowest, 3)},
    )


def _scenario_with_stages(n: int) -> bytes:
    head = (
        "version: 1\nid: big\ntitle: Big\nstart: 2030-01-01T12:00:00Z\ncities:\n"
        "  - {id: c, name: C, timezone: UTC, rooms: ['!r:example.org'],\n"
        "     places: {p: {name: P, geo: '1.5,2.5'}}}\nstages:\n"
    )
    stages = "".join(
        f"  - {{id: s{i}, at: '+{i}m', text: 'Stage {i} at {{p}}', place: p}}\n" for i in range(n)
    )
    return (head + stages).encode()


def _alias_bomb() -> bytes:
    lines = [b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]".encode())
    return b"\n".join(lines)


def _limit(data: bytes) -> bytes:
    return data[:MAX_FILE_BYTES]


BIG_FILES: dict[str, bytes] = {
    "one key a line": _limit(b"a: b\n" * 60_000),
    "one huge plain scalar": _limit(b"title: " + b"x" * MAX_FILE_BYTES),
    "one huge quoted scalar": _limit(b'title: "' + b"x\\n" * 100_000 + b'"'),
    "folded text": _limit(b"title: >\n" + b"  word word word word\n" * 15_000),
    "block list of numbers": _limit(b"stages:\n" + b"- 1\n" * 70_000),
    "flow list of numbers": _limit(b"stages: [" + b"1," * 140_000 + b"]"),
    "flow mappings": _limit(b"cities:\n" + b"- {id: c, name: C, timezone: UTC}\n" * 9_000),
    "distinct keys": _limit(b"".join(b"k%d: %d\n" % (i, i) for i in range(30_000))),
    "anchors": _limit(b"".join(b"k%d: &a%d [1]\n" % (i, i) for i in range(20_000))),
    "aliases": _limit(b"a: &a [1, 2, 3]\nb: [" + b"*a, " * 60_000 + b"]"),
    "alias bomb": _alias_bomb(),
    "nesting at the limit": b"a: " + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1),
    "nesting past the limit": b"a: " + b"[" * 100_000 + b"]" * 100_000,
    "comment only": _limit(b"# " + b"c" * MAX_FILE_BYTES),
    "long lines of keys": _limit(b"".join(b"k" * 2000 + b"%d: 1\n" % i for i in range(200))),
    "invalid UTF-8 at the end": _limit(b"a: b\n" * 52_000)[:-1] + b"\xff",
    "many stages, valid": _scenario_with_stages(800),
    "stages up to the value limit": _limit(_scenario_with_stages(MAX_WRITTEN // 9)),
    "one byte over the size limit": b"#" * (MAX_FILE_BYTES + 1),
}


_COSTS: dict[str, Cost] = {}


def _cost(name: str) -> Cost:
    if name not in _COSTS:
        _COSTS[name] = measure(BIG_FILES[name])
    return _COSTS[name]


@pytest.mark.parametrize("name", list(BIG_FILES))
def test_big_files_within_bounds(name: str) -> None:
    data = BIG_FILES[name]
    cost = _cost(name)
    print(f"{name}: {len(data)} bytes, {cost.outcome}, {cost.seconds:.2f} s, "
          f"{cost.traced_mib:.1f} MiB")
    assert cost.seconds < MAX_SECONDS, f"{name}: {cost.seconds:.2f} s"
    assert cost.traced_mib < MAX_TRACED_MIB, f"{name}: {cost.traced_mib:.1f} MiB"


def test_big_files_figures() -> None:
    costs = {name: _cost(name) for name in BIG_FILES}
    assert costs["many stages, valid"].outcome == "valid"
    assert all(c.seconds < MAX_SECONDS and c.traced_mib < MAX_TRACED_MIB for c in costs.values())
    record(
        "bad-input/loader-bounds",
        section="Bad input",
        what=f"Scenario files at the loader's limits ({MAX_FILE_BYTES // 1024} KiB, "
        f"{MAX_WRITTEN} values, {MAX_DEPTH} levels, alias bombs): each within "
        f"{MAX_SECONDS:g} s and {MAX_TRACED_MIB:g} MiB",
        tried=len(costs),
        held=len(costs),
        unit="files",
        command=".venv/bin/pytest -q -s tests/fuzz -k big_files",
        by_kind=dict(sorted(Counter(c.outcome for c in costs.values()).items())),
        measured={
            "slowest s": round(max(c.seconds for c in costs.values()), 2),
            "largest MiB": round(max(c.traced_mib for c in costs.values()), 1),
        },
    )


def test_library_reads_as_much_as_the_loader_accepts(tmp_path: Path) -> None:
    """A file over the limit is refused whole: never cut to the limit and then
    loaded (a valid beginning would arm a scenario missing its later stages)."""
    valid = _scenario_with_stages(3)
    path = tmp_path / "big.yaml"
    path.write_bytes(valid + b"#" * (MAX_FILE_BYTES + 1 - len(valid) - 1) + b"\n")
    assert path.stat().st_size == MAX_FILE_BYTES + 1
    with pytest.raises(LibraryError):
        load_file(path)
    path.write_bytes(valid + b"#" * (MAX_FILE_BYTES - len(valid) - 1) + b"\n")
    assert load_file(path).scenario.id == "big"


@pytest.mark.skipif(not FUZZ_SECONDS, reason="set BLOSSOM_FUZZ_SECONDS to run atheris")
def test_atheris(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="pip install -e '.[fuzz]'")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    harness = Path(__file__).with_name("fuzz_scenario_loader.py")
    proc = subprocess.run(
        [
            sys.executable,
            str(harness),
            f"-max_total_time={FUZZ_SECONDS}",
            "-rss_limit_mb=2048",
            f"-timeout={int(MAX_SECONDS * 2)}",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
            str(ROOT / "tests" / "invalid"),
            str(ROOT / "scenarios"),
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 300,
        check=False,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    runs = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr)
    assert runs, tail
    record(
        "bad-input/loader-atheris",
        section="Bad input",
        what="Scenario loader under coverage-guided fuzzing (atheris/libFuzzer), "
        f"per-input bound {int(MAX_SECONDS * 2)} s and 2048 MB RSS",
        tried=int(runs.group(1)),
        held=int(runs.group(1)),
        unit="inputs",
        command=f"BLOSSOM_FUZZ_SECONDS={FUZZ_SECONDS} .venv/bin/pytest -q tests/fuzz -k atheris",
        measured={"seconds": int(runs.group(2)), "corpus files": len(list(corpus.iterdir()))},
    )
