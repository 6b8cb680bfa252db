"""The speaker's ``!arm`` roll call does not hold the command lane: when
another command waits behind the ``!arm`` and a member has not answered yet,
the speaker answers at once and lists the crew in a follow-up reply once every
member that is up has answered. Fakes and a ManualClock; no server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.clock import ManualClock
from bot.control.crew import CrewControl
from bot.control.registry import Context, Reply
from bot.crew import Crew, Heartbeat
from bot.crew.heartbeat import EVENT_TYPE, Answer
from bot.library import LibraryError

A, B = "@a:north", "@b:south"
ROOM, ARM = "!control:north", "$arm"
T = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)


class NoFiles:
    def find(self, scenario_id: str) -> Any:
        raise LibraryError("none here")


class NoRuns:
    def __init__(self) -> None:
        self.armed: dict[int, Any] = {}

    def by_scenario(self, scenario_id: str, drill: bool = False) -> None:
        return None


class Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None, str]] = []

    async def reply(self, room_id: str, event_id: str | None, text: str, **_: Any) -> None:
        self.sent.append((room_id, event_id, text))


def b_beat(clock: ManualClock, answers: tuple[Answer, ...] = (), n: int = 1) -> dict[str, Any]:
    content = Heartbeat(B, clock.now(), timedelta(seconds=30), "0.1.0", answers=answers,
                        started=T).content()
    return {"type": EVENT_TYPE, "state_key": B, "sender": B, "event_id": f"$b{n}",
            "content": content}


def control(clock: ManualClock, notifier: Replies) -> CrewControl:
    crew = CrewControl(
        crew=Crew((A, B)), me=A, control_rooms=(ROOM,), port=None,  # type: ignore[arg-type]
        runs=NoRuns(), library=NoFiles(), matrix=None,  # type: ignore[arg-type]
        notifier=notifier, clock=clock,  # type: ignore[arg-type]
    )
    crew.roster.ingest(ROOM, [b_beat(clock)])  # B is up, has not answered yet
    return crew


async def arm_once(confirmed: bool) -> Reply:
    return Reply("Previewed cf.")


async def test_with_a_command_waiting_the_list_follows_in_its_own_reply() -> None:
    clock, notifier = ManualClock(T), Replies()
    crew = control(clock, notifier)
    crew.lane_waiting = lambda: True
    ctx = Context(ROOM, "@org:north", ARM, None, False)
    reply = await asyncio.wait_for(crew.arm(ctx, "cf", arm_once), 2)
    assert "Previewed cf." in reply.text and "the list follows" in reply.text
    assert notifier.sent == []
    crew.roster.ingest(ROOM, [b_beat(clock, (Answer(ARM, "cf", "", "not armed"),), n=2)])
    crew.heard()
    for _ in range(100):
        if notifier.sent:
            break
        await asyncio.sleep(0.01)
    ((room, to, text),) = notifier.sent
    assert (room, to) == (ROOM, ARM)
    assert f"- {A}: not armed" in text and f"- {B}: not armed" in text


async def test_with_the_lane_empty_the_list_is_in_the_reply_as_before() -> None:
    clock, notifier = ManualClock(T), Replies()
    crew = control(clock, notifier)
    ctx = Context(ROOM, "@org:north", ARM, None, False)
    arming = asyncio.ensure_future(crew.arm(ctx, "cf", arm_once))
    await asyncio.sleep(0.05)
    assert not arming.done()  # waits for B's answer
    crew.roster.ingest(ROOM, [b_beat(clock, (Answer(ARM, "cf", "", "not armed"),), n=2)])
    crew.heard()
    reply = await asyncio.wait_for(arming, 2)
    assert f"- {B}: not armed" in reply.text and notifier.sent == []
