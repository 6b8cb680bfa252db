"""The scenario files in ``scenarios.dir``, found by scenario id.

Files are read afresh on each lookup: organisers edit them between arming
runs, and a restart re-reads the exact file a run was armed from (checked by
SHA-256, since the database keeps no scenario text).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from bot.scenario import Diagnostic, Scenario, ScenarioError, load_scenario_text
from bot.scenario.load import MAX_FILE_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedScenario:
    path: Path
    sha256: str
    scenario: Scenario


class LibraryError(Exception):
    def __init__(self, message: str, diagnostics: list[Diagnostic] | None = None) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics or []


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def load_file(path: Path) -> LoadedScenario:
    try:
        data = _read(path)
    except OSError as err:
        raise LibraryError(f"{path.name}: cannot read ({err.__class__.__name__})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        scenario = load_scenario_text(data, filename=path.name)
    except ScenarioError as err:
        raise LibraryError(f"{path.name} is not valid", err.diagnostics) from None
    return LoadedScenario(path, digest, scenario)


def uses_pods_or_roles(scenario: Scenario) -> bool:
    return bool(scenario.roles) or any(c.pods for c in scenario.cities)


class ScenarioLibrary:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p for p in self.directory.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file()
        )

    def all_valid(self) -> list[LoadedScenario]:
        found: list[LoadedScenario] = []
        for path in self.files():
            try:
                found.append(load_file(path))
            except LibraryError as err:
                log.debug("skipping %s: %s", path.name, err)
        return found

    def find(self, scenario_id: str) -> LoadedScenario:
        """The valid scenario with this id. Raises LibraryError with the file's
        diagnostics if the only file with that id is invalid."""
        invalid: LibraryError | None = None
        matches: list[LoadedScenario] = []
        for path in self.files():
            try:
                loaded = load_file(path)
            except LibraryError as err:
                if path.stem == scenario_id:
                    invalid = err
                continue
            if loaded.scenario.id == scenario_id:
                matches.append(loaded)
        if len(matches) > 1:
            names = ", ".join(m.path.name for m in matches)
            raise LibraryError(f"scenario id {scenario_id} is defined by several files: {names}")
        if matches:
            return matches[0]
        if invalid is not None:
            raise invalid
        raise LibraryError(f"no scenario with id {scenario_id} in the scenarios directory")

    def opt_in_facts(self) -> tuple[set[str], bool]:
        """For an invite, from one read of the directory: every room id or alias a
        valid scenario lists, and whether any city takes private (DM) participants."""
        valid = self.all_valid()
        listed = {
            room
            for ls in valid
            for c in ls.scenario.cities
            for room in (*c.rooms, *(r for pod in c.all_pods for r in pod.rooms))
        }
        return listed, any(c.direct for ls in valid for c in ls.scenario.cities)
