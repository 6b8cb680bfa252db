"""Which language each participant reply is in, against fakes (no homeserver; milliseconds).

The rules (bot/control/participants.py): in a city room, that room's city's; in
a direct chat with a participation, that city's for every reply; ``!join``
naming a real city, that city's; otherwise English. tests/test_i18n_live.py
shows the same on Synapse.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from bot.clock import ManualClock
from bot.control.catalog import PARTICIPANT_COMMANDS
from bot.control.participants import Participants, help_reply
from bot.i18n import Catalogs, bidi
from bot.i18n import messages as m
from bot.scenario import load_scenario_text

CATALOGS = Catalogs()
EN, FA, ZH = (CATALOGS.translator(tag) for tag in (None, "fa", "zh-Hant"))
SCENARIO = load_scenario_text("""\
version: 1
id: langs
title: langs
start: 2026-12-05T17:30:00Z
cities:
  - {id: teh, name: Tehran, timezone: Asia/Tehran, language: fa, rooms: ["!teh:x"],
     direct: true, direct_limit: 1}
  - {id: hk, name: Hong Kong, timezone: Asia/Hong_Kong, language: zh-Hant, rooms: ["!hk:x"],
     direct: true}
  - {id: lon, name: London, timezone: Europe/London, rooms: ["!lon:x"], direct: true}
stages:
  - {id: call, at: 0m, text: "{city}"}
""")
DM, OTHER_DM, GROUP = "!dm:x", "!other:x", "!group:x"


class FakeParticipants:
    def __init__(self) -> None:
        self.direct: list[tuple[str, str, str, str]] = []  # scenario, city, user, room

    async def direct_of_room(self, room_id: str) -> list[tuple[str, str, str]]:
        return [(s, c, u) for s, c, u, r in self.direct if r == room_id]

    async def direct_rooms(self, scenario_id: str, city_id: str) -> list[str]:
        return [r for s, c, _u, r in self.direct if (s, c) == (scenario_id, city_id)]

    async def add_direct(
        self, s: str, c: str, u: str, r: str, *, now: datetime, pod_id: str | None = None
    ) -> None:
        self.direct.append((s, c, u, r))

    async def set_pod(self, s: str, c: str, u: str, pod_id: str | None) -> bool:
        return any((s, c, u) == row[:3] for row in self.direct)  # no pods here

    async def remove_direct_room(self, room_id: str) -> int:
        before = len(self.direct)
        self.direct = [row for row in self.direct if row[3] != room_id]
        return before - len(self.direct)


class FakeLedger:
    async def dispatches(self, run_id: int) -> list[Any]:
        return []  # nothing released yet


class FakeStore:
    """The store's aggregates this test reaches (store.participants, store.ledger)."""

    def __init__(self) -> None:
        self.participants = FakeParticipants()
        self.ledger = FakeLedger()


class FakeMatrix:
    user_id = "@bot:x"

    async def members(self, room_id: str) -> list[str] | None:
        count = 3 if room_id.startswith(("!teh", "!hk", "!lon", "!group")) else 2
        return [f"@u{i}:x" for i in range(count)]

    async def react(self, room_id: str, event_id: str, key: str) -> str | None:
        return "$reaction"

    async def leave(self, room_id: str, *, forget: bool = False) -> bool:
        return True


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, room_id: str, content: dict[str, Any], **_: Any) -> str:
        self.sent.append((room_id, content))
        return "$sent"


class FakeRuns:
    def __init__(self, armed: bool) -> None:
        run = SimpleNamespace(
            run=SimpleNamespace(id=1), scenario=SCENARIO, scenario_id="langs", drill_room=None
        )
        self.armed = {1: run} if armed else {}

    async def runs_of_room(self, room_id: str) -> list[tuple[Any, str]]:
        return [
            (run, c.id)
            for run in self.armed.values()
            for c in run.scenario.cities
            if room_id in c.rooms
        ]


def make(*, armed: bool = True) -> tuple[Participants, FakeNotifier, FakeStore]:
    store, notifier = FakeStore(), FakeNotifier()
    library = SimpleNamespace(all_valid=lambda: [SimpleNamespace(scenario=SCENARIO)])
    dispatcher = SimpleNamespace(remember_room=lambda r: None, forget_room=lambda r: None)
    p = Participants(
        matrix=FakeMatrix(),  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        runs=FakeRuns(armed),  # type: ignore[arg-type]
        library=library,  # type: ignore[arg-type]
        dispatcher=dispatcher,  # type: ignore[arg-type]
        notifier=notifier,  # type: ignore[arg-type]
        clock=ManualClock(datetime(2026, 12, 5, 12, tzinfo=UTC)),
        catalogs=CATALOGS,
    )
    return p, notifier, store


def say(p: Participants, notifier: FakeNotifier, room: str, text: str) -> dict[str, Any]:
    before = len(notifier.sent)
    asyncio.run(p.on_message(room, "$ev", "@person:x", text))
    assert len(notifier.sent) == before + 1, f"no reply to {text!r}"
    room_id, content = notifier.sent[-1]
    assert room_id == room and content["m.relates_to"] == {"m.in_reply_to": {"event_id": "$ev"}}
    return content


def same(content: dict[str, Any], expected: m.Reply) -> bool:
    return (content["body"], content["formatted_body"]) == (expected.body, expected.html)


def test_a_direct_chat_speaks_english_until_it_has_a_city_then_that_citys() -> None:
    p, notifier, _ = make()
    assert same(say(p, notifier, DM, "!help"), help_reply(EN, PARTICIPANT_COMMANDS))
    assert same(say(p, notifier, DM, "!join langs teh"), m.joined(FA, city_name="Tehran"))
    assert same(say(p, notifier, DM, "!help"), help_reply(FA, PARTICIPANT_COMMANDS))
    # A mistake naming no real city, in the participation's language.
    reply = m.no_such_city(FA, scenario_id="langs", city_id="nowhere")
    assert same(say(p, notifier, DM, "!join langs nowhere"), reply)
    assert same(say(p, notifier, DM, "!stop"), m.stopped(FA))  # taken before forgetting
    assert same(say(p, notifier, DM, "!stop"), m.not_signed_up(EN))


def test_join_naming_a_real_city_speaks_that_citys_language() -> None:
    p, notifier, _ = make()
    say(p, notifier, DM, "!join langs teh")
    # The second chat has no participation; the city it names is full.
    assert same(say(p, notifier, OTHER_DM, "!join langs teh"), m.city_full(FA, city_name="Tehran"))
    assert same(say(p, notifier, OTHER_DM, "!join langs hk"), m.joined(ZH, city_name="Hong Kong"))


def test_a_city_room_speaks_its_citys_language_armed_or_not() -> None:
    for armed in (True, False):
        p, notifier, _ = make(armed=armed)
        refused = say(p, notifier, "!teh:x", "!join langs hk")  # the room's city, not the named
        assert same(refused, m.join_in_direct_chat(FA)), armed
        assert same(say(p, notifier, GROUP, "!join langs teh"), m.join_in_direct_chat(EN))


def test_a_city_without_language_is_answered_as_before() -> None:
    p, notifier, _ = make()
    content = say(p, notifier, DM, "!join langs lon")
    assert content["body"] == (
        "You're in for London. Each stage will come to this chat when it is "
        "released. Say !here to check in, !stop to leave at once."
    )
    assert content["msgtype"] == "m.notice"
    assert same(
        say(p, notifier, DM, "!join"),
        m.usage_error(
            EN,
            problem="missing",
            usage=m.Usage("!join", (("scenario", False), ("city", False))),
            argument="scenario",
        ),
    )


def test_marks_at_a_commands_ends_are_ignored_and_inside_refused() -> None:
    p, notifier, _ = make()
    say(p, notifier, DM, "!join langs teh")
    copied = f"{bidi.RLM}{bidi.LRI} !help {bidi.PDI}"
    assert same(say(p, notifier, DM, copied), help_reply(FA, PARTICIPANT_COMMANDS))
    inside = f"!join langs t{bidi.PDI}eh"
    assert same(say(p, notifier, DM, inside), m.invisible_characters(FA))


def test_city_rooms_stay_quiet_about_mistakes() -> None:
    p, notifier, _ = make()
    asyncio.run(p.on_message("!teh:x", "$ev", "@person:x", "!jion"))
    asyncio.run(p.on_message("!teh:x", "$ev", "@person:x", "!help"))
    assert notifier.sent == []
