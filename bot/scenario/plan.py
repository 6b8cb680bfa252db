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
from bot.scenario.model import Place, Scenario
from bot.scenario.render import RenderedStage, render_stage
from bot.scenario.timeline import build_timeline

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

    @property
    def past(self) -> bool:
        return self.until < timedelta(0)


def build_plan(
    scenario: Scenario, now: datetime, *, city: str | None = None, reveal: bool = False
) -> list[PlanRow]:
    """One row per (city, stage) in release order; ``city`` keeps one city only.

    Raises ``KeyError`` for an unknown ``city``.
    """
    if city is not None:
        scenario.city(city)  # raises KeyError for an unknown id
    rows = []
    for dispatch in build_timeline(scenario):
        if city is not None and dispatch.city_id != city:
            continue
        the_city = scenario.city(dispatch.city_id)
        stage = scenario.stages[dispatch.stage_index]
        content = place = None
        if reveal:
            content = render_stage(scenario, the_city.id, stage.id)
            place = the_city.places.get(stage.place) if stage.place else None
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
            )
        )
    return rows


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


def plan_json(rows: list[PlanRow], *, reveal: bool = False) -> list[dict[str, Any]]:
    """The rows as JSON-ready objects; ``text`` and ``place`` only with ``reveal``."""
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
    table.add_column("City")
    table.add_column("Stage")
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
        table.add_row(
            Text(f"{row.at_utc.astimezone(UTC):%Y-%m-%d %H:%M}Z"),
            Text(_local_label(row.at_local)),
            Text(row.city),
            Text(row.stage),
            Text("\n".join(row.rooms)),
            Text(format_until(row.until), style="dim" if row.past else ""),
            content,
        )
    return table
