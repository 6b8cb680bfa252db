"""Control-room wording about the crew (``!arm``'s roll call, ``!crew``, ``!status``'s
duty line, duplicates). Ids, digest prefixes, counts and ages only; never content."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bot.crew.rollcall import (
    ARMED,
    DIFFERS,
    DIGEST_SHOWN,
    NOT_ANSWERING,
    NOT_ARMED,
    REFUSED,
    Line,
)

CREW_COLUMNS = ("member", "homeserver", "heartbeat", "version", "armed", "rooms", "on duty")


def short(digest: str) -> str:
    return digest[:DIGEST_SHOWN] if digest else "(none)"


def homeserver(user_id: str) -> str:
    return user_id.partition(":")[2] or "?"


def roll_call(lines: Sequence[Line], reference: str) -> str:
    """``!arm``'s list of members: armed / differs / not armed / refused / not answering."""
    ref = next((ln for ln in lines if ln.member == reference), None)
    ref_digest = short(ref.digest) if ref else "(none)"
    out = [f"Crew (file {ref_digest} at {reference}, the speaker):"]
    for ln in lines:
        if ln.state == ARMED:
            what = f"armed (file {short(ln.digest)})"
        elif ln.state == DIFFERS:
            what = (
                f"differs: its file is {short(ln.digest)}, not {ref_digest}; NOT armed there, "
                "its rooms are not covered by it"
            )
        elif ln.state == NOT_ARMED:
            what = f"not armed (file {short(ln.digest)}): did as the speaker did"
        elif ln.state == REFUSED:
            what = f"refused (file {short(ln.digest)}): it could not arm it"
        else:
            assert ln.state == NOT_ANSWERING
            what = "not answering (down)" if ln.down else "not answering"
        out.append(f"- {ln.member}: {what}")
    return "\n".join(out)


def roll_call_follows(window_s: float) -> str:
    """``!arm``'s reply when the crew's answers are still coming in and another
    command is waiting: the list follows in a message of its own."""
    return (
        f"Crew: waiting for the other members' answers (at most {window_s:g} s); "
        "the list follows as a reply to this command."
    )


def status_mark(status: str) -> str:
    """After a member's heartbeat age in ``!crew``: down, or not heard yet since
    this bot started (the start-up rule, docs/crew.md)."""
    return {"down": " (down)", "unknown": " (not heard yet)"}.get(status, "")


def left_to_speaker(command: str, speaker: str | None) -> str:
    return f"!{command} is done by the crew's speaker ({speaker or 'none'}) alone."


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f}s ago"


def rooms_cell(per_city: Mapping[str, tuple[int, int]]) -> str:
    """``north 1/2, south 0/1``: rooms of each city the member is joined to."""
    return ", ".join(f"{c} {n}/{total}" for c, (n, total) in per_city.items()) or "-"


def duty_line(per_city: Mapping[str, Sequence[str]]) -> str:
    """``!status``'s line: the member on duty per city (for each of its rooms)."""
    cells = [f"{c}: {', '.join(ms) if ms else 'nobody'}" for c, ms in per_city.items()]
    return "On duty: " + "; ".join(cells)


def duplicate_removed(
    room_id: str, run_id: int | None, city: str, stage: str, part: str, kept: str, redacted: str
) -> str:
    run = f"run {run_id}" if run_id is not None else "a run"
    return (
        f"Duplicate in {room_id} ({run}, {city}/{stage}/{part}): the copy of {kept} is kept, "
        f"{redacted} redacts its own (after a partition both sent)."
    )


def own_duplicates_removed(
    room_id: str,
    run_id: int | None,
    where: tuple[str, str, str],
    redacted: Sequence[str],
    failed: int,
    kept: str,
) -> str:
    run = f"run {run_id}" if run_id is not None else "a run"
    city, stage, part = where
    not_done = f", {failed} could not be" if failed else ""
    return (
        f"Duplicate in {room_id} ({run}, {city}/{stage}/{part}): "
        f"{len(redacted)} later copy(ies) of this bot's own redacted{not_done} "
        f"({', '.join(redacted)}); {kept} kept. The homeserver "
        "sent a delayed event twice, or its copy raced a late send."
    )
