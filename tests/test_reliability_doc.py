"""The figures table: rendered from recorded rows only, prose kept, and the committed
docs/reliability.md current with docs/reliability.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot.devtools.reliability import END, FiguresError, load_rows, main, regenerate, render_table

ROOT = Path(__file__).resolve().parent.parent

ROWS = {
    "leaks/x": {"section": "Leaks", "what": "searched | everywhere", "tried": 7, "held": 7,
                "unit": "searches", "command": "pytest -q tests/test_leaks.py",
                "by_kind": {"a": 3, "b": 4}, "measured": {"leaks found": 0, "s": 0.25},
                "date": "2026-01-02", "commit": "abc1234"},
    "faults/y": {"section": "Faults", "what": "kills", "tried": 20, "held": 19,
                 "unit": "kills", "command": "pytest -q -k kill", "date": "2026-01-02",
                 "commit": "abc1234"},
}


def test_table_from_rows() -> None:
    table = render_table(ROWS)
    assert "**26 of 27** attempts held" in table
    assert table.index("### Faults") < table.index("### Leaks")  # the order
    assert "| searched \\| everywhere | 7 searches | 7 | 0 | a 3, b 4; leaks found 0, s 0.25 |" \
        in table
    assert "| kills | 20 kills | 19 | 1 |" in table
    assert table.endswith(END)


def test_regenerate_keeps_prose_and_is_idempotent() -> None:
    doc = "# Title\n\nProse.\n\n" + render_table({}) + "\n\n## After\n\nMore prose.\n"
    new = regenerate(doc, ROWS)
    assert new.startswith("# Title\n\nProse.\n\n") and new.endswith("## After\n\nMore prose.\n")
    assert regenerate(new, ROWS) == new
    assert "No figures recorded yet" in render_table({})
    assert regenerate("# Bare\n", ROWS).startswith("# Bare\n\n<!-- figures:start")


def test_bad_results_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"rows": {"x": {"section": "Leaks", "tried": "7"}}}))
    with pytest.raises(FiguresError):
        load_rows(path)
    assert load_rows(tmp_path / "missing.json") == {}
    assert main(["--results", str(path), "--doc", str(tmp_path / "d.md")]) == 2


@pytest.mark.skipif(
    bool(os.environ.get("BLOSSOM_FIGURES")),
    reason="recording in progress; make figures regenerates the document afterwards",
)
def test_committed_doc_is_current() -> None:
    assert main([
        "--results", str(ROOT / "docs" / "reliability.json"),
        "--doc", str(ROOT / "docs" / "reliability.md"),
        "--check",
    ]) == 0, "run: python -m bot.devtools.reliability"
