"""``blossom validate``: check files and report like a compiler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bot.scenario.diagnostics import ScenarioError
from bot.scenario.load import load_scenario_file


def validate_paths(paths: Sequence[Path], echo: Callable[[str], None]) -> int:
    """Check every file; print ``FILE: ok`` or one line per problem.

    Returns the exit status: 0 when all are valid, 1 when any is not (a file
    that cannot be read counts as invalid, and the others are still checked).
    """
    status = 0
    for path in paths:
        try:
            load_scenario_file(path)
        except ScenarioError as exc:
            status = 1
            for diagnostic in exc.diagnostics:
                echo(str(diagnostic))
        else:
            echo(f"{path}: ok")
    return status
