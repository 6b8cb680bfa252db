"""The dispatch bot on a real homeserver: staged release to opted-in rooms."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from bot_harness import bot_env, iso_z, seconds_ahead
from matrix_helpers import ClientPool, content_of, join, room_messages, with_content_key

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver


def two_city(rooms_a: list[str], rooms_b: list[str], start: datetime) -> dict[str, object]:
    return {
        "version": 1,
        "id": "two-city",
        "title": "Two cities",
        "start": iso_z(start),
        "cities": [
            {
                "id": "alpha",
                "name": "Alphaville",
                "timezone": "Europe/London",
                "rooms": rooms_a,
                "places": {"square": {"name": "Market Square", "geo": "51.5,-0.12"}},
            },
            {
                "id": "beta",
                "name": "Betatown",
                "timezone": "America/New_York",
                "rooms": rooms_b,
                "places": {"square": {"name": "Union Square", "geo": "40.7359,-73.9911"}},
            },
        ],
        "stages": [
            {"id": "call", "at": "0s", "text": "Get ready in {city}"},
            {"id": "go", "at": "+3s", "text": "Walk to {square} now", "place": "square"},
        ],
    }


async def test_two_cities_four_rooms(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with bot_env(homeserver, tmp_path, clients, "two") as env:
        mod_a = await clients.participant(await homeserver.register(f"moda-{tmp_path.name[-6:]}"))
        mod_b = await clients.participant(await homeserver.register(f"modb-{tmp_path.name[-6:]}"))
        rooms_a = [await env.city_room(mod_a, name=f"alpha {i}") for i in range(2)]
        rooms_b = [await env.city_room(mod_b, name=f"beta {i}") for i in range(2)]
        # Listed now (so the opt-ins are accepted); the real instants are set before !arm.
        env.write_scenario(two_city(rooms_a, rooms_b, seconds_ahead(3600)))
        await env.start()
        for r in rooms_a:
            await env.opt_in(mod_a, r)
        for r in rooms_b:
            await env.opt_in(mod_b, r)
        # !arm is answered well within a second; stages are prepared 1 s ahead.
        start = seconds_ahead(4)
        env.write_scenario(two_city(rooms_a, rooms_b, start))
        reply = await env.command("!arm two-city")
        assert "Armed two-city" in reply, reply
        assert "Walk to" not in reply and "Market Square" not in reply  # secret until release

        # A participant in each of two rooms (the moderators see the others).
        watcher = await clients.participant(await homeserver.register(f"p-{tmp_path.name[-6:]}"))
        await mod_a.room_invite(rooms_a[0], watcher.user_id)
        await join(watcher, rooms_a[0])

        notices = await env.control_notices("stage go delivered", timeout=40)
        assert any("stage call delivered to 4 of 4" in n for n in notices), notices
        assert any("stage go delivered to 4 of 4" in n for n in notices), notices
        for client, room, city, place in (
            (watcher, rooms_a[0], "Alphaville", "Market Square"),
            (mod_a, rooms_a[1], "Alphaville", "Market Square"),
            (mod_b, rooms_b[0], "Betatown", "Union Square"),
            (mod_b, rooms_b[1], "Betatown", "Union Square"),
        ):
            ours = with_content_key(await room_messages(client, room), DISPATCH_KEY)
            tags = [
                (content_of(m)[DISPATCH_KEY]["stage"], content_of(m)[DISPATCH_KEY]["part"])
                for m in ours
            ]
            assert tags == [("call", "text"), ("go", "text"), ("go", "location")], tags
            assert all(m.sender == env.bot_user.user_id for m in ours)
            assert content_of(ours[0])["body"] == f"Get ready in {city}"
            assert content_of(ours[1])["body"] == f"Walk to {place} now"
            assert "formatted_body" in content_of(ours[1])
            assert content_of(ours[2])["msgtype"] == "m.location"
            assert content_of(ours[2])["geo_uri"].startswith("geo:")
            # On the instant, within a second (origin_server_ts is the server's clock,
            # the same machine's).
            call_ts = ours[0].server_timestamp / 1000
            go_ts = ours[1].server_timestamp / 1000
            assert 0 <= call_ts - start.timestamp() < 1.0, call_ts - start.timestamp()
            assert 0 <= go_ts - (start.timestamp() + 3) < 1.0
