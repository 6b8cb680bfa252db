"""Which run and which cities a command means. Pure, over the armed runs.

Rules (docs/organisers.md, "Naming a city, a drill or the live run"):

- A city id matches whatever its case (``North`` is ``north``).
- ``all`` in the city position means every city.
- With a drill and the live run of one scenario armed together, a command that
  names only the scenario is refused; ``drill`` or ``live`` after the scenario
  says which. With one of them armed, that one is meant.
- ``!abort <scenario>`` alone stops every city with the scenario's stop message.
  Anything after the scenario must start with a city or ``all``: a word that is
  not a city is refused, never taken for the message, so a typo can neither
  widen an abort nor be sent to participants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.control.parse import SLUG
from bot.runs import ArmedRun, ArmError, RunManager
from bot.text import control as text

ALL = "all"
DRILL, LIVE = "drill", "live"


def match_city(city_ids: Sequence[str], word: str) -> str | None:
    lowered = word.lower()
    return next((c for c in city_ids if c == lowered), None)


def _quotable(word: str) -> str | None:
    # Only an id-shaped word is quoted back; anything else may be content.
    lowered = word.lower()
    return lowered if SLUG.match(lowered) else None


def match_target(armed: ArmedRun, word: str) -> str | None:
    """The city (``hk``) or pod (``hk/mongkok``) a word names, or None. A pod is
    named by its city and its id; the run manager reads a city as all its pods."""
    city_word, slash, pod_word = word.partition("/")
    found = match_city([c.id for c in armed.scenario.cities], city_word)
    if found is None or not slash:
        return found
    pods = [p.id for p in armed.scenario.city(found).all_pods]
    pod = match_city(pods, pod_word)
    if pod is None:
        raise ArmError(text.no_such_pod(armed.scenario_id, found, pods, _quotable(pod_word)))
    return f"{found}/{pod}"


def resolve_cities(armed: ArmedRun, word: str | None, *, allow_all: bool = True) -> list[str]:
    """The cities a city argument names: every city for none (or ``all``), else
    the one it matches (or the one pod: ``hk/mongkok``); ArmError naming the
    cities (or the city's pods) if it matches none."""
    ids = [c.id for c in armed.scenario.cities]
    if word is None or (allow_all and word.lower() == ALL):
        return ids
    found = match_target(armed, word)
    if found is None:
        raise ArmError(text.no_such_city(armed.scenario_id, ids, _quotable(word)))
    return [found]


def abort_cities(armed: ArmedRun, word: str | None, message: str | None, which: str) -> list[str]:
    """The cities of an !abort. ``which`` is how the run was named (" drill", or "")."""
    ids = [c.id for c in armed.scenario.cities]
    if word is None and message is None:
        return ids  # `!abort rd` alone: every city, the scenario's stop message
    if word is not None:
        if word.lower() == ALL:
            return ids
        found = match_target(armed, word)
        if found is not None:
            return [found]
    raise ArmError(text.abort_needs_city(armed.scenario_id, ids, which))


@dataclass(frozen=True)
class Picked:
    armed: ArmedRun
    both: bool  # a drill and the live run are armed together

    def say(self, reply: str) -> str:
        """Every reply says which run it acted on while both are armed."""
        if self.both and self.armed.drill_room is None:
            return text.live_prefix(reply)
        return reply


def pick_run(
    runs: RunManager, scenario_id: str, which: str | None, retype: tuple[str, str]
) -> Picked:
    """The run a command means. ``retype`` is the command as it would be typed
    for the drill and for the live run (for the refusal when both are armed)."""
    live = runs.by_scenario(scenario_id)
    drill = runs.by_scenario(scenario_id, drill=True)
    both = live is not None and drill is not None
    kind = which.lower() if which else None
    if kind == DRILL:
        chosen = drill
    elif kind == LIVE:
        chosen = live
    elif both:
        raise ArmError(text.name_the_run(scenario_id, retype))
    else:
        chosen = live or drill
    if chosen is None:
        raise ArmError(text.not_armed(scenario_id, kind))
    return Picked(chosen, both)
