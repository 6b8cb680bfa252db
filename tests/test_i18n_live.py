"""Live (issue 16): a private participant of a ``language: fa`` city and one of a
``language: zh-Hant`` city each get every bot reply in their language, on Synapse.

DRAFT, skipped: it passes once the participant replies of bot/control are sent
through bot.i18n.messages with the Translator of the right city (the lead wires
it; the rules are in the docstring of ``test_every_reply_in_the_citys_language``).
Remove the skip mark then. Expected texts come from bot.i18n itself, so the test
checks the wiring (which message, which language, body and HTML both), while
tests/test_i18n*.py check the messages.
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

from bot.devtools.homeserver import EmbeddedHomeserver
from bot.i18n import Catalogs, Reply, bidi
from bot.i18n import messages as m

pytestmark = [
    pytest.mark.homeserver,
    pytest.mark.skip(reason="draft: participant replies not yet wired through bot.i18n"),
]

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
        "stages": [{"id": "call", "at": "0m", "text": "{city}"}],
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
    - the default stop message: each city's own;
    - a direct chat with no participation (before ``!join``, after ``!stop``): English.
    """
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
            assert_reply(await ask(person, dm, f"!join langs {cid}"), m.joined(t, city_name=name))
            assert_reply(await ask(person, dm, "!help"), m.help_text(t))
            assert_reply(await ask(person, dm, "!jion"), m.unknown_command(t, typed="jion"))
            assert_reply(
                await ask(person, dm, "!join langs"),
                m.join_usage(t, problem="missing", argument="city"),
            )
            assert_reply(
                await ask(person, dm, "!join langs nowhere"),
                m.no_such_city(t, scenario_id="langs", city_id="nowhere"),
            )
            # The city takes one private participant: the next one is told it is full.
            other, other_dm = await direct_chat(env, clients, homeserver, f"q-{cid}")
            assert_reply(
                await ask(other, other_dm, f"!join langs {cid}"), m.city_full(t, city_name=name)
            )

            # The default stop message reaches the private chat in the city's language.
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

            assert_reply(await ask(person, dm, "!stop"), m.stopped(t))
            # Forgotten: the bot no longer knows this chat's city.
            assert_reply(await ask(person, dm, "!stop"), m.not_signed_up(CATALOGS.translator(None)))

            if t.direction == "rtl":
                joined = m.joined(t, city_name=name)
                assert joined.html.startswith('<div dir="rtl">' + bidi.RLM)
