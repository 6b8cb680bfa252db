"""A minimal Matrix client over aiohttp: what the benchmark needs and nothing else.

It sets up rooms quickly (no sync, no encryption) and is the *ceiling* client: a
loop of ``PUT /rooms/{id}/send/m.room.message/{txn}`` with a fixed number of
requests in flight and no other work, so its rate is the homeserver's limit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

T = TypeVar("T")


class MatrixRequestError(RuntimeError):
    pass


def q(value: str) -> str:
    return quote(value, safe="")


class RawClient:
    """One access token on one homeserver. 429s are waited out (setup only: the
    benchmark's users are exempt from rate limits, so a 429 means misconfiguration
    and shows up as a slower run, never as a lost message)."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, token: str, user_id: str
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.user_id = user_id
        self._headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    async def login(
        cls,
        session: aiohttp.ClientSession,
        base_url: str,
        localpart: str,
        password: str,
        *,
        device_id: str | None = None,
    ) -> RawClient:
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
            "initial_device_display_name": "benchmark",
        }
        if device_id:
            body["device_id"] = device_id
        async with session.post(f"{base_url}/_matrix/client/v3/login", json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise MatrixRequestError(f"login {localpart}: {resp.status} {data}")
        return cls(session, base_url, data["access_token"], data["user_id"])

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        url = f"{self.base_url}/_matrix/client/v3{path}"
        for _ in range(100):
            async with self.session.request(method, url, json=body, headers=self._headers) as resp:
                data: dict[str, Any] = await resp.json(content_type=None) or {}
                if resp.status == 429:
                    await asyncio.sleep(int(data.get("retry_after_ms", 500)) / 1000)
                    continue
                if resp.status != 200:
                    raise MatrixRequestError(f"{method} {path}: {resp.status} {data}")
                return data
        raise MatrixRequestError(f"{method} {path}: still rate-limited after 100 tries")

    async def create_room(
        self,
        name: str,
        *,
        invite: Sequence[str] = (),
        encrypted: bool = False,
        public: bool = False,
        direct: bool = False,
        power_users: Mapping[str, int] | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "name": name,
            "preset": "public_chat" if public else "private_chat",
            "invite": list(invite),
        }
        if power_users:
            body["power_level_content_override"] = {"users": dict(power_users)}
        if direct:
            body["is_direct"] = True
            body["preset"] = "trusted_private_chat"
        if encrypted:
            body["initial_state"] = [
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ]
        data = await self.request("POST", "/createRoom", body)
        return str(data["room_id"])

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request("POST", f"/rooms/{q(room_id)}/invite", {"user_id": user_id})

    async def join(self, room_id: str) -> None:
        await self.request("POST", f"/join/{q(room_id)}", {})

    async def send(
        self, room_id: str, content: Mapping[str, Any], txn_id: str | None = None
    ) -> str:
        txn = txn_id or uuid.uuid4().hex
        path = f"/rooms/{q(room_id)}/send/m.room.message/{q(txn)}"
        data = await self.request("PUT", path, content)
        return str(data["event_id"])

    async def event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")

    async def messages(self, room_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The room's latest events, newest first."""
        data = await self.request("GET", f"/rooms/{q(room_id)}/messages?dir=b&limit={limit}")
        chunk: list[dict[str, Any]] = data.get("chunk", [])
        return chunk


async def bounded(
    concurrency: int, items: Iterable[T], work: Callable[[T], Awaitable[Any]]
) -> list[Any]:
    """``work(item)`` for every item, at most ``concurrency`` at a time, results in order."""
    todo = list(items)
    results: list[Any] = [None] * len(todo)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(todo)):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[i] = await work(todo[i])

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(todo))))))
    return results


@dataclass(frozen=True)
class SendRun:
    """One fan-out by a baseline client: when it began (epoch s) and what it sent."""

    started: float
    finished: float
    sent: list[tuple[str, str]]  # (room_id, event_id) in completion order

    @property
    def seconds(self) -> float:
        return self.finished - self.started


async def ceiling_fanout(
    client: RawClient,
    rooms: Sequence[str],
    content: Callable[[int, str], Mapping[str, Any]],
    concurrency: int,
) -> SendRun:
    """One message to every room with ``concurrency`` requests in flight, doing
    nothing else: the homeserver's ceiling at that concurrency."""
    sent: list[tuple[str, str]] = []
    bodies = [content(i, room) for i, room in enumerate(rooms)]
    txns = [uuid.uuid4().hex for _ in rooms]

    async def one(i: int) -> None:
        event_id = await client.send(rooms[i], bodies[i], txns[i])
        sent.append((rooms[i], event_id))

    started = time.time()
    await bounded(concurrency, range(len(rooms)), one)
    return SendRun(started, time.time(), sent)


async def origin_timestamps(
    client: RawClient, sent: Iterable[tuple[str, str]], concurrency: int = 32
) -> dict[str, int]:
    """event_id -> origin_server_ts (ms), read back from the homeserver."""
    pairs = list(sent)

    async def one(pair: tuple[str, str]) -> tuple[str, int]:
        event = await client.event(*pair)
        return pair[1], int(event["origin_server_ts"])

    return dict(await bounded(concurrency, pairs, one))
