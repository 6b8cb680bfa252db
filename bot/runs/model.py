"""What an armed run is, for the run manager's parts; pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from bot.clock import Clock
from bot.library import LoadedScenario
from bot.report import PlanLine
from bot.runs import lanes
from bot.scenario import Dispatch, Place, Scenario, Stage
from bot.scenario.templates import parse_template
from bot.store import RunRow

DEFAULT_ABORT_TEXT = (
    "STOP. The action in {city} is called off. Do not go on. Leave calmly, "
    "in small groups, and go home."
)


class ArmError(Exception):
    """A command cannot be carried out; the message is for the control room (ids only)."""


@dataclass
class ArmedRun:
    run: RunRow
    loaded: LoadedScenario
    clock: Clock
    # city or lane (``hk/mongkok``) -> place_id -> replacement (from !redirect)
    place_overrides: dict[str, dict[str, Place]] = field(default_factory=dict)
    # Held cities and lanes (bot/runs/lanes.py: a city's hold holds its pods).
    held_cities: set[str] = field(default_factory=set)
    # city or lane -> how far !delay moved it
    delays: dict[str, timedelta] = field(default_factory=dict)

    @cached_property
    def units(self) -> dict[tuple[str, str], Dispatch]:
        """(lane, unit) of every scenario dispatch → who it reaches."""
        return lanes.unit_index(self.scenario)

    def overrides_for(self, lane: str) -> dict[str, Place] | None:
        return lanes.lane_overrides(self.scenario, self.place_overrides, lane)

    def delay_for(self, lane: str) -> timedelta | None:
        return lanes.lane_delay(self.delays, lane)

    @property
    def scenario_id(self) -> str:
        return self.run.scenario_id

    @property
    def scenario(self) -> Scenario:
        return self.loaded.scenario

    @property
    def drill_room(self) -> str | None:
        return self.run.drill_room

    @property
    def run_key(self) -> str:
        return self.run.run_key

    def label(self) -> str:
        return f"[drill] {self.scenario_id}" if self.drill_room else self.scenario_id


@dataclass(frozen=True)
class ArmPreview:
    """What ``!arm`` would do, computed without side effects: the masked plan,
    what stands in the way, and which past stages would go out or not."""

    scenario_id: str
    drill: bool
    start: datetime
    now: datetime
    lines: tuple[PlanLine, ...]
    # Listed rooms that will not be served (confirmable: the organiser may go on).
    problems: tuple[str, ...] = ()
    # What makes arming impossible (a room in two cities): no confirmation helps.
    refusals: tuple[str, ...] = ()
    # Pre-flight: fan-outs that cannot finish before the next stage.
    warnings: tuple[str, ...] = ()
    # Past (city, stage) an earlier run already sent: not sent again unless resend.
    withheld: tuple[tuple[str, str], ...] = ()
    # Past (city, stage) that would go out at once under their late policy.
    past_now: tuple[tuple[str, str], ...] = ()
    start_at: datetime | None = None
    resend: bool = False
    # Private participants whose pod is not a pod of their city (bot/runs/pods.py):
    # counted by the preview, (re)assigned when armed; ``unplaced``: every pod full.
    stale_pods: int = 0
    unplaced: int = 0

    @property
    def needs_confirm(self) -> bool:
        """Whether ``!arm`` must wait for ``confirm``: a problem, a pre-flight
        warning, or a past stage that would be sent at once without being asked."""
        past_unasked = bool(self.past_now) and not self.resend
        return not self.drill and bool(self.problems or self.warnings or past_unasked)

    @property
    def to_schedule(self) -> int:
        return len(self.lines) - len(self.withheld)


def mentions_place(stage: Stage, place_id: str) -> bool:
    """Whether a stage reveals ``place_id``: as its place or in any of its texts."""
    if stage.place == place_id:
        return True
    texts = [stage.text] if isinstance(stage.text, str) else list(stage.text.values())
    for text in texts:
        for ph in parse_template(text).placeholders():
            if ph.place == place_id:
                return True
    return False
