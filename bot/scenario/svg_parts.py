"""The pieces of the plan picture (:mod:`bot.scenario.svg`): text, marks, breaks, legend.

Every piece of text that comes from the scenario goes through XML escaping here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape, quoteattr

from bot.scenario.durations import format_offset
from bot.scenario.model import Stage
from bot.scenario.plan import MASK, PlanRow
from bot.scenario.svg_axis import Axis

_STACK_H = 56  # as bot.scenario.svg lays out lanes
_FONT_NOTE = "10"


def local_label(local: datetime) -> str:
    clock = local.strftime("%H:%M:%S" if local.second else "%H:%M")
    return f"{clock} {local.tzname()}"


def human_gap(delta: timedelta) -> str:
    return format_offset(delta).lstrip("+")


def svg_text(x: float, y: float, content: str, **attrs: str) -> str:
    # Keyword names stand for attributes: font_size -> font-size, class_ -> class.
    extra = "".join(f" {k.rstrip('_').replace('_', '-')}={quoteattr(v)}" for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(content)}</text>'


def mark_shape(kind: str, x: float, y: float) -> str:
    if kind == "gate":
        r = 9.0
        points = f"{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}"
        return f'<polygon class="shape" points="{points}" fill="#f59e0b" stroke="#92400e"/>'
    if kind == "dispersal":
        return (
            f'<rect class="shape" x="{x - 7:.1f}" y="{y - 7:.1f}" width="14" height="14" '
            'fill="#64748b" stroke="#1e293b"/>'
        )
    shape = (
        f'<circle class="shape" cx="{x:.1f}" cy="{y:.1f}" r="7" fill="#db2777" stroke="#831843"/>'
    )
    if kind == "place":
        shape += f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#fff"/>'
    return shape


def gate_label(stage: Stage) -> list[str]:
    """Two short lines, so neighbouring marks' labels do not collide."""
    assert stage.require is not None
    return [f"≥{stage.require.checkins} check-ins", f"else {stage.require.otherwise}"]


def _lane_name(row: PlanRow) -> str:
    return row.city_name if row.pod is None else f"{row.city_name} · {row.pod}"


def tooltip(row: PlanRow, reveal: bool) -> str:
    head = (
        f"{row.stage_label} in {_lane_name(row)}: {local_label(row.at_local)} "
        f"({row.at_utc.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z)"
    )
    if not reveal:
        return f"{head}\n{MASK}"
    body = row.content.body if row.content else ""
    if row.place is not None:
        geo = f" ({row.place.geo_uri()})" if row.place.geo else ""
        body += f"\n@ {row.place.name}{geo}"
    return f"{head}\n{body}"


def mark(
    row: PlanRow,
    stage: Stage,
    kind: str,
    x: float,
    mid_y: float,
    level: int,
    date_text: str,
    reveal: bool,
) -> list[str]:
    """One stage in one lane: its shape, id, local time, date and gate or dispersal note."""
    label_y = mid_y + 32 + level * _STACK_H
    out = [
        f'<g class="mark" data-city={quoteattr(row.city)} '
        f"data-stage={quoteattr(row.stage)} data-kind={quoteattr(kind)} "
        f"data-utc={quoteattr(row.at_utc.astimezone(UTC).isoformat())} "
        f"data-local={quoteattr(row.at_local.isoformat())}>",
        f"<title>{escape(tooltip(row, reveal))}</title>",
    ]
    if level == 0:
        out.append(mark_shape(kind, x, mid_y))
    else:  # a later stage at the same instant: its shape beside its label
        out.append(mark_shape(kind, x - 40, label_y - 14))
    out.append(
        svg_text(
            x,
            label_y - 10,
            row.stage_label,
            text_anchor="middle",
            font_weight="600",
            fill="#111827",
        )
    )
    out.append(
        svg_text(
            x,
            label_y + 3,
            local_label(row.at_local),
            text_anchor="middle",
            fill="#374151",
            font_size="11",
        )
    )
    if date_text:
        out.append(
            svg_text(
                x,
                label_y + 15,
                date_text,
                text_anchor="middle",
                fill="#6b7280",
                font_size="10",
                class_="local-date",
            )
        )
    notes = gate_label(stage) if kind == "gate" else ["dispersal"]
    if kind in ("gate", "dispersal"):
        for n, note in enumerate(notes):
            out.append(
                svg_text(
                    x,
                    label_y + 28 + 12 * n,
                    note,
                    text_anchor="middle",
                    fill="#92400e" if kind == "gate" else "#334155",
                    font_size="10",
                    class_=f"{kind}-label",
                )
            )
    out.append("</g>")
    return out


def breaks(
    axis: Axis, lanes_top: int, lane_heights: list[int], lane_spans: list[tuple[float, float, str]]
) -> list[str]:
    """Cut gaps: a break on the axis and on every lane, the real length above."""
    out: list[str] = []
    for x0, x1, length in axis.breaks:
        mid = (x0 + x1) / 2
        out.append('<g class="axis-break">')
        out.append(
            svg_text(
                mid,
                lanes_top - 4,
                f"{human_gap(length)} later",
                text_anchor="middle",
                fill="#6b7280",
                font_size="10",
            )
        )
        lane_top = lanes_top
        for lane_h, (start_x, end_x, background) in zip(lane_heights, lane_spans, strict=True):
            y = lane_top + 34
            lane_top += lane_h
            if not start_x < mid < end_x:
                continue  # this lane's line does not cross the gap
            out.append(
                f'<rect x="{mid - 7:.1f}" y="{y - 9:.1f}" width="14" height="18" '
                f'fill="{background}"/>'
                f'<path d="M{mid - 9:.1f},{y + 8:.1f} l6,-16 M{mid - 1:.1f},{y + 8:.1f} l6,-16" '
                'stroke="#6b7280" stroke-width="1.5"/>'
            )
        out.append("</g>")
    return out


def legend(lanes_bottom: int) -> list[str]:
    y = lanes_bottom + 30
    x = 16.0
    out = ['<g class="legend">']
    for kind, label in (
        ("stage", "stage"),
        ("place", "stage revealing a place"),
        ("gate", "quorum gate (waits for check-ins)"),
        ("dispersal", "dispersal (last stage)"),
    ):
        out.append(mark_shape(kind, x + 8, y - 4))
        out.append(svg_text(x + 22, y, label, fill="#374151"))
        x += 34 + 7 * len(label)
    out.append(
        svg_text(
            16,
            y + 24,
            "Top: UTC. Under each mark: the stage and the city's local time. "
            "Gaps marked // are cut to fit; their length is written above.",
            fill="#6b7280",
            font_size="11",
        )
    )
    out.append("</g>")
    return out
