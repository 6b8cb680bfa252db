"""The figures table: rendered from recorded rows only, prose kept, the homeserver's
guarantees apart, rows recorded on older bot/ code found with git, and the committed
docs/reliability.md current with docs/reliability.json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bot.devtools.reliability import (
    DIRTY,
    END,
    FiguresError,
    bot_fingerprint,
    load,
    load_rows,
    main,
    regenerate,
    render_table,
    stale_rows,
)

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
    rows = {**ROWS, "hostile/z": {
        "section": "Hostile users", "what": "power games", "tried": 5, "unit": "actions",
        "homeserver": {"power-level edit refused": 1}, "command": "pytest -k non_core",
        "date": "2026-01-03", "commit": "def5678"}}
    status = {"commit": "fff0000", "bot_last_changed": "def5678 (2026-01-03)",
              "rows": {"leaks/x": "changed", "faults/y": "unknown", "hostile/z": "unchanged"}}
    table = render_table(rows, status)
    assert "**32** attempts the bot withstood, over 3 rows" in table
    assert "every one held, since a row is written only when its suite passed" in table
    assert "**1** held by the homeserver, not the bot" in table
    assert "1 rows recorded on that code, 2 on older or unknown code" in table
    assert table.index("### Faults") < table.index("### Hostile users") < table.index("### Leaks")
    assert ("| searched \\| everywhere | 7 searches | - | a 3, b 4; leaks found 0, s 0.25 | "
            "2026-01-02, abc1234 | **yes** |") in table
    assert "| kills | 20 kills | - | - | 2026-01-02, abc1234 | unknown |" in table
    assert ("| power games | 5 actions | power-level edit refused 1 | - | "
            "2026-01-03, def5678 | no |") in table
    assert "| not checked |" in render_table(rows)  # no git: said so
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
    """The document is what the results file says (rows and the check recorded in it).
    Whether the rows are still current is --check's other half (git), for the lead."""
    results = load(ROOT / "docs" / "reliability.json")
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert regenerate(doc, results.rows, results.as_of) == doc, \
        "run: python -m bot.devtools.reliability"


def _git(repo: Path, *argv: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


def _commit(repo: Path, path: str, text: str) -> str:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", path)
    return _git(repo, "rev-parse", "--short", "HEAD")


def test_rows_older_than_the_bots_last_change_are_reported(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    first = _commit(repo, "bot/core.py", "one\n")
    row = {"section": "Faults", "what": "w", "tried": 1, "date": "2026-01-01",
           "commit": first, "bot_fingerprint": bot_fingerprint(repo)}
    old_style = {"section": "Faults", "what": "w", "tried": 1, "commit": first}
    lost = {"section": "Faults", "what": "w", "tried": 1, "commit": "0123456"}
    rows = {"a/fingerprinted": row, "b/commit-only": old_style, "c/rebased-away": lost}
    _commit(repo, "bot/devtools/demo.py", "not the bot\n")
    _commit(repo, "docs/x.md", "prose\n")
    assert [line.split(":")[0] for line in stale_rows(repo, rows)] == ["c/rebased-away"]
    changed = _commit(repo, "bot/core.py", "two\n")
    stale = stale_rows(repo, rows)
    assert [line.split(":")[0] for line in stale] == list(rows)
    assert f"bot/ has changed since (last change {changed} (" in stale[0]
    (repo / "bot" / "core.py").write_text("three, uncommitted\n")
    assert bot_fingerprint(repo) == DIRTY
    assert "cannot tell which code" in stale_rows(repo, {"a": row})[0]
    # --check names them and fails; without git it says so and exits 2.
    results, doc = repo / "r.json", repo / "d.md"
    results.write_text(json.dumps({"rows": rows}))
    assert main(["--results", str(results), "--doc", str(doc), "--repo", str(repo)]) == 0
    assert main(["--results", str(results), "--doc", str(doc), "--repo", str(repo),
                 "--check"]) == 1
    elsewhere = tmp_path / "not-a-checkout"
    elsewhere.mkdir()
    assert main(["--results", str(results), "--doc", str(doc), "--repo", str(elsewhere),
                 "--check"]) == 2


def test_check_passes_when_every_row_is_on_the_current_code(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    commit = _commit(repo, "bot/core.py", "one\n")
    rows = {"a/b": {"section": "Leaks", "what": "w", "tried": 2, "commit": commit,
                    "bot_fingerprint": bot_fingerprint(repo)}}
    results, doc = tmp_path / "r.json", tmp_path / "d.md"
    results.write_text(json.dumps({"rows": rows}))
    args = ["--results", str(results), "--doc", str(doc), "--repo", str(repo)]
    assert main(args) == 0
    assert load(results).as_of == {"commit": commit, "bot_last_changed": f"{commit} (" +
                                   _git(repo, "log", "-1", "--format=%cs") + ")",
                                   "rows": {"a/b": "unchanged"}}
    assert "| 2026" not in doc.read_text() and "| no |" in doc.read_text()
    assert main([*args, "--check"]) == 0, capsys.readouterr().err
