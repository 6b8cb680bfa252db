"""Two (or more) real Blossom bots in one crew, sharing a control room, on one
homeserver or on a federated pair. Each bot runs in this process (``BotEnv.start``)
with ``crew: {members: [...], heartbeat_seconds: 1}``: down 3 s after its last beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from bot_harness import BotEnv
from matrix_helpers import ClientPool, content_of, create_room, room_messages, send_text
from nio import AsyncClient, RoomGetStateResponse, RoomMessage

from bot.crew.heartbeat import EVENT_TYPE
from bot.devtools.homeserver import EmbeddedHomeserver, RegisteredUser

HEARTBEAT_S = 1.0


@dataclass
class Crew:
    bots: list[BotEnv]
    org: AsyncClient
    control_room: str
    extra: list[RegisteredUser]  # crew members without a running bot

    @property
    def ids(self) -> list[str]:
        return [b.bot_user.user_id for b in self.bots]

    async def start(self) -> None:
        for bot in self.bots:
            await bot.start()
        await self.wait_heartbeats(self.ids)

    async def heartbeats(self) -> dict[str, dict[str, Any]]:
        """Each member's heartbeat content as the control room's state holds it."""
        resp = await self.org.room_get_state(self.control_room)
        assert isinstance(resp, RoomGetStateResponse), resp
        return {
            e["state_key"]: e["content"] for e in resp.events if e.get("type") == EVENT_TYPE
        }

    async def wait_heartbeats(self, members: Sequence[str], timeout: float = 20) -> None:
        """Until every one of ``members`` has a heartbeat in the room, then two more
        beats: by then every member has read every other's."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not set(members) <= set(await self.heartbeats()):
            assert asyncio.get_running_loop().time() < deadline, "no heartbeats"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2 * HEARTBEAT_S)

    async def replies(self, command: str, *, wait: float, until: int = 99) -> list[tuple[str, str]]:
        """Send ``command`` as the organiser; (sender, body) of every reply to it
        within ``wait`` seconds (or as soon as ``until`` replies came)."""
        event_id = await send_text(self.org, self.control_room, command)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            found = [
                (m.sender, str(content_of(m).get("body", "")))
                for m in await room_messages(self.org, self.control_room)
                if isinstance(m, RoomMessage) and _replies_to(m, event_id)
            ]
            if len(found) >= until or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.3)

    async def notices(
        self, contains: str, *, wait: float, count: int = 1
    ) -> list[tuple[str, str]]:
        """(sender, body) of the control room's messages containing ``contains``,
        once there are ``count`` (or after ``wait`` seconds)."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            found = [
                (m.sender, str(content_of(m).get("body", "")))
                for m in await room_messages(self.org, self.control_room)
                if isinstance(m, RoomMessage) and contains in str(content_of(m).get("body", ""))
            ]
            if len(found) >= count or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.3)


def _replies_to(event: RoomMessage, event_id: str) -> bool:
    rel = content_of(event).get("m.relates_to") or {}
    return bool((rel.get("m.in_reply_to") or {}).get("event_id") == event_id)


def write_config(
    path: Path, hs: EmbeddedHomeserver, user: RegisteredUser, control: str, members: Sequence[str]
) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "matrix": {
                    "homeserver": hs.url,
                    "user_id": user.user_id,
                    "password": user.password,
                },
                "storage": {"path": "data"},
                "control": {"rooms": [control], "min_power_level": 50},
                "scenarios": {"dir": "scenarios"},
                "dispatch": {"prepare_seconds": 1.0},
                "crew": {"members": list(members), "heartbeat_seconds": HEARTBEAT_S},
            }
        )
    )


@contextlib.asynccontextmanager
async def crew_env(
    servers: Sequence[EmbeddedHomeserver],
    tmp: Path,
    pool: ClientPool,
    tag: str,
    *,
    extra_members: int = 0,
) -> AsyncIterator[Crew]:
    """One bot per server in ``servers`` (the same server twice: two bots on one),
    most preferred first; an organiser on the first server who made the control
    room, where every member has power 50 (so they are core group, which must
    change nothing). ``extra_members``: crew members with no bot running."""
    suffix = uuid.uuid4().hex[:6]
    home = servers[0]
    users = [await hs.register(f"crew-{tag}{i}-{suffix}") for i, hs in enumerate(servers)]
    extra = [await home.register(f"crew-{tag}x{i}-{suffix}") for i in range(extra_members)]
    organiser = await home.register(f"org-{tag}-{suffix}")
    for hs, user in zip(servers, users, strict=True):
        await hs.exempt_from_rate_limits(user.user_id)
    await home.exempt_from_rate_limits(organiser.user_id)
    org = await pool.participant(organiser)
    members = [u.user_id for u in users] + [u.user_id for u in extra]
    control = await create_room(
        org, name=f"control {tag}", invite=members, power_users={m: 50 for m in members}
    )
    bots = []
    for i, (hs, user) in enumerate(zip(servers, users, strict=True)):
        d = tmp / f"m{i}"
        (d / "scenarios").mkdir(parents=True)
        write_config(d / "config.yaml", hs, user, control, members)
        bots.append(BotEnv(hs, d, user, organiser, org, control, pool, d / "config.yaml"))
    crew = Crew(bots, org, control, extra)
    try:
        yield crew
    finally:
        for bot in bots:
            with contextlib.suppress(Exception):
                await bot.stop()
