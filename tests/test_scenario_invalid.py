"""The invalid corpus: every file under tests/invalid/ must fail with exactly the
diagnostics its ``# expect: LINE:COL: message`` header lines name, in that order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.scenario import ScenarioError, load_scenario_file

CORPUS = Path(__file__).parent / "invalid"
_EXPECT = re.compile(rb"^# expect: (\d+):(\d+): (.*)$")


def _expected(path: Path) -> list[tuple[int, int, str]]:
    expected = []
    for line in path.read_bytes().splitlines():
        match = _EXPECT.match(line)
        if match is None:
            break
        expected.append((int(match[1]), int(match[2]), match[3].decode()))
    return expected


FILES = sorted(CORPUS.glob("*.yaml"))


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 40


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_file(path: Path) -> None:
    expected = _expected(path)
    assert expected, f"{path.name} has no '# expect:' header"
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    diagnostics = caught.value.diagnostics
    assert all(d.file == str(path) for d in diagnostics)
    assert [(d.line, d.col, d.message) for d in diagnostics] == expected
    assert str(caught.value) == "\n".join(
        f"{path}:{line}:{col}: {message}" for line, col, message in expected
    )
