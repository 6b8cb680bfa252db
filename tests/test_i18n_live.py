"""Live (issue 16): a private participant of a ``language: fa`` city and one of a
``language: zh-Hant`` city each get every bot reply in their language, on Synapse.

Expected texts come from bot.i18n itself, so the test checks the wiring (which
message, which language, body and HTML both), while tests/test_i18n*.py check
the messages. The default stop message is rendered by the runs layer
(bot/runs.py), which is not wired yet: that case is its own test, skipped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from matrix_helpers import (
    ClientPool,
    collect_messages,
    content_of,
    join,
    send_text,
    sync_until,
)
from nio import AsyncClient, RoomCreateResponse

from bot import DISPATCH_KEY
from bot.control.catalog import PARTICIPANT_COMMANDS
from bot.control.parse import UsageError, parse
from bot.control.participants import help_reply, usage_reply
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.i18n import Catalogs, Reply, Translator, bidi
from bot.i18n import messages as m

pytestmark = pytest.mark.homeserver

CATALOGS = Catalogs()
# city id -> (name, time zone, language)
CITIES = {
    "teh": ("Tehran", "Asia/Tehran", "fa"),
    "hk": ("Hong Kong", "Asia/Hong_Kong", "zh-Hant"),
}


def scenario(rooms: dict[str, str]) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "langs",
        "title": "langs",
        "start": iso_z(seconds_ahead(3600)),  # nothing is released during the test
        "cities": [
            {
                "id": cid,
                "name": name,
                "timezone": zone,
                "language": language,
                "rooms": [rooms[cid]],
                "direct": True,
                "direct_limit": 1,
            }
            for cid, (name, zone, language) in CITIES.items()
        ],
        # A second stage keeps the run armed after `call` is released in both
        # cities, so a reaction to `call` is still a check-in of an armed run.
        "stages": [
            {"id": "call", "at": "0m", "text": "{city}"},
            {"id": "later", "at": "30m", "text": "{city}"},
        ],
        # No abort_text: the default stop message is the bot's own, so translated.
    }


async def reply_to(client: AsyncClient, room: str, event_id: str) -> dict[str, Any]:
    def answered(ms: list[Any]) -> bool:
        return any(_in_reply_to(x) == event_id for x in ms)

    msgs = await collect_messages(client, room, until=answered, timeout=20)
    return content_of(next(x for x in msgs if _in_reply_to(x) == event_id))


def _in_reply_to(event: Any) -> str | None:
    rel = content_of(event).get("m.relates_to") or {}
    found = (rel.get("m.in_reply_to") or {}).get("event_id")
    return str(found) if found else None


async def ask(client: AsyncClient, room: str, text: str) -> dict[str, Any]:
    return await reply_to(client, room, await send_text(client, room, text))


def assert_reply(content: dict[str, Any], expected: Reply) -> None:
    assert content["body"] == expected.body
    assert content.get("formatted_body") == expected.html


def usage(t: Translator, text: str) -> Reply:
    """The reply to a mistyped participant command, as the parser finds the mistake."""
    error = parse(text, PARTICIPANT_COMMANDS)
    assert isinstance(error, UsageError), text
    return usage_reply(t, error, PARTICIPANT_COMMANDS)


async def stage_event(client: AsyncClient, room: str, stage_id: str) -> str:
    """The event id of a stage's text in ``room``, once it is there."""

    def found(ms: list[Any]) -> bool:
        return any(_is_stage(x, stage_id) for x in ms)

    msgs = await collect_messages(client, room, until=found, timeout=30)
    return str(next(x for x in msgs if _is_stage(x, stage_id)).event_id)


def _is_stage(event: Any, stage_id: str) -> bool:
    tag = content_of(event).get(DISPATCH_KEY) or {}
    return tag.get("stage") == stage_id and tag.get("part") == "text"


async def direct_chat(
    env: BotEnv, clients: ClientPool, hs: EmbeddedHomeserver, name: str
) -> tuple[AsyncClient, str]:
    person = await clients.participant(await hs.register(f"{name}-{env.dir.name[-6:]}"))
    resp = await person.room_create(is_direct=True, invite=[env.bot_user.user_id])
    assert isinstance(resp, RoomCreateResponse)
    await env.wait_joined(resp.room_id, by=person)
    await sync_until(person, lambda: resp.room_id in person.rooms)
    return person, resp.room_id


async def test_every_reply_in_the_citys_language(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """Which language a reply is in:

    - in a city room: that city's;
    - in a direct chat with a participation: that city's, for every reply;
    - ``!join`` naming a city that exists: that city's (joined, full);
    - a direct chat with no participation (before ``!join``, after ``!stop``): English.

    And a command copied from a right-to-left reply with the marks at its ends
    works; a mark inside a command is still refused.
    """
    english = CATALOGS.translator(None)
    async with bot_env(homeserver, tmp_path, clients, "lang") as env:
        mod = await clients.participant(await homeserver.register(f"mod-lang-{tmp_path.name[-6:]}"))
        # A third member, so a city room is not taken for a direct chat (two members).
        watcher = await clients.participant(await homeserver.register(f"w-{tmp_path.name[-6:]}"))
        rooms = {
            cid: await env.city_room(mod, name=f"lang {cid}", members=[watcher.user_id])
            for cid in CITIES
        }
        for room in rooms.values():
            await join(watcher, room)
        env.write_scenario(scenario(rooms))
        await env.start()
        for room in rooms.values():
            await env.opt_in(mod, room)
        assert "langs" in await env.command("!arm langs")

        for cid, (name, _zone, language) in CITIES.items():
            t = CATALOGS.translator(language)
            # In the city room, !join is refused in the city's language.
            assert_reply(await ask(mod, rooms[cid], f"!join langs {cid}"), m.join_in_direct_chat(t))

            person, dm = await direct_chat(env, clients, homeserver, f"p-{cid}")
            # No participation yet: English, as before languages.
            assert_reply(await ask(person, dm, "!help"), help_reply(english, PARTICIPANT_COMMANDS))
            assert_reply(await ask(person, dm, f"!join langs {cid}"), m.joined(t, city_name=name))
            assert_reply(await ask(person, dm, "!help"), help_reply(t, PARTICIPANT_COMMANDS))
            assert_reply(await ask(person, dm, "!jion"), usage(t, "!jion"))
            assert_reply(await ask(person, dm, "!join langs"), usage(t, "!join langs"))
            assert_reply(
                await ask(person, dm, "!join langs nowhere"),
                m.no_such_city(t, scenario_id="langs", city_id="nowhere"),
            )
            # Copied from a right-to-left reply: the marks at its ends do not matter...
            copied = f"{bidi.RLM}{bidi.LRI} !help {bidi.PDI}"
            assert_reply(await ask(person, dm, copied), help_reply(t, PARTICIPANT_COMMANDS))
            # ...but one inside a command is refused, not guessed.
            inside = f"!join langs {cid[0]}{bidi.PDI}{cid[1:]}"
            assert_reply(await ask(person, dm, inside), m.invisible_characters(t))
            # The city takes one private participant: the next one is told it is full.
            other, other_dm = await direct_chat(env, clients, homeserver, f"q-{cid}")
            assert_reply(
                await ask(other, other_dm, f"!join langs {cid}"), m.city_full(t, city_name=name)
            )

            # A check-in by reaction in the direct chat is answered in the city's language.
            assert "Releasing" in await env.command(f"!release langs call {cid}")
            stage = await stage_event(person, dm, "call")
            await person.room_send(
                dm,
                "m.reaction",
                {"m.relates_to": {"rel_type": "m.annotation", "event_id": stage, "key": "🙋"}},
            )
            assert_reply(await reply_to(person, dm, stage), m.checked_in(t, counted=True))

            assert_reply(await ask(person, dm, "!stop"), m.stopped(t))
            # Forgotten: the bot no longer knows this chat's city.
            assert_reply(await ask(person, dm, "!stop"), m.not_signed_up(english))

            if t.direction == "rtl":
                joined = m.joined(t, city_name=name)
                assert joined.html.startswith('<div dir="rtl">' + bidi.RLM)


async def test_the_default_stop_message_is_in_each_citys_language(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """A scenario without ``abort_text``: ``!abort`` sends each city's private
    participants (and rooms) the bot's own stop message, in the city's language."""
    async with bot_env(homeserver, tmp_path, clients, "langstop") as env:
        mod = await clients.participant(await homeserver.register(f"mod-ls-{tmp_path.name[-6:]}"))
        watcher = await clients.participant(await homeserver.register(f"ws-{tmp_path.name[-6:]}"))
        rooms = {
            cid: await env.city_room(mod, name=f"stop {cid}", members=[watcher.user_id])
            for cid in CITIES
        }
        for room in rooms.values():
            await join(watcher, room)
        env.write_scenario(scenario(rooms))
        await env.start()
        for room in rooms.values():
            await env.opt_in(mod, room)
        assert "langs" in await env.command("!arm langs")
        for cid, (name, _zone, language) in CITIES.items():
            t = CATALOGS.translator(language)
            person, dm = await direct_chat(env, clients, homeserver, f"s-{cid}")
            assert_reply(await ask(person, dm, f"!join langs {cid}"), m.joined(t, city_name=name))
            await env.command(f"!abort langs {cid}")
            stop = m.abort_text(t, city_name=name)
            msgs = await collect_messages(
                person,
                dm,
                until=lambda ms, body=stop.body: any(content_of(x).get("body") == body for x in ms),
                timeout=30,
            )
            sent = next(content_of(x) for x in msgs if content_of(x).get("body") == stop.body)
            assert html.escape(stop.body) in sent["formatted_body"]  # bold around it, as before
