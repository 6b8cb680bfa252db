"""A real Blossom bot against the test homeserver, with an organiser and rooms.

The bot runs either in this process (``start()``, fast, lets a test look at
its store) or as a separate ``python -m bot run`` process (``spawn()``, for
SIGKILL tests). Either way it is the same code path as ``blossom run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from matrix_helpers import (
    ClientPool,
    collect_messages,
    content_of,
    create_room,
    send_text,
    sync_until,
)
from nio import AsyncClient, RoomMessage

from bot.app import run_bot
from bot.clock import Clock, SystemClock
from bot.config import Config, load_config
from bot.devtools.homeserver import EmbeddedHomeserver, RegisteredUser


def iso_z(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def seconds_ahead(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@dataclass
class BotEnv:
    hs: EmbeddedHomeserver
    dir: Path
    bot_user: RegisteredUser
    organiser: RegisteredUser
    org: AsyncClient
    control_room: str
    pool: ClientPool
    config_path: Path
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def scenarios_dir(self) -> Path:
        return self.dir / "scenarios"

    @property
    def storage_dir(self) -> Path:
        return self.dir / "data"

    def config(self) -> Config:
        return load_config(self.config_path)

    # -- running the bot ---------------------------------------------------------

    async def start(self, clock: Clock | None = None) -> None:
        """Run the bot in this process (on ``clock``, the system's by default);
        returns when it has joined the control room."""
        assert self._task is None
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(run_bot(self.config(), clock or SystemClock(), self._stop))
        await self.wait_joined(self.control_room)

    async def stop(self) -> None:
        if self._task is not None and self._stop is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 30)
            self._task = None

    def spawn(self, *, log_level: str = "DEBUG") -> subprocess.Popen[bytes]:
        """Run ``python -m bot run`` as a child process (for SIGKILL tests)."""
        assert self.proc is None or self.proc.poll() is not None
        self.log_path = self.dir / f"bot-{os.getpid()}-{len(list(self.dir.glob('bot-*.log')))}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot",
                "run",
                "--config",
                str(self.config_path),
                "--log-level",
                log_level,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return self.proc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    async def wait_joined(
        self, room_id: str, timeout: float = 20, *, by: AsyncClient | None = None
    ) -> None:
        """Wait until the bot's membership in ``room_id`` is join (seen by the organiser
        or by the room's state)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()  # raises what killed the bot
                raise AssertionError("the bot stopped")
            resp = await (by or self.org).joined_members(room_id)
            members = getattr(resp, "members", None) or []
            if any(m.user_id == self.bot_user.user_id for m in members):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"bot did not join {room_id}")
            await asyncio.sleep(0.1)

    # -- rooms and scenarios ------------------------------------------------------

    async def city_room(
        self,
        moderator: AsyncClient,
        *,
        name: str,
        encrypted: bool = False,
        members: Sequence[str] = (),
    ) -> str:
        return await create_room(moderator, name=name, encrypted=encrypted, invite=list(members))

    async def opt_in(self, moderator: AsyncClient, room_id: str) -> None:
        """The room's creator invites the bot (the opt-in) and waits for the join."""
        resp = await moderator.room_invite(room_id, self.bot_user.user_id)
        assert not hasattr(resp, "status_code") or resp.status_code is None, resp
        await self.wait_joined(room_id, by=moderator)

    def write_scenario(self, data: dict[str, Any], name: str | None = None) -> Path:
        path = self.scenarios_dir / f"{name or data['id']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return path

    # -- control room -------------------------------------------------------------

    async def command(self, text: str, *, timeout: float = 20) -> str:
        """Send a command as the organiser; return the bot's reply body."""
        await sync_until(self.org, lambda: True)
        event_id = await send_text(self.org, self.control_room, text)
        msgs = await collect_messages(
            self.org,
            self.control_room,
            until=lambda ms: any(_replies_to(m, event_id) for m in ms),
            timeout=timeout,
        )
        reply = next(m for m in msgs if _replies_to(m, event_id))
        return str(content_of(reply).get("body", ""))

    async def control_notices(
        self, until_text: str | Sequence[str], timeout: float = 30
    ) -> list[str]:
        """Bot notices in the control room from now, until every text in
        ``until_text`` has appeared in one of them."""
        wanted = [until_text] if isinstance(until_text, str) else list(until_text)

        def bodies(ms: list[RoomMessage]) -> list[str]:
            return [str(content_of(m).get("body", "")) for m in ms
                    if m.sender == self.bot_user.user_id]

        msgs = await collect_messages(
            self.org, self.control_room,
            until=lambda ms: all(any(w in b for b in bodies(ms)) for w in wanted),
            timeout=timeout,
        )
        return bodies(msgs)


def _replies_to(event: RoomMessage, event_id: str) -> bool:
    rel = content_of(event).get("m.relates_to") or {}
    return bool((rel.get("m.in_reply_to") or {}).get("event_id") == event_id)


@contextlib.asynccontextmanager
async def bot_env(  # type: ignore[no-untyped-def]
    hs: EmbeddedHomeserver,
    tmp: Path,
    pool: ClientPool,
    tag: str,
    dispatch: dict[str, Any] | None = None,
    *,
    exempt: bool = True,
):
    """Register a bot and an organiser, create the control room, write a config.

    ``exempt=False`` leaves the bot subject to the homeserver's rate limits and
    exempts the organiser instead, so the test's own setup is not throttled."""
    import uuid

    suffix = uuid.uuid4().hex[:6]
    bot_user = await hs.register(f"blossom-{tag}-{suffix}")
    organiser = await hs.register(f"organiser-{tag}-{suffix}")
    if exempt:
        await hs.exempt_from_rate_limits(bot_user.user_id)
    else:
        await hs.exempt_from_rate_limits(organiser.user_id)
    org = await pool.participant(organiser)
    control = await create_room(org, name=f"control {tag}", invite=[bot_user.user_id])
    (tmp / "scenarios").mkdir(parents=True, exist_ok=True)
    config_path = tmp / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "matrix": {
                    "homeserver": hs.url,
                    "user_id": bot_user.user_id,
                    "password": bot_user.password,
                },
                "storage": {"path": "data"},
                "control": {"rooms": [control], "min_power_level": 50},
                "scenarios": {"dir": "scenarios"},
                "dispatch": {"prepare_seconds": 1.0, **(dispatch or {})},
            }
        )
    )
    env = BotEnv(hs, tmp, bot_user, organiser, org, control, pool, config_path)
    try:
        yield env
    finally:
        await env.stop()
        env.kill()
