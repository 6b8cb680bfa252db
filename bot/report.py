"""Control-room texts: plans, stage summaries, problems. Pure; ids, never content."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bot.dispatch import Outcome
from bot.policy import LATE_REPORT_THRESHOLD, LateReason, format_duration

# What can put a release after its instant. Downtime is one cause; a stage held
# (by !hold or a gate) until !resume or !release, or armed after its instant,
# is released late with the bot up all along.
LATE_CAUSES = (
    "its instant had passed: it was held until resumed or released, armed after its "
    "instant, or the bot or the homeserver was unavailable"
)
# The reason the run layer knows (bot.policy.LateReason), as late_why says it.
LATE_WHY = {
    LateReason.UNAVAILABLE: "its instant passed while the bot or the homeserver was unavailable",
    LateReason.RELEASED_BY_HAND: "held by a hold or a gate until !release",
    LateReason.RESUMED: "held until !resume",
    LateReason.PAST_AT_ARMING: "its instant had passed when the run was armed",
}


@dataclass(frozen=True)
class PlanLine:
    at: datetime
    city_id: str
    timezone: str
    stage_id: str
    rooms: int


def plan_table(lines: Sequence[PlanLine], now: datetime) -> str:
    """A masked plan: when, where, which stage, how many rooms; no text, no place."""
    rows = [("UTC", "local", "city", "stage", "rooms", "in")]
    for line in lines:
        local = line.at.astimezone(ZoneInfo(line.timezone))
        until = line.at - now
        rows.append(
            (
                line.at.strftime("%Y-%m-%d %H:%M:%SZ"),
                local.strftime("%H:%M %Z"),
                line.city_id,
                line.stage_id,
                str(line.rooms),
                format_duration(until) if until > timedelta(0) else "past",
            )
        )
    return text_table(rows)


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart (shown in a <pre> block)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def stage_summary(
    scenario_id: str,
    stage_id: str,
    outcomes: Sequence[Outcome],
    *,
    late_by: Mapping[str, timedelta] | None = None,
    drill: bool = False,
    late_why: str | None = None,
) -> str:
    """One report per stage: delivered / failed rooms per city, and why.

    ``late_why`` is the reason a late release was late, when the caller knows it
    (e.g. "held until !release", "re-armed after its instant"); without it the
    report names every cause that can make a release late, not just downtime."""
    total = sum(len(o.release.rooms) for o in outcomes)
    # With a crew, rooms another member delivered to (or serves) count as
    # delivered: the room has the stage, whoever sent it.
    reached = {id(o): len(set(o.delivered) | set(o.covered)) for o in outcomes}
    delivered = sum(reached.values())
    prefix = "[drill] " if drill else ""
    mark = "✅" if delivered == total else "⚠️"
    per_city = ", ".join(
        f"{o.release.city_id} {reached[id(o)]}/{len(o.release.rooms)}" for o in outcomes
    )
    lines = [
        f"{mark} {prefix}{scenario_id}: stage {stage_id} delivered to {delivered} of {total} "
        f"rooms ({per_city})."
    ]
    if total == 0:
        lines[0] = (
            f"⚠️ {prefix}{scenario_id}: stage {stage_id} had no room to go to "
            f"(no opted-in room for {', '.join(o.release.city_id for o in outcomes)})."
        )
    # Late is when the stage reached rooms, not when it was decided: a release that
    # waited out a homeserver outage was decided on time but arrived late.
    late_at: dict[str, timedelta] = dict(late_by or {})
    if not drill:  # a drill's instants are on its own, faster clock
        for o in outcomes:
            if o.first_sent is not None:
                arrived = o.first_sent - o.release.due_at
                late_at[o.release.city_id] = max(late_at.get(o.release.city_id, arrived), arrived)
    late = {c: d for c, d in late_at.items() if d >= LATE_REPORT_THRESHOLD}
    if late:
        lines.append(
            "Released late: "
            + ", ".join(f"{c} by {format_duration(d)}" for c, d in sorted(late.items()))
            + f" ({late_why or LATE_CAUSES})."
        )
    by_crew = sum(len(set(o.covered) - set(o.delivered)) for o in outcomes)
    if by_crew:
        lines.append(f"Of these, {by_crew} by other crew members.")
    for o in outcomes:
        for room, why in sorted(o.failed.items()):
            lines.append(f"  failed {o.release.city_id} {room}: {why}")
        for room, why in sorted(o.skipped.items()):
            lines.append(f"  not sent {o.release.city_id} {room}: {why}")
    return "\n".join(lines)
