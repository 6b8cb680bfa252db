"""What the demo knows while it runs, and the summary it ends with. Pure.

The orchestration (:mod:`bot.devtools.demo.run`) feeds this model; the views
(:mod:`bot.devtools.demo.view`) only read it. Nothing here touches the network or the
clock: instants are passed in.

Secret until release: the model only ever holds stage content that a
participant *received*, i.e. content that was released.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.scenario import Scenario, build_timeline

TEXT = "text"
LOCATION = "location"


@dataclass(frozen=True)
class ExpectedDispatch:
    """One stage due in one city, with the parts its rooms must each get once."""

    city_id: str
    stage_id: str
    stage_index: int
    due: datetime
    """On the bot's (scaled) clock, UTC."""
    due_wall: datetime
    """The real instant at which the bot's clock reads ``due``."""
    parts: tuple[str, ...]
    gated: bool


def expected_dispatches(
    scenario: Scenario, to_wall: Callable[[datetime], datetime]
) -> list[ExpectedDispatch]:
    """Every (city, stage) of ``scenario`` in release order, with its parts."""
    result = []
    for d in build_timeline(scenario):
        city = scenario.city(d.city_id)
        stage = scenario.stages[d.stage_index]
        parts: tuple[str, ...] = (TEXT,)
        if stage.place is not None:
            place = city.places.get(stage.place)
            if place is not None and place.geo is not None:
                parts = (TEXT, LOCATION)
        result.append(
            ExpectedDispatch(
                city_id=d.city_id,
                stage_id=d.stage_id,
                stage_index=d.stage_index,
                due=d.at,
                due_wall=to_wall(d.at),
                parts=parts,
                gated=stage.require is not None,
            )
        )
    return result


def checkin_stages(scenario: Scenario) -> set[str]:
    """Stages after which participants check in: each one right before a gated stage."""
    return {
        scenario.stages[i - 1].id
        for i, stage in enumerate(scenario.stages)
        if stage.require is not None and i > 0
    }


@dataclass(frozen=True)
class Receipt:
    """One stage event as a participant's client received it."""

    city_id: str
    participant: str
    stage_id: str
    part: str
    body: str
    arrived: datetime
    """Real time the participant's client got it from sync."""
    lateness_s: float
    """``arrived`` minus the scheduled real instant, in seconds."""


@dataclass
class CityState:
    id: str
    name: str
    timezone: str
    room_id: str = ""
    participants: list[str] = field(default_factory=list)
    # participant -> "sent" | "acknowledged"
    checkins: dict[str, str] = field(default_factory=dict)
    released_by_organiser: set[str] = field(default_factory=set)


@dataclass
class DemoState:
    scenario_id: str = ""
    speed: float = 1.0
    phase: str = "starting"
    cities: list[CityState] = field(default_factory=list)
    expected: list[ExpectedDispatch] = field(default_factory=list)
    receipts: dict[tuple[str, str, str, str], Receipt] = field(default_factory=dict)
    """(city, stage, part, participant) -> first receipt."""
    duplicates: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    notices: list[str] = field(default_factory=list)
    """First lines of the bot's messages in the control room (ids, never content)."""
    log: list[tuple[str, str]] = field(default_factory=list)
    """(kind, line) of every event, in order."""
    homeserver_url: str = ""
    workdir: str = ""
    started_wall: datetime | None = None
    listeners: list[Callable[[str, str], None]] = field(default_factory=list)
    """Called with (kind, line) for every event: the plain view prints them."""

    def city(self, city_id: str) -> CityState:
        return next(c for c in self.cities if c.id == city_id)

    def emit(self, kind: str, line: str) -> None:
        self.log.append((kind, line))
        for listener in self.listeners:
            listener(kind, line)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.emit("phase", phase)

    def expected_for(self, city_id: str, stage_id: str) -> ExpectedDispatch | None:
        return next(
            (e for e in self.expected if e.city_id == city_id and e.stage_id == stage_id), None
        )

    def record(self, receipt: Receipt) -> bool:
        """Store a receipt; False (and counted) if that participant had it already."""
        key = (receipt.city_id, receipt.stage_id, receipt.part, receipt.participant)
        if key in self.receipts:
            self.duplicates[key] += 1
            return False
        self.receipts[key] = receipt
        return True

    def received(self, city_id: str, stage_id: str, part: str = TEXT) -> list[Receipt]:
        return [
            r
            for (c, s, p, _), r in self.receipts.items()
            if c == city_id and s == stage_id and p == part
        ]

    def all_received(self) -> bool:
        """Every participant has every part of every dispatch."""
        for e in self.expected:
            for part in e.parts:
                got = {r.participant for r in self.received(e.city_id, e.stage_id, part)}
                if not set(self.city(e.city_id).participants) <= got:
                    return False
        return True


@dataclass(frozen=True)
class Summary:
    scenario_id: str
    cities: int
    participants: int
    speed: float
    dispatches: int
    """(city, stage) pairs the scenario defines."""
    delivered: int
    """Of those, how many are in their room exactly once, every part."""
    events_counted: int
    """Stage events counted in the rooms (each carries the dispatch key)."""
    problems: tuple[str, ...]
    """Missing or duplicate parts, receipts missing at a participant."""
    max_lateness_s: float
    """Largest delay from a scheduled instant to a participant's client."""
    released_by_organiser: tuple[str, ...]
    """``city/stage`` gates the organiser released by hand (not counted as late)."""
    checkins: Mapping[str, int]
    elapsed_s: float
    workdir: str
    logs: Mapping[str, str]
    plan_svg: str

    @property
    def ok(self) -> bool:
        return not self.problems and self.delivered == self.dispatches

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scenario": self.scenario_id,
            "cities": self.cities,
            "participants": self.participants,
            "speed": self.speed,
            "dispatches": self.dispatches,
            "delivered_exactly_once": self.delivered,
            "events_counted": self.events_counted,
            "problems": list(self.problems),
            "max_lateness_s": round(self.max_lateness_s, 3),
            "released_by_organiser": list(self.released_by_organiser),
            "checkins": dict(self.checkins),
            "elapsed_s": round(self.elapsed_s, 1),
            "workdir": self.workdir,
            "logs": dict(self.logs),
            "plan_svg": self.plan_svg,
        }


def count_room(events: Iterable[Mapping[str, Any]], dispatch_key: str) -> Counter[tuple[str, str]]:
    """(stage, part) -> how many events in a room's timeline carry ``dispatch_key``."""
    counts: Counter[tuple[str, str]] = Counter()
    for content in events:
        tag = content.get(dispatch_key)
        if isinstance(tag, dict):
            counts[(str(tag.get("stage")), str(tag.get("part")))] += 1
    return counts


def summarise(
    state: DemoState,
    room_counts: Mapping[str, Counter[tuple[str, str]]],
    *,
    elapsed_s: float,
    workdir: str,
    logs: Mapping[str, str],
    plan_svg: str,
) -> Summary:
    """Check every room against the plan: each part of each dispatch exactly once."""
    problems: list[str] = []
    delivered = 0
    counted = 0
    for city in state.cities:
        counts = room_counts.get(city.id, Counter())
        counted += sum(counts.values())
        wanted = {(e.stage_id, p) for e in state.expected if e.city_id == city.id for p in e.parts}
        for key, n in sorted(counts.items()):
            if key not in wanted:
                problems.append(f"{city.id}: unexpected {key[0]}/{key[1]} ({n}x)")
        for e in (e for e in state.expected if e.city_id == city.id):
            once = True
            for part in e.parts:
                n = counts.get((e.stage_id, part), 0)
                if n != 1:
                    once = False
                    problems.append(f"{city.id}: {e.stage_id}/{part} is in the room {n} times")
                got = {r.participant for r in state.received(city.id, e.stage_id, part)}
                for who in city.participants:
                    if who not in got:
                        problems.append(f"{city.id}: {who} did not receive {e.stage_id}/{part}")
            delivered += once
    for (city_id, stage_id, part, who), n in sorted(state.duplicates.items()):
        problems.append(f"{city_id}: {who} received {stage_id}/{part} {n + 1} times")
    by_hand = tuple(sorted(f"{c.id}/{s}" for c in state.cities for s in c.released_by_organiser))
    lateness = [
        r.lateness_s for (c, s, _, _), r in state.receipts.items() if f"{c}/{s}" not in by_hand
    ]
    return Summary(
        scenario_id=state.scenario_id,
        cities=len(state.cities),
        participants=sum(len(c.participants) for c in state.cities),
        speed=state.speed,
        dispatches=len(state.expected),
        delivered=delivered,
        events_counted=counted,
        problems=tuple(problems),
        max_lateness_s=max(lateness, default=0.0),
        released_by_organiser=by_hand,
        checkins={c.id: len(c.checkins) for c in state.cities},
        elapsed_s=elapsed_s,
        workdir=workdir,
        logs=logs,
        plan_svg=plan_svg,
    )
