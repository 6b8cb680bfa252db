"""Cross-checks of a stage's text mapping: its keys, and that everyone it reaches has
an entry. Part of :func:`bot.scenario.semantics.check`.

Keys are city ids, role ids, ``city.role`` and ``default``; who reads which entry
is :func:`bot.scenario.audience.text_key`. Without roles the messages are the
ones the format always had.
"""

from __future__ import annotations

from bot.scenario.audience import reaches, text_key
from bot.scenario.model import City, Scenario, Stage
from bot.scenario.source import Path

KeyProblem = tuple[Path, str, bool]  # path, message, point at the key


def _everyone(scenario: Scenario) -> tuple[str | None, ...]:
    return (None, *scenario.role_ids)


def cities_reading(scenario: Scenario, stage: Stage, key: str) -> tuple[City, ...]:
    """The cities where someone ``stage`` reaches reads the entry ``key``."""
    return tuple(
        city
        for city in scenario.cities
        if any(reaches(stage, a) and text_key(stage, city, a) == key for a in _everyone(scenario))
    )


def _phrase(ids: list[str]) -> str:
    quoted = ", ".join(f"'{i}'" for i in ids)
    return f"city {quoted}" if len(ids) == 1 else f"cities {quoted}"


def check_keys(scenario: Scenario, base: Path, stage: Stage) -> list[KeyProblem]:
    assert not isinstance(stage.text, str)
    problems: list[KeyProblem] = []
    cities = {c.id for c in scenario.cities}
    roles = set(scenario.role_ids)
    for key in stage.text:
        city, dot, role = key.partition(".")
        role_of = role if dot else (key if key in roles else None)
        known = key == "default" or key in cities or key in roles
        known = known or (bool(dot) and city in cities and role in roles)
        path: Path = (*base, "text", key)
        if not known and not scenario.roles:
            problems.append((path, f"no city '{key}' (text keys are city ids or 'default')", True))
        elif not known:
            problems.append(
                (
                    path,
                    f"no city or role '{key}' (text keys are city ids, role ids, "
                    "CITY.ROLE or 'default')",
                    True,
                )
            )
        elif role_of is not None and not reaches(stage, role_of):
            assert stage.roles is not None
            problems.append(
                (
                    path,
                    f"text for role '{role_of}', but the stage is only for "
                    f"{', '.join(stage.roles)}",
                    True,
                )
            )
    problems += _coverage(scenario, base, stage)
    return problems


def _coverage(scenario: Scenario, base: Path, stage: Stage) -> list[KeyProblem]:
    """Everyone the stage reaches, in every city, has an entry to read."""
    problems: list[KeyProblem] = []
    for audience in _everyone(scenario):
        if not reaches(stage, audience):
            continue
        uncovered = [c.id for c in scenario.cities if text_key(stage, c, audience) is None]
        if not uncovered:
            continue
        whom = _phrase(uncovered)
        if audience is not None:
            whom = f"role '{audience}' in {whom}"
        problems.append(
            ((*base, "text"), f"no text for {whom} (add an entry or a 'default')", False)
        )
    return problems
