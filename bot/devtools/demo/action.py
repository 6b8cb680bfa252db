"""The demo's live part: following every client's sync, check-ins, commands, gates.

:mod:`bot.devtools.demo.run` sets the world up and arms; this module wires the
participants' and the organiser's clients to the :class:`DemoState` while the
action plays, and nudges a gate that stays shut, as an organiser would.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot import DISPATCH_KEY
from bot.clock import ScaledClock
from bot.devtools.demo.clients import DemoClient
from bot.devtools.demo.state import TEXT, CityState, DemoState, Receipt, checkin_stages
from bot.devtools.demo.world import DemoHomeserver
from bot.devtools.homeserver import RegisteredUser
from bot.scenario import Scenario

# A gated stage not seen this many real seconds after its instant is released by
# the organiser with !release.
GATE_GRACE_S = 3.0
# After the last instant, how long to wait for stragglers before giving up.
FINISH_GRACE_S = 30.0
# Participants "arrive" at the staging point this long (real seconds) after its message.
ARRIVAL_S = (0.3, 1.0)


@dataclass
class Person:
    user: RegisteredUser
    client: DemoClient
    city_id: str = ""
    here_event: str | None = None


@dataclass
class Run:
    """Everything the demo started, so clean-up can stop exactly that."""

    workdir: Path
    hs: DemoHomeserver | None = None
    people: list[Person] = field(default_factory=list)
    bot_task: asyncio.Task[None] | None = None
    bot_stop: asyncio.Event = field(default_factory=asyncio.Event)
    crew_task: asyncio.Task[None] | None = None  # --crew: the second member
    crew_stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def wait_bot(run: Run, waiting: Any) -> None:
    """Wait for something the bot should do; fail at once if the bot died."""
    assert run.bot_task is not None
    bots = {t for t in (run.bot_task, run.crew_task) if t is not None}
    task = asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait({task, *bots}, return_when=asyncio.FIRST_COMPLETED)
    stopped = next((t for t in bots if t in done), None)
    if stopped is not None and task not in done:
        task.cancel()
        exc = stopped.exception()
        raise RuntimeError(f"the bot stopped: {exc!r}") from exc
    task.result()


def listen(
    state: DemoState,
    run: Run,
    organiser: Person,
    control: str,
    bot_ids: Collection[str],
    replies: dict[str, asyncio.Future[str]],
    scenario: Scenario,
) -> None:
    """Wire every client's sync to the state: stage receipts, check-ins, notices
    (from the bot, or from any member of the crew: ``bot_ids``)."""
    check_in_after = checkin_stages(scenario)

    def organiser_event(room_id: str, event: dict[str, Any]) -> None:
        if room_id != control or event.get("sender") not in bot_ids:
            return
        content = event.get("content") or {}
        body = str(content.get("body", ""))
        if event.get("type") != "m.room.message" or not body:
            return
        relates = (content.get("m.relates_to") or {}).get("m.in_reply_to") or {}
        future = replies.get(str(relates.get("event_id", "")))
        if future is not None and not future.done():
            future.set_result(body)
            return
        line = first_line(body)
        state.notices.append(line)
        state.emit("notice", line)

    organiser.client.on_event = organiser_event

    for person in run.people:
        if not person.city_id:
            continue
        city = state.city(person.city_id)

        def participant_event(
            room_id: str, event: dict[str, Any], person: Person = person, city: CityState = city
        ) -> None:
            if room_id != city.room_id or event.get("sender") not in bot_ids:
                return
            content = event.get("content") or {}
            if event.get("type") == "m.reaction":
                rel = content.get("m.relates_to") or {}
                if person.here_event and rel.get("event_id") == person.here_event:
                    city.checkins[person.user.localpart] = "acknowledged"
                    state.emit(
                        "checkin", f"{city.id}: the bot acknowledged {person.user.localpart}"
                    )
                return
            tag = content.get(DISPATCH_KEY)
            if event.get("type") != "m.room.message" or not isinstance(tag, dict):
                return
            stage_id, part = str(tag.get("stage")), str(tag.get("part"))
            expected = state.expected_for(city.id, stage_id)
            arrived = datetime.now(UTC)
            lateness = (arrived - expected.due_wall).total_seconds() if expected else 0.0
            receipt = Receipt(
                city.id,
                person.user.localpart,
                stage_id,
                part,
                str(content.get("body", "")),
                arrived,
                lateness,
            )
            if state.record(receipt):
                by = f"  (from {event.get('sender')})" if len(bot_ids) > 1 else ""
                state.emit(
                    "receipt",
                    f"{city.id:<10} {person.user.localpart:<16} {stage_id}/{part:<8} "
                    f"{lateness:+.2f}s  {first_line(receipt.body, 90)}{by}",
                )
            if part == TEXT and stage_id in check_in_after and person.here_event is None:
                person.here_event = ""  # once
                task = asyncio.create_task(check_in(state, person, city))
                run.tasks.add(task)
                task.add_done_callback(run.tasks.discard)

        person.client.on_event = participant_event


async def check_in(state: DemoState, person: Person, city: CityState) -> None:
    await asyncio.sleep(random.uniform(*ARRIVAL_S))  # walking to the staging point
    person.here_event = await person.client.send_text(city.room_id, "!here")
    city.checkins.setdefault(person.user.localpart, "sent")
    state.emit("checkin", f"{city.id}: {person.user.localpart} checked in with !here")


async def command(
    person: Person,
    room_id: str,
    text: str,
    replies: dict[str, asyncio.Future[str]],
    within_s: float = 30,
) -> str:
    """Send a control-room command; return the bot's reply to it."""
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    event_id = await person.client.send_text(room_id, text)
    replies[event_id] = future
    try:
        return await asyncio.wait_for(future, within_s)
    finally:
        replies.pop(event_id, None)


async def watch(
    state: DemoState,
    run: Run,
    organiser: Person,
    control: str,
    scenario: Scenario,
    replies: dict[str, asyncio.Future[str]],
    clock: ScaledClock,
) -> None:
    """Follow the action until every participant has every stage (or time is up);
    release a gate that stays shut, as the organiser would."""
    last_due = max(e.due_wall for e in state.expected)
    deadline = last_due.timestamp() + FINISH_GRACE_S
    nudged: set[tuple[str, str]] = set()
    while not state.all_received():
        now = datetime.now(UTC)
        if now.timestamp() > deadline:
            state.emit("problem", "time is up: some stages never arrived (see the summary)")
            return
        upcoming = [e for e in state.expected if e.due_wall > now]
        if upcoming:
            nxt = min(upcoming, key=lambda e: e.due_wall)
            wait = (nxt.due_wall - now).total_seconds()
            state.phase = (
                f"Scenario clock {clock.now():%H:%M:%S}Z (×{state.speed:g}) · "
                f"next: {nxt.stage_id} in {wait:.0f} s"
            )
        else:
            state.phase = f"Scenario clock {clock.now():%H:%M:%S}Z · waiting for the last messages"
        for e in state.expected:
            key = (e.city_id, e.stage_id)
            if not e.gated or key in nudged or state.received(e.city_id, e.stage_id):
                continue
            if (now - e.due_wall).total_seconds() > GATE_GRACE_S:
                nudged.add(key)
                text = f"!release {scenario.id} {e.stage_id} {e.city_id}"
                state.emit("organiser", f"{e.city_id}: gate still shut; {text}")
                state.city(e.city_id).released_by_organiser.add(e.stage_id)
                reply = await command(organiser, control, text, replies)
                state.emit("organiser", f"{text} → {first_line(reply)}")
        await asyncio.sleep(0.2)
    # The bot's last report (stage summary, "complete") follows the last send.
    await asyncio.sleep(1.0)
