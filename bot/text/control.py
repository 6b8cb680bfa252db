"""Control-room replies (the organisers' side). Ids, counts and times only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from bot.policy import format_duration

CONTROL_HELP = "Commands (core group, in a control room):"
NOT_CORE = "Only the core group (power ≥ the configured level here) can give commands."
NOTHING_ARMED = "Nothing is armed."


def database_failed(err: object) -> str:
    return f"The bot's database failed ({err}); nothing was changed."


# -- cities ------------------------------------------------------------------------------


def no_such_city(scenario_id: str, cities: Sequence[str], typed: str | None) -> str:
    # ``typed`` is quoted only when it is id-shaped (checked by the caller): a word
    # meant as a city may be the start of a message, which is content.
    named = f" {typed}" if typed else " by that name"
    return f"{scenario_id} has no city{named} (cities: {', '.join(cities)})"


def no_such_pod(scenario_id: str, city_id: str, pods: Sequence[str], typed: str | None) -> str:
    named = f" {typed}" if typed else " by that name"
    listed = ", ".join(f"{city_id}/{p}" for p in pods) or "none"
    return f"{scenario_id} has no pod{named} in {city_id} (pods: {listed})"


def abort_needs_city(scenario_id: str, cities: Sequence[str], which: str) -> str:
    """The word after the scenario of an !abort that is not a city: refuse, and say
    how to abort everywhere with one's own words, or one city."""
    head = f"!abort {scenario_id}{which}"
    return (
        f"Not aborted: after {head} comes a city or all, then your message "
        f"(cities: {', '.join(cities)}). Stop every city with your words: "
        f"{head} all <message>; one city: {head} {cities[0]} <message>; "
        f"every city with the scenario's stop message: {head}"
    )


# -- drill and live run of one scenario -----------------------------------------------


def name_the_run(scenario_id: str, retype: tuple[str, str]) -> str:
    drill, live = retype
    return (
        f"{scenario_id} has a drill and a live run armed: say which one. "
        f"For the drill: {drill} — for the live run: {live}"
    )


def live_prefix(text: str) -> str:
    """A reply about the live run while a drill of it is armed says so (a drill's
    replies say "[drill]" already)."""
    return f"[live] {text}"


def not_armed(scenario_id: str, which: str | None) -> str:
    if which == "drill":
        return f"no drill of {scenario_id} is running"
    if which == "live":
        return f"{scenario_id} is not armed (live)"
    return f"{scenario_id} is not armed"


def drill_running(scenario_id: str) -> str:
    return f"a drill of {scenario_id} is already running; !disarm {scenario_id} drill first"


def already_armed(scenario_id: str, drill_too: bool) -> str:
    which = " live" if drill_too else ""
    return f"{scenario_id} is already armed; !disarm {scenario_id}{which} first"


def disarmed(label: str, run_id: int) -> str:
    return f"Disarmed {label} (run {run_id}): nothing more will be sent."


# -- confirmation --------------------------------------------------------------------------


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%SZ")


def read_late(
    command: str, typed: datetime, read: datetime, limit_s: float, window_s: float
) -> str:
    return (
        f"Not run: {command} was typed {_clock(typed)} and read {_clock(read)} "
        f"({format_duration(read - typed)} later). A command that releases stages runs "
        f"only within {limit_s:.0f} seconds of being typed. If it still stands, send "
        f"{command} confirm within {window_s:.0f} seconds to go ahead."
    )


def arm_confirm(command: str, window_s: float) -> str:
    return f"To arm it as it is, send {command} confirm within {window_s:.0f} seconds."


def nothing_to_confirm(command: str, window_s: float) -> str:
    return (
        f"nothing to confirm: send {command} first, then {command} confirm "
        f"within {window_s:.0f} seconds"
    )


def purge_question(scenario_id: str, runs: int, window_s: float) -> str:
    return (
        f"This deletes everything stored about {scenario_id}: {runs} run(s), their "
        f"ledger, check-ins and participant ids. Send !purge {scenario_id} confirm "
        f"within {window_s:.0f} seconds."
    )


def purged(scenario_id: str, deleted: int) -> str:
    return f"Purged {scenario_id}: {deleted} run(s) and everything about them deleted."


# -- status --------------------------------------------------------------------------------

STATUS_COLUMNS = (
    "scenario",
    "city",
    "next stage",
    "local",
    "UTC",
    "in",
    "released",
    "rooms ok/failed",
    "hold",
    "check-ins",
)


def stage_name(stage_id: str) -> str:
    """A released stage as organisers know it: synthetic ids (``!abort``,
    ``!fix-<place>-<n>``) are internal; say what they were."""
    if stage_id == "!abort":
        return "abort"
    if stage_id.startswith("!fix-"):
        return "correction"
    return stage_id


def released_list(stage_ids: Sequence[str]) -> str:
    names: list[str] = []
    for sid in stage_ids:
        name = stage_name(sid)
        if name not in names:
            names.append(name)
    return ",".join(names) or "-"


def checkins_cell(count: int, stage_id: str) -> str:
    """What the next gate counts: check-ins since the latest released stage."""
    return f"{count} since {stage_id}" if stage_id else f"{count} before the first stage"


def run_heading(
    label: str, run_id: int, armed_by: str, drill_now: datetime | None, speed: float | None
) -> str:
    line = f"{label} (run {run_id}) armed by {armed_by}"
    if drill_now is not None:
        # A drill's instants are on its own, faster clock: its columns and this
        # "now" are drill time, not the wall time of "as of".
        line += (
            f"; its times are drill time ({speed or 60:g}x), "
            f"now {drill_now:%Y-%m-%d %H:%M:%SZ} drill time"
        )
    return line


def as_of(now: datetime) -> str:
    return f"as of {now:%Y-%m-%d %H:%M:%SZ} (real time)"


def stage_cell(stage_id: str) -> str:
    """A stage in ``!headcount``'s tables ("" is before the first stage)."""
    return stage_id or "(before the first stage)"


def headcount(label: str, total: int, city: str | None) -> str:
    where = f" in {city}" if city else ""
    return f"{label}: {total} check-ins{where}."


def nothing_stored(scenario_id: str) -> str:
    return f"nothing is stored about {scenario_id}"


def armed_refuse_purge(scenario_id: str) -> str:
    return f"{scenario_id} is armed; !disarm it first"


def bad_delay() -> str:
    return "a delay must be non-zero and at most 7 days"


def bad_duration(hint: str) -> str:
    return f"duration must be {hint}, or negative (-5m)"


def geo_range() -> str:
    return "geo out of range: latitude -90..90, longitude -180..180"


def redirect_needs_name() -> str:
    return "give the new place's name (up to 200 characters), then optionally lat,lon"


def drill_room_failed(status: object) -> str:
    return f"could not create the drill room ({status})"


def drill_started(text: str, room: str, speed: float) -> str:
    return (
        f"{text}\nDrill room: {room} (you are invited). Time runs {speed:g}x; "
        "the first stage comes in a few seconds. Gates are reported, not waited on."
    )


DRILL_ROOM_TOPIC = (
    "Blossom drill room: every stage as it would go to each city, marked DRILL. "
    "Nothing is sent to the real rooms."
)


def late_by(delta: timedelta) -> str:
    return format_duration(delta)
