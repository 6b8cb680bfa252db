"""A picture of the plan: one lane per city, the stages as marks, UTC alongside.

``plan_svg`` draws the timeline of a scenario as a standalone SVG document;
``plan_html`` wraps it in a small page together with the masked plan as a table.
Pure: the scenario in, text out.

The SVG is written by hand rather than with a plotting library. The picture is a
few dozen rectangles, lines and labels; matplotlib or plotly would add tens of
megabytes to an install whose only job is to send messages, and their output is
harder to keep free of secrets (no stray tooltip or embedded data). Every piece
of text that comes from the scenario goes through XML escaping here.

Layout:

* The x axis is time, shared by every lane, so what happens at the same instant
  lines up. Its ticks are labelled in UTC at the top.
* Each lane is one city. Its header names the city and its time zone; each mark
  is labelled with the stage id and the city's **local** wall-clock time.
* Stages are circles; a stage that reveals a place has a dot in it; a stage
  behind a quorum gate is a diamond, labelled with the gate; the last stage (the
  dispersal) is a square.
* Real plans mix days and minutes (a call three days ahead, then stages minutes
  apart). A linear axis would squash the minutes into one blob, so gaps are drawn
  to scale only up to a width; a longer gap is cut, with a break mark and its
  length written on the axis.

Stage text and places are **secret until release**: they appear nowhere in the
picture unless ``reveal`` is set (then as tooltips), exactly like ``blossom plan``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape, quoteattr

from bot.scenario.audience import lanes as audience_lanes
from bot.scenario.model import City, Pod, Scenario, Stage
from bot.scenario.plan import MASK, PlanRow, build_plan
from bot.scenario.svg_axis import MIN_GAP_PX, Axis, layout_axis
from bot.scenario.svg_parts import (
    breaks,
    legend,
    mark,
    svg_text,
)
from bot.scenario.timeline import lane_id

# Geometry, in SVG user units (pixels at 100 %).
_MIN_WIDTH = 1100  # wider when there are many distinct instants
_HEADER_W = 230  # the lane headers on the left
_RIGHT_PAD = 90
_TOP = 118  # title, subtitle and the UTC axis labels
_LANE_BASE_H = 116  # a lane with one label block; +_STACK_H per extra stage at one instant
_STACK_H = 56
_LEGEND_H = 64

_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


def _kind(stage: Stage, last: bool) -> str:
    if stage.require is not None:
        return "gate"
    if last:
        return "dispersal"
    if stage.place is not None:
        return "place"
    return "stage"


def _utc_offset(instant: datetime) -> str:
    offset = instant.utcoffset() or timedelta(0)
    sign = "+" if offset >= timedelta(0) else "−"
    minutes = int(abs(offset).total_seconds()) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class _Frame:
    """The picture's layout: its size, the x axis, and each lane's rows and height."""

    width: int
    axis: Axis
    instants: list[datetime]
    by_lane: dict[str, list[PlanRow]]
    """Rows by lane: a city's id, or ``city/pod`` for each pod of a city with pods."""
    lane_heights: list[int]

    @property
    def lanes_top(self) -> int:
        return _TOP

    @property
    def lanes_bottom(self) -> int:
        return _TOP + sum(self.lane_heights)

    @property
    def height(self) -> int:
        return self.lanes_bottom + _LEGEND_H


Lane = tuple[City, Pod | None]
"""One lane of the picture: a city without pods, or one pod (a sub-lane of its city)."""


def _lane_key(lane: Lane) -> str:
    city, pod = lane
    return lane_id(city.id, pod.id if pod is not None else None)


def _frame(rows: list[PlanRow], lanes: list[Lane]) -> _Frame:
    instants = sorted({r.at_utc for r in rows})
    width = max(_MIN_WIDTH, _HEADER_W + 40 + _RIGHT_PAD + int(MIN_GAP_PX * len(instants)))
    axis = layout_axis(instants, _HEADER_W + 40, width - _RIGHT_PAD)
    by_lane: dict[str, list[PlanRow]] = defaultdict(list)
    for row in rows:
        by_lane[lane_id(row.city, row.pod)].append(row)
    # A lane grows by one label block per extra stage (or role variant) sharing an instant.
    lane_heights = []
    for lane in lanes:
        per_instant: dict[datetime, int] = defaultdict(int)
        for row in by_lane[_lane_key(lane)]:
            per_instant[row.at_utc] += 1
        lane_heights.append(_LANE_BASE_H + _STACK_H * (max(per_instant.values(), default=1) - 1))
    return _Frame(width, axis, instants, by_lane, lane_heights)


def plan_svg(
    scenario: Scenario,
    *,
    city: str | None = None,
    reveal: bool = False,
    pod: str | None = None,
    role: str | None = None,
) -> str:
    """The timeline of ``scenario`` as an SVG document (UTF-8 text).

    One lane per city; a city with pods has one sub-lane per pod, and a stage
    whose text differs by role has one mark per role variant. ``city`` keeps one
    city, ``pod`` one pod, ``role`` what that role gets (as ``blossom plan``);
    ``reveal`` adds the rendered text and places as tooltips (secret until
    release: leave it off for anything you share). The picture does not depend
    on when it is drawn (no "now" in it).
    """
    rows = build_plan(scenario, scenario.start, city=city, reveal=reveal, pod=pod, role=role)
    cities = [c for c in scenario.cities if city is None or c.id == city]
    lanes: list[Lane] = [(c, p) for c in cities for p in audience_lanes(c)]
    if pod is not None:
        lanes = [ln for ln in lanes if ln[1] is not None and pod in (ln[1].id, _lane_key(ln))]
    frame = _frame(rows, lanes)
    out = _heading(scenario, frame, len(cities), reveal)
    out += _utc_axis(frame)
    top = frame.lanes_top
    lane_spans: list[tuple[float, float, str]] = []  # where each lane's line runs
    for index, lane in enumerate(lanes):
        lines, span = _lane(scenario, frame, index, lane, top, reveal)
        out += lines
        lane_spans.append(span)
        top += frame.lane_heights[index]
    out += breaks(frame.axis, frame.lanes_top, frame.lane_heights, lane_spans)
    out += legend(frame.lanes_bottom)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def lane_label(row: PlanRow) -> str:
    """The city's name, and the pod's id in a city with pods."""
    return row.city_name if row.pod is None else f"{row.city_name} · {row.pod}"


def _heading(scenario: Scenario, frame: _Frame, cities: int, reveal: bool) -> list[str]:
    width, height = frame.width, frame.height
    return [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="{_FONT}" font-size="12" '
        f'role="img" aria-label={quoteattr(f"Timeline of {scenario.title}")}>',
        f"<title>{escape(f'{scenario.title} ({scenario.id})')}</title>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        svg_text(16, 28, scenario.title, font_size="18", font_weight="600", fill="#111827"),
        svg_text(
            16,
            48,
            f"{scenario.id} · {cities} {'city' if cities == 1 else 'cities'} · "
            f"{len(scenario.stages)} stages · T0 {scenario.start.astimezone(UTC):%Y-%m-%d %H:%M}Z"
            " · content secret until release" + (" (REVEALED in tooltips)" if reveal else ""),
            fill="#4b5563",
        ),
    ]


def _utc_axis(frame: _Frame) -> list[str]:
    """One tick per distinct instant, labelled in UTC above the lanes."""
    lanes_top, lanes_bottom = frame.lanes_top, frame.lanes_bottom
    out = [
        '<g class="utc-axis">',
        svg_text(16, _TOP - 12, "UTC", font_weight="600", fill="#111827"),
    ]
    previous_date = None
    for instant in frame.instants:
        x = frame.axis.xs[instant]
        utc = instant.astimezone(UTC)
        label = utc.strftime("%H:%M:%S" if utc.second else "%H:%M") + "Z"
        if utc.date() != previous_date:
            label = f"{utc:%b %d} {label}"
            previous_date = utc.date()
        out.append(
            f'<line x1="{x:.1f}" y1="{lanes_top - 6:.1f}" x2="{x:.1f}" y2="{lanes_bottom:.1f}" '
            'stroke="#d1d5db" stroke-dasharray="2,3"/>'
        )
        out.append(
            svg_text(
                x,
                lanes_top - 12,
                label,
                transform=f"rotate(-35 {x:.1f} {lanes_top - 12:.1f})",
                fill="#374151",
                font_size="11",
                data_utc=utc.isoformat().replace("+00:00", "Z"),
                class_="utc-tick",
            )
        )
    out.append("</g>")
    return out


def _lane(
    scenario: Scenario, frame: _Frame, index: int, lane: Lane, top: float, reveal: bool
) -> tuple[list[str], tuple[float, float, str]]:
    """One lane (a city, or a pod): its header, its line and its marks; and where the line runs."""
    the_city, the_pod = lane
    lane_h = frame.lane_heights[index]
    background = "#fdf2f8" if index % 2 == 0 else "#ffffff"
    mid_y = top + 34
    city_rows = frame.by_lane[_lane_key(lane)]
    first_local = city_rows[0].at_local if city_rows else scenario.start.astimezone(the_city.tz)
    offsets = sorted({_utc_offset(r.at_local) for r in city_rows}) or [_utc_offset(first_local)]
    # A pod is a sub-lane: its city's name, then the pod (its id, never its places).
    name = the_city.name if the_pod is None else f"{the_city.name} · {the_pod.label}"
    pod_attr = "" if the_pod is None else f" data-pod={quoteattr(the_pod.id)}"
    out = [
        f'<g class="lane" data-city={quoteattr(the_city.id)}{pod_attr} '
        f"data-timezone={quoteattr(the_city.timezone)}>",
        f'<rect x="0" y="{top:.1f}" width="{frame.width}" height="{lane_h}" fill="{background}"/>',
        svg_text(16, top + 28, name, font_size="15", font_weight="600", fill="#111827"),
        svg_text(16, top + 46, the_city.timezone, fill="#4b5563"),
        svg_text(
            16, top + 62, "local time, " + " / ".join(offsets), fill="#6b7280", font_size="11"
        ),
    ]
    xs = [frame.axis.xs[r.at_utc] for r in city_rows]
    if xs:
        out.append(
            f'<line x1="{min(xs):.1f}" y1="{mid_y:.1f}" x2="{max(xs):.1f}" y2="{mid_y:.1f}" '
            'stroke="#9ca3af" stroke-width="2"/>'
        )
    # Stages due at the same instant in one city share an x: stack their labels.
    stacked: dict[datetime, int] = defaultdict(int)
    local_date = None
    last_stage = scenario.stages[-1].id
    for row in city_rows:
        stage = scenario.stage(row.stage)
        level = stacked[row.at_utc]
        stacked[row.at_utc] += 1
        # The local date is shown on a lane's first mark and whenever it changes.
        date_text = ""
        if row.at_local.date() != local_date:
            date_text = f"{row.at_local:%a %b} {row.at_local.day}"
            local_date = row.at_local.date()
        kind = _kind(stage, stage.id == last_stage)
        out += mark(row, stage, kind, frame.axis.xs[row.at_utc], mid_y, level, date_text, reveal)
    out.append("</g>")
    return out, (min(xs, default=0.0), max(xs, default=0.0), background)


def plan_html(
    scenario: Scenario,
    *,
    city: str | None = None,
    reveal: bool = False,
    pod: str | None = None,
    role: str | None = None,
) -> str:
    """A standalone HTML page: the SVG timeline and the plan as a table."""
    svg = plan_svg(scenario, city=city, reveal=reveal, pod=pod, role=role)
    svg_body = svg.split("\n", 1)[1]  # drop the XML declaration inside HTML
    rows = build_plan(scenario, scenario.start, city=city, reveal=reveal, pod=pod, role=role)
    cells: list[str] = []
    for row in rows:
        if reveal and row.content is not None:
            content = escape(row.content.body)
            if row.place is not None:
                content += "<br/>@ " + escape(row.place.name)
        else:
            content = f'<span class="mask">{escape(MASK)}</span>'
        cells.append(
            "<tr>"
            f"<td>{escape(f'{row.at_utc.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z')}</td>"
            f"<td>{escape(row.at_local.strftime('%Y-%m-%d %H:%M:%S %Z'))}</td>"
            f"<td>{escape(lane_label(row))}</td><td>{escape(row.stage_label)}</td>"
            f"<td>{len(row.rooms)}</td><td>{content}</td>"
            "</tr>"
        )
    title = escape(f"{scenario.title} ({scenario.id})")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#111827}"
        "svg{max-width:100%;height:auto}table{border-collapse:collapse;margin-top:1rem}"
        "td,th{border:1px solid #e5e7eb;padding:.3rem .6rem;text-align:left;"
        "vertical-align:top}.mask{color:#9ca3af}</style></head><body>\n"
        f"<h1>{title}</h1>\n{svg_body}\n"
        "<table><thead><tr><th>UTC</th><th>Local</th><th>City</th><th>Stage</th>"
        "<th>Rooms</th><th>Content</th></tr></thead><tbody>\n"
        + "\n".join(cells)
        + "\n</tbody></table>\n</body></html>\n"
    )
