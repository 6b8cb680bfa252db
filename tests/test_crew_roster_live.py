"""Crew heartbeats against the real Synapse: two (or three) members, each its own
user with its own nio client configured like the bot's, in one control room.

Each member runs a Roster (bot/crew/roster.py) over bot/matrix/crew_state.py
and is fed from its own /sync the way the bot will be (crew_events → ingest).
heartbeat_seconds is 1 s, on the real clock: "down" is 3 s after the last beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import NewUser
from matrix_helpers import ClientPool, create_room, join
from nio import AsyncClient, LoginResponse, RoomPutStateError, RoomPutStateResponse, SyncResponse

from bot import __version__
from bot.clock import SystemClock
from bot.crew import Crew
from bot.crew.heartbeat import EVENT_TYPE, Heartbeat
from bot.crew.publish import PublishProblem
from bot.crew.roster import Roster
from bot.devtools.homeserver import EmbeddedHomeserver, RegisteredUser
from bot.matrix.crew_state import MatrixCrewState, crew_events
from bot.matrix.session import client_config
from bot.matrix.sync import SYNC_FILTER

pytestmark = pytest.mark.homeserver

HEARTBEAT = timedelta(seconds=1)
DIGEST = "cd" * 32


@dataclass
class Member:
    """One crew member: its client, its roster, and the sync that feeds it."""

    user: RegisteredUser
    client: AsyncClient
    roster: Roster
    rooms: tuple[str, ...]
    reports: list[PublishProblem] = field(default_factory=list)
    seen_raw: int = 0  # heartbeat events its sync brought (taken or not)
    _feed: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> str:
        return self.user.user_id

    def start(self) -> None:
        self.roster.start()
        self._feed = asyncio.create_task(self._sync())

    async def _sync(self) -> None:
        full = True
        while True:
            resp = await self.client.sync(timeout=200, sync_filter=SYNC_FILTER, full_state=full)
            if not isinstance(resp, SyncResponse):
                await asyncio.sleep(0.2)
                continue
            full = False
            for room_id, events in crew_events(resp, self.rooms).items():
                self.seen_raw += len(events)
                self.roster.ingest(room_id, events)

    async def kill(self) -> None:
        """As if the process died: no stopping heartbeat, the connection gone."""
        await self.roster.halt()
        await self.stop_feed()
        await self.client.close()

    async def stop_feed(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed
            self._feed = None

    def up(self, other: Member) -> bool:
        return not self.roster.view().is_down(other.user_id, self.roster_clock.now())

    roster_clock = SystemClock()


async def member_client(hs: EmbeddedHomeserver, user: RegisteredUser, store: Path) -> AsyncClient:
    """A client set up as the bot's session sets up its own (no retries inside nio)."""
    store.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (one local mkdir)
    client = AsyncClient(hs.url, user.user_id, store_path=str(store), config=client_config())
    response = await client.login(user.password, device_name="crew test")
    assert isinstance(response, LoginResponse), response
    return client


@dataclass
class Crewroom:
    hs: EmbeddedHomeserver
    org: AsyncClient
    room: str
    crew: Crew
    members: dict[str, Member]
    users: dict[str, RegisteredUser]
    participant: AsyncClient | None = None

    def member(
        self, name: str, client: AsyncClient, *, armed: Collection[str] = frozenset({DIGEST})
    ) -> Member:
        user = self.users[name]
        reports: list[PublishProblem] = []

        async def report(problem: PublishProblem) -> None:
            reports.append(problem)

        roster = Roster(
            crew=self.crew,
            me=user.user_id,
            rooms=(self.room,),
            port=MatrixCrewState(client, timeout_s=5),
            clock=SystemClock(),
            version=__version__,
            armed=lambda: armed,
            report=report,
        )
        m = Member(user, client, roster, (self.room,), reports)
        self.members[name] = m
        return m


async def set_power_levels(client: AsyncClient, room: str, change: Callable[[Any], None]) -> None:
    state = await client.room_get_state_event(room, "m.room.power_levels")
    content = dict(state.content)  # type: ignore[union-attr]
    change(content)
    resp = await client.room_put_state(room, "m.room.power_levels", content)
    assert isinstance(resp, RoomPutStateResponse), resp


@pytest_asyncio.fixture
async def crewroom(
    homeserver: EmbeddedHomeserver, new_user: NewUser, clients: ClientPool, tmp_path: Path
) -> AsyncIterator[Crewroom]:
    """An organiser's control room with members a, b (power 50) and c (power 0),
    and a participant p (power 50, not a member), all joined."""
    org_user = await new_user("organiser")
    users = {n: await new_user(f"crew-{n}") for n in ("a", "b", "c", "p")}
    org = await clients.participant(org_user)
    power = {users[n].user_id: 50 for n in ("a", "b", "p")}
    room = await create_room(
        org,
        name="control",
        invite=[u.user_id for u in users.values()],
        power_users=power,
    )
    crew = Crew(tuple(users[n].user_id for n in ("a", "b", "c")), HEARTBEAT)
    made = Crewroom(homeserver, org, room, crew, {}, users)
    opened: list[AsyncClient] = []
    try:
        for name in ("a", "b", "c", "p"):
            client = await member_client(homeserver, users[name], tmp_path / name)
            opened.append(client)
            await join(client, room)
            if name == "p":
                made.participant = client
            else:
                made.member(name, client)
        yield made
    finally:
        for m in made.members.values():
            await m.roster.halt()
            await m.stop_feed()
        for client in opened:
            await client.close()


async def until(condition: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Wait (polling every 20 ms) until ``condition()``; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_two_members_see_each_other_up_within_a_heartbeat(crewroom: Crewroom) -> None:
    a, b = crewroom.members["a"], crewroom.members["b"]
    a.start()
    b.start()
    await until(lambda: a.up(b) and b.up(a), timeout=2, what="each sees the other up")
    # They keep each other up (armed: a beat every second) for longer than
    # 3 heartbeats.
    for _ in range(20):
        await asyncio.sleep(0.2)
        assert a.up(b) and b.up(a)
    beat = a.roster.heartbeat_of(b.user_id)
    assert beat is not None and beat.armed == {DIGEST} and beat.version == __version__
    assert (
        a.roster.view().on_duty(crewroom.crew.members, {a.user_id, b.user_id}, a.roster_clock.now())
        == a.user_id
    )
    # A bot starting now reads both from the room's state, without any sync.
    c = crewroom.members["c"]
    await c.roster.load()
    assert c.up(a) and c.up(b)


async def test_a_clean_stop_is_seen_at_once(crewroom: Crewroom) -> None:
    a, b = crewroom.members["a"], crewroom.members["b"]
    a.start()
    b.start()
    await until(lambda: a.up(b), timeout=2, what="a sees b up")
    started = time.monotonic()
    assert await b.roster.stopping() == (crewroom.room,)
    assert time.monotonic() - started < 2
    took = await until(lambda: not a.up(b), timeout=2, what="a sees b down")
    assert took < HEARTBEAT.total_seconds() * 3 - 1  # not by expiry
    assert a.roster.view().members[b.user_id].stopping
    # The speaker passes on: a is the first member up.
    assert a.roster.view().speaker(a.roster_clock.now()) == a.user_id


async def test_a_killed_member_is_down_after_three_heartbeats(crewroom: Crewroom) -> None:
    a, b = crewroom.members["a"], crewroom.members["b"]
    a.start()
    b.start()
    await until(lambda: a.up(b), timeout=2, what="a sees b up")
    await asyncio.sleep(1.5)
    await b.kill()
    assert a.up(b)
    took = await until(lambda: not a.up(b), timeout=6, what="a sees b down")
    # Its last beat was at most one heartbeat before the kill.
    assert 2 * HEARTBEAT.total_seconds() - 0.3 <= took <= 3 * HEARTBEAT.total_seconds() + 1.5
    assert not a.roster.view().members[b.user_id].stopping


async def test_an_idle_member_that_died_is_found_by_the_roll_call(crewroom: Crewroom) -> None:
    """Nothing armed: members beat every 10 minutes, but every member beats at
    once on reading a command, so one that does not is down 3 heartbeats after
    the command instead of 30 minutes after its last beat."""
    for name in ("a", "b"):
        crewroom.member(name, crewroom.members[name].client, armed=frozenset())
    a, b = crewroom.members["a"], crewroom.members["b"]
    a.start()
    b.start()
    await until(lambda: a.up(b), timeout=2, what="a sees b up")
    idle = a.roster.heartbeat_of(b.user_id)
    assert idle is not None and idle.interval == timedelta(minutes=10)
    await b.kill()
    await asyncio.sleep(3.5)
    assert a.up(b)  # by its announced rate it is up for half an hour
    a.roster.command_read()  # a command read in the control room; b cannot answer
    took = await until(lambda: not a.up(b), timeout=6, what="a sees idle b down")
    assert 3 * HEARTBEAT.total_seconds() - 0.1 <= took <= 3 * HEARTBEAT.total_seconds() + 1


async def test_a_member_without_power_gets_one_clear_report_and_the_fix_works(
    crewroom: Crewroom,
) -> None:
    a, c = crewroom.members["a"], crewroom.members["c"]
    a.start()
    c.start()
    await until(lambda: bool(c.reports), timeout=3, what="c's report")
    await asyncio.sleep(2.5)  # two more attempts at the heartbeat rate
    assert len(c.reports) == 1
    problem = c.reports[0]
    assert problem.forbidden and problem.room_id == crewroom.room and problem.member == c.user_id
    text = str(problem)
    assert "HTTP 403 M_FORBIDDEN" in text and "power 50" in text
    assert '"org.blossom.crew": 0' in text
    assert c.roster.problems() == (crewroom.room,)
    assert not a.up(c)
    # The documented fix: name the event type lower in the power levels.
    await set_power_levels(
        crewroom.org, crewroom.room, lambda pl: pl.setdefault("events", {}).update({EVENT_TYPE: 0})
    )
    await until(lambda: a.up(c), timeout=4, what="a sees c up after the fix")
    assert c.roster.problems() == () and len(c.reports) == 1


async def test_nobody_can_write_a_members_slot_and_a_participants_own_is_ignored(
    crewroom: Crewroom,
) -> None:
    a, b = crewroom.members["a"], crewroom.members["b"]
    p = crewroom.users["p"]
    p_client = crewroom.participant
    assert p_client is not None
    a.start()
    await until(lambda: a.seen_raw > 0, timeout=2, what="a's first sync")
    fake = Heartbeat(b.user_id, a.roster_clock.now(), HEARTBEAT, "0.1.0").content()
    # The participant (power 50: enough to send state) writing b's slot: the
    # homeserver refuses — a state key that is a user id belongs to that user.
    resp = await p_client.room_put_state(crewroom.room, EVENT_TYPE, fake, state_key=b.user_id)
    assert isinstance(resp, RoomPutStateError) and resp.status_code == "M_FORBIDDEN", resp
    # So does the room's creator, whose power is unlimited in room v12.
    resp = await crewroom.org.room_put_state(crewroom.room, EVENT_TYPE, fake, state_key=b.user_id)
    assert isinstance(resp, RoomPutStateError) and resp.status_code == "M_FORBIDDEN", resp
    # Its own slot it may write; the roster reads it and ignores it.
    raw = a.seen_raw
    own = Heartbeat(p.user_id, a.roster_clock.now(), HEARTBEAT, "0.1.0").content()
    resp = await p_client.room_put_state(crewroom.room, EVENT_TYPE, own, state_key=p.user_id)
    assert isinstance(resp, RoomPutStateResponse), resp
    await until(lambda: a.seen_raw > raw, timeout=3, what="a's sync brings p's event")
    assert a.roster.view().members == {}  # neither p's own nor anything in b's slot
    assert a.roster.view().is_down(b.user_id, a.roster_clock.now())  # b never beat
    slot = await p_client.room_get_state_event(crewroom.room, EVENT_TYPE, b.user_id)
    assert getattr(slot, "status_code", None) == "M_NOT_FOUND", slot  # b's slot stayed empty
    # And read from room state at start, the same.
    c = crewroom.members["c"]
    await c.roster.load()
    assert p.user_id not in c.roster.view().members
    assert c.roster.view().is_down(b.user_id, a.roster_clock.now())
