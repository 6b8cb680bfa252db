"""The plan: every dispatch of a scenario in release order, for people to check.

``build_plan`` is pure (``now`` is passed in); ``plan_json`` and ``plan_table``
present it. Stage text and places are secret until their release: a row only
carries them when the caller asks to reveal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.table import Table
from rich.text import Text

from bot.scenario.durations import format_until
from bot.scenario.model import City, Place, Pod, Scenario
from bot.scenario.render import RenderedStage, effective_places, render_stage
from bot.scenario.timeline import build_timeline, lane_id

MASK = "••• secret until release"


@dataclass(frozen=True)
class PlanRow:
    scenario: str
    city: str
    city_name: str
    stage: str
    stage_index: int
    at_utc: datetime
    at_local: datetime
    """The same instant in the city's zone."""
    timezone: str
    rooms: tuple[str, ...]
    until: timedelta
    """From ``now`` to the instant; negative when it is past."""
    content: RenderedStage | None = None
    """Only when revealed."""
    place: Place | None = None
    """Only when revealed, and only if the stage has a place."""
    pod: str | None = None
    """The pod (its places); None: a city without pods."""
    audiences: tuple[str | None, ...] = (None,)
    """Who gets this row's text: role ids, None for no role."""
    variant: str | None = None
    """The role variant (:attr:`bot.scenario.timeline.Dispatch.variant`)."""

    @property
    def past(self) -> bool:
        return self.until < timedelta(0)

    @property
    def roles_label(self) -> str:
        """``front, support``; ``no role`` for people without one."""
        return ", ".join(a if a is not None else "no role" for a in self.audiences)

    @property
    def stage_label(self) -> str:
        """The stage id, and whom this row is for when that is not simply everyone."""
        if self.variant is None and self.audiences == (None,):
            return self.stage
        return f"{self.stage} · {self.roles_label}"


def build_plan(
    scenario: Scenario,
    now: datetime,
    *,
    city: str | None = None,
    reveal: bool = False,
    pod: str | None = None,
    role: str | None = None,
) -> list[PlanRow]:
    """One row per dispatch (city × pod × stage × role variant that differs; for a
    scenario without pods or roles, per city × stage) in release order. ``city``
    keeps one city, ``pod`` one pod (``mongkok`` or ``hk/mongkok``), ``role`` the
    rows that role gets.

    Raises ``KeyError`` for an unknown ``city``, ``pod`` or ``role``.
    """
    if city is not None:
        scenario.city(city)  # raises KeyError for an unknown id
    if pod is not None and not any(_pod_matches(pod, c.id, p.id) for c, p in _pods(scenario)):
        raise KeyError(pod)
    if role is not None and role not in scenario.role_ids:
        raise KeyError(role)
    rows = []
    for dispatch in build_timeline(scenario):
        if city is not None and dispatch.city_id != city:
            continue
        if pod is not None and not (
            dispatch.pod_id is not None and _pod_matches(pod, dispatch.city_id, dispatch.pod_id)
        ):
            continue
        if role is not None and role not in dispatch.audiences:
            continue
        the_city = scenario.city(dispatch.city_id)
        stage = scenario.stages[dispatch.stage_index]
        content = place = None
        if reveal:
            content = render_stage(
                scenario,
                the_city.id,
                stage.id,
                pod=dispatch.pod_id,
                role=dispatch.audiences[0],
            )
            the_pod = the_city.pod(dispatch.pod_id) if dispatch.pod_id else None
            place = effective_places(the_city, the_pod).get(stage.place) if stage.place else None
        rows.append(
            PlanRow(
                scenario=scenario.id,
                city=the_city.id,
                city_name=the_city.name,
                stage=stage.id,
                stage_index=dispatch.stage_index,
                at_utc=dispatch.at,
                at_local=dispatch.at.astimezone(the_city.tz),
                timezone=the_city.timezone,
                rooms=dispatch.rooms,
                until=dispatch.at - now,
                content=content,
                place=place,
                pod=dispatch.pod_id,
                audiences=dispatch.audiences,
                variant=dispatch.variant,
            )
        )
    return rows


def _pods(scenario: Scenario) -> list[tuple[City, Pod]]:
    return [(c, p) for c in scenario.cities for p in c.pods or ()]


def _pod_matches(wanted: str, city_id: str, pod_id: str) -> bool:
    return wanted in (pod_id, lane_id(city_id, pod_id))


def has_pods(scenario: Scenario) -> bool:
    return any(c.pods for c in scenario.cities)


def _utc_iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _place_json(place: Place) -> dict[str, Any]:
    return {
        "id": place.id,
        "name": place.name,
        "geo": list(place.geo) if place.geo else None,
        "geo_uri": place.geo_uri(),
        "note": place.note,
    }


def plan_json(
    rows: list[PlanRow], *, reveal: bool = False, scenario: Scenario | None = None
) -> list[dict[str, Any]]:
    """The rows as JSON-ready objects; ``text`` and ``place`` only with ``reveal``;
    ``pod`` and ``roles`` when ``scenario`` has pods or roles."""
    pods = scenario is not None and has_pods(scenario)
    roles = scenario is not None and bool(scenario.roles)
    result = []
    for row in rows:
        item: dict[str, Any] = {
            "scenario": row.scenario,
            "city": row.city,
            "stage": row.stage,
            "at_utc": _utc_iso(row.at_utc),
            "at_local": row.at_local.isoformat(),
            "timezone": row.timezone,
            "rooms": list(row.rooms),
            "until_seconds": int(row.until.total_seconds()),
            "past": row.past,
        }
        if pods:
            item["pod"] = row.pod
        if roles:
            item["roles"] = list(row.audiences)
            item["variant"] = row.variant
        if reveal:
            item["text"] = row.content.body if row.content else None
            item["place"] = _place_json(row.place) if row.place else None
        result.append(item)
    return result


def _local_label(local: datetime) -> str:
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({offset[:3]}:{offset[3:]})"


def plan_table(scenario: Scenario, rows: list[PlanRow], *, reveal: bool = False) -> Table:
    """A terminal table of the rows. All cells are plain ``Text``: scenario
    content is never read as rich markup."""
    table = Table(title=Text(f"{scenario.title} ({scenario.id})"), show_lines=reveal)
    table.add_column("UTC", no_wrap=True)
    table.add_column("Local", no_wrap=True)
    pods, roles = has_pods(scenario), bool(scenario.roles)
    table.add_column("City")
    if pods:
        table.add_column("Pod")
    table.add_column("Stage")
    if roles:
        table.add_column("Roles")
    table.add_column("Rooms")
    table.add_column("When", no_wrap=True)
    table.add_column("Content")
    for row in rows:
        if not reveal:
            content = Text(MASK, style="dim")
        else:
            content = Text(row.content.body if row.content else "")
            if row.place is not None:
                where = row.place.name + (f" ({row.place.geo_uri()})" if row.place.geo else "")
                content.append(f"\n@ {where}", style="italic")
        cells = [
            Text(f"{row.at_utc.astimezone(UTC):%Y-%m-%d %H:%M}Z"),
            Text(_local_label(row.at_local)),
            Text(row.city),
            *([Text(row.pod or "")] if pods else []),
            Text(row.stage),
            *([Text(row.roles_label)] if roles else []),
            Text("\n".join(row.rooms) or ("(private only)" if pods or roles else "")),
            Text(format_until(row.until), style="dim" if row.past else ""),
            content,
        ]
        table.add_row(*cells)
    return table
