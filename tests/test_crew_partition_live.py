"""Duplicates after a partition, on two federated homeservers (``federated_pair``):
one member on each, each first in its own city's order. Cut apart across an
instant, both send to both cities' rooms; after healing, the member later in each
city's order redacts its own copy as soon as it sees the other's, so each room
ends with one visible copy, and the speaker tells the control room."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from bot_harness import BotEnv, iso_z, seconds_ahead
from crew_harness import crew_env
from matrix_helpers import ClientPool, content_of, create_room, room_messages, with_content_key
from nio import AsyncClient
from test_crew_send_live import record_crew
from test_faults_live import query, sleep_until

from bot import DISPATCH_KEY
from bot.devtools.federation import FederatedPair

pytestmark = pytest.mark.homeserver


def copy_of(bot: BotEnv, room: str) -> str:
    """The event id of ``bot``'s copy of stage go in ``room``, from its ledger."""
    rows = query(
        bot,
        "SELECT event_id FROM deliveries WHERE room_id = ? AND stage_id = 'go' AND state = 'sent'",
        (room,),
    )
    assert len(rows) == 1, rows
    return str(rows[0][0])


async def until_one_copy(
    client: AsyncClient, room: str, *, keep: str, gone: str, timeout: float
) -> tuple[int, float]:
    """Until ``client`` sees both copies in ``room``: ``keep`` visible with its tag,
    ``gone`` redacted (so the room shows one copy, and not for want of the other).
    Returns the dispatch copies still visible and ``gone``'s origin_server_ts (in s):
    the copy of the member later in the city's order, which covered the room."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        events = {getattr(e, "event_id", None): e for e in await room_messages(client, room)}
        seen = {i: DISPATCH_KEY in content_of(e) for i, e in events.items() if i in (keep, gone)}
        if seen == {keep: True, gone: False}:
            visible = with_content_key(events.values(), DISPATCH_KEY)
            assert [e.event_id for e in visible if e.event_id in (keep, gone)] == [keep]
            return len(visible), events[gone].server_timestamp / 1000
        assert asyncio.get_running_loop().time() < deadline, (room, seen)
        await asyncio.sleep(0.5)


async def test_partition_both_send_then_each_room_keeps_one_copy(
    federated_pair: FederatedPair, tmp_path: Path
) -> None:
    pair = federated_pair
    async with (
        ClientPool(pair.a, tmp_path / "ca") as pool_a,
        ClientPool(pair.b, tmp_path / "cb") as pool_b,
        crew_env([pair.a, pair.b], tmp_path, pool_a, "part") as crew,
    ):
        a, b = crew.bots
        ida, idb = a.bot_user.user_id, b.bot_user.user_id
        moderator = await pair.b.register(f"mod-{uuid.uuid4().hex[:6]}")
        await pair.b.exempt_from_rate_limits(moderator.user_id)
        mod = await pool_b.participant(moderator)
        north = await create_room(crew.org, name="north")  # on a's server
        south = await create_room(mod, name="south")  # on b's server
        start = seconds_ahead(45)
        data = {
            "version": 1,
            "id": "fed",
            "title": "fed",
            "start": iso_z(start),
            "cities": [
                {"id": "north", "name": "N", "timezone": "UTC", "rooms": [north],
                 "crew": [ida, idb]},
                {"id": "south", "name": "S", "timezone": "UTC", "rooms": [south],
                 "crew": [idb, ida]},
            ],
            # The second stage keeps the run armed through the test.
            "stages": [
                {"id": "go", "at": "0s", "text": "x"},
                {"id": "on", "at": "+1h", "text": "y"},
            ],
        }
        for bot in crew.bots:
            bot.write_scenario(data)
        await crew.start()
        # Each room's moderator invites its own server's member; it invites the other.
        await a.opt_in(crew.org, north)
        await b.wait_joined(north, by=crew.org)
        await b.opt_in(mod, south)
        await a.wait_joined(south, by=mod)

        replies = await crew.replies("!arm fed", wait=20, until=1)
        if "Not armed yet" in replies[0][1]:  # a room the sync has not brought in yet
            replies = await crew.replies("!arm fed confirm", wait=20, until=1)
        assert [s for s, _ in replies] == [ida], replies
        assert f"- {ida}: armed" in replies[0][1] and f"- {idb}: armed" in replies[0][1], replies

        pair.partition()  # both alive, each cut off from the other's server
        await sleep_until(start + timedelta(seconds=4))
        for bot, name in ((a, "a"), (b, "b")):
            sent = query(bot, "SELECT count(*) FROM deliveries WHERE state = 'sent'")
            assert sent == [(2,)], (name, sent)  # both cities' rooms, from each member
        await pair.heal()

        # North orders a first: b redacts its copy; south orders b first: a redacts.
        # Each seen from the server of its moderator, which got both copies.
        seen_north = await until_one_copy(
            crew.org, north, keep=copy_of(a, north), gone=copy_of(b, north), timeout=40
        )
        seen_south = await until_one_copy(
            mod, south, keep=copy_of(b, south), gone=copy_of(a, south), timeout=40
        )
        told = await crew.notices("Duplicate in", wait=20, count=2)
        assert {s for s, _ in told} == {ida}, told  # the speaker, for both rooms
        assert [r for r in (north, south) if any(r in body for _, body in told)] == [north, south]
        record_crew(
            "tests/test_crew_partition_live.py::"
            "test_partition_both_send_then_each_room_keeps_one_copy",
            "partition",
            "Two members on two federating Synapses, cut apart across an instant (both "
            "alive, each counts the other down): both send to both rooms; after healing, "
            "the member later in each city's order redacts its copy",
            lost={"partition": 1}, covered=2,
            last_covered_s=max(seen_north[1], seen_south[1]) - start.timestamp(),
            visible_duplicates=seen_north[0] - 1 + seen_south[0] - 1,
        )
