"""The crew on the control side, against the real Synapse: two bots of one crew on
ONE homeserver (the quick variant), heartbeat 1 s. One voice in the control room,
the speaker's successor, !arm's roll call (same file, a differing file, a city
order naming a stranger), !crew and !status, crew members never taken as commands
or check-ins, and invites among members."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bot_harness import seconds_ahead
from crew_harness import crew_env
from matrix_helpers import ClientPool, create_room, join, send_text
from test_faults_live import query, scenario, sleep_until, wait_for

from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver


AHEAD = seconds_ahead(3600)


def later(sid: str, rooms: list[str], text: str = "x") -> dict[str, object]:
    """A scenario whose one stage is far ahead (arming tests send nothing); the same
    file on every member unless ``text`` differs."""
    return scenario(sid, rooms, AHEAD, [{"id": "go", "at": "0s", "text": text}])


async def test_only_the_speaker_replies_and_the_next_takes_over(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with crew_env([homeserver, homeserver], tmp_path, clients, "voice") as crew:
        a, b = crew.bots
        await crew.start()
        replies = await crew.replies("!help", wait=4)
        assert [s for s, _ in replies] == [a.bot_user.user_id], replies

        await a.stop()  # a clean stop: its "stopping" heartbeat is read at once
        replies = await crew.replies("!help", wait=5, until=1)
        assert [s for s, _ in replies] == [b.bot_user.user_id], replies
        # Both members audited the first command; the second only b (a was gone).
        assert query(b, "SELECT count(*) FROM audit WHERE command = '!help'") == [(2,)]


async def test_arm_roll_call_same_file_differs_and_unknown_member(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with crew_env([homeserver, homeserver], tmp_path, clients, "arm") as crew:
        a, b = crew.bots
        room = await create_room(crew.org, name="arm city")
        for bot in crew.bots:
            bot.write_scenario(later("same", [room]))
        a.write_scenario(later("odd", [room], "the text A has"))
        b.write_scenario(later("odd", [room], "an older text B has"))
        stranger = "@nobody-in-this-crew:example.org"
        for bot in crew.bots:
            city_order = {**later("ord", [room])}
            city_order["cities"][0]["crew"] = [a.bot_user.user_id, stranger]  # type: ignore[index]
            bot.write_scenario(city_order)
        await crew.start()

        # The bots are not in the room: the speaker shows it and asks to confirm.
        replies = await crew.replies("!arm same", wait=15, until=1)
        assert [s for s, _ in replies] == [a.bot_user.user_id], replies
        assert "Not armed yet" in replies[0][1], replies
        replies = await crew.replies("!arm same confirm", wait=15, until=1)
        assert [s for s, _ in replies] == [a.bot_user.user_id], replies
        body = replies[0][1]
        assert f"- {a.bot_user.user_id}: armed" in body and f"- {b.bot_user.user_id}: armed" in body
        beats = await crew.heartbeats()
        same = beats[a.bot_user.user_id]["armed"]
        assert len(same) == 1 and beats[b.bot_user.user_id]["armed"] == same

        await crew.replies("!arm odd", wait=15, until=1)
        replies = await crew.replies("!arm odd confirm", wait=15, until=1)
        body = replies[0][1]
        assert f"- {a.bot_user.user_id}: armed" in body, body
        assert f"- {b.bot_user.user_id}: differs" in body, body
        assert "the text" not in body and "older" not in body  # digests, never content
        assert query(b, "SELECT count(*) FROM runs WHERE scenario_id = 'odd'") == [(0,)]
        assert query(a, "SELECT count(*) FROM runs WHERE scenario_id = 'odd'") == [(1,)]

        replies = await crew.replies("!arm ord", wait=10, until=1)
        assert [s for s, _ in replies] == [a.bot_user.user_id], replies
        assert stranger in replies[0][1] and "Nothing was armed" in replies[0][1]
        for bot in crew.bots:
            assert query(bot, "SELECT count(*) FROM runs WHERE scenario_id = 'ord'") == [(0,)]

        # !crew: every member, its homeserver, heartbeat, version, armed files,
        # rooms per city, where it is on duty.
        await a.opt_in(crew.org, room)
        await b.wait_joined(room, by=crew.org)
        replies = await crew.replies("!crew", wait=5, until=1)
        assert len(replies) == 1, replies
        body = replies[0][1]
        for bot in crew.bots:
            assert bot.bot_user.user_id in body
        assert homeserver.server_name in body and same[0][:12] in body
        assert "this bot" in body and "s ago" in body and body.count("town 1/1") == 2, body
        status = await crew.replies("!status same", wait=5, until=1)
        assert f"On duty: town: {a.bot_user.user_id}" in status[0][1], status


async def test_crew_members_are_never_commands_or_checkins_and_invite_each_other(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    async with crew_env(
        [homeserver, homeserver], tmp_path, clients, "mates", extra_members=1
    ) as crew:
        a, b = crew.bots
        third = await clients.participant(crew.extra[0])  # a crew member, power 50
        await join(third, crew.control_room)
        room = await create_room(crew.org, name="mates city", invite=[third.user_id])
        await join(third, room)
        start = seconds_ahead(20)
        for bot in crew.bots:
            bot.write_scenario(
                scenario(
                    "mates",
                    [room],
                    start,
                    # The second stage keeps the run armed: check-ins count for it.
                    [{"id": "go", "at": "0s", "text": "x"}, {"id": "on", "at": "+1h", "text": "y"}],
                )
            )
        await crew.start()

        # The moderator invites one member; it invites the rest; they accept.
        await a.opt_in(crew.org, room)
        await b.wait_joined(room, by=crew.org)
        # The server shows b joined as soon as its join returns; b records the room
        # just after (seen missing once under load): wait for the row, then check it.
        sql = "SELECT opted_in_by, note FROM rooms WHERE room_id = ?"
        for _ in range(100):
            if opted := query(b, sql, (room,)):
                break
            await asyncio.sleep(0.1)
        assert opted == [(a.bot_user.user_id, "invited by a crew member")], opted

        # A crew member's command is not taken (not answered, not audited) by anyone.
        await send_text(third, crew.control_room, "!help")
        replies = await crew.replies("!arm mates", wait=15, until=1)
        assert "Armed mates" in replies[0][1], replies
        for bot in crew.bots:
            rows = query(bot, "SELECT sender FROM audit WHERE sender = ?", (third.user_id,))
            assert rows == [], rows

        # Nor its !here after the stage: only the participant's counts.
        person = await homeserver.register(f"p-{tmp_path.name[-6:]}")
        participant = await clients.participant(person)
        await crew.org.room_invite(room, participant.user_id)
        await join(participant, room)
        await sleep_until(start)
        await wait_for(lambda: len(query(a, "SELECT 1 FROM deliveries WHERE state = 'sent'")) > 0,
                       15, "the stage was not sent")
        await send_text(third, room, "!here")
        await send_text(participant, room, "!here")  # after the crew member's
        for bot in crew.bots:
            await wait_for(lambda b=bot: query(b, "SELECT 1 FROM checkins"), 10, "no check-in")  # type: ignore[misc]
            counted = query(bot, "SELECT user_id FROM checkins")
            assert counted == [(participant.user_id,)], counted
