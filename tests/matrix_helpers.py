"""matrix-nio clients that act as participants against the embedded homeserver.

Every helper raises on a Matrix error instead of returning nio's error response, so a
test fails where the problem is, not three steps later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    MessageDirection,
    RoomCreateResponse,
    RoomMessage,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)

from bot.devtools.homeserver import EmbeddedHomeserver, RegisteredUser

# Synapse's /sync timeline holds 10 events per room by default; a burst of more between
# two syncs would leave a gap that collect_messages() silently misses. This filter asks
# for enough that a test never meets the limit (collect_messages also checks).
SYNC_FILTER: dict[str, Any] = {"room": {"timeline": {"limit": 1000}}}


class MatrixError(AssertionError):
    """A Matrix request in a test helper failed."""


T = TypeVar("T")


def _check(response: object, expected: type[T], what: str) -> T:
    if not isinstance(response, expected):
        raise MatrixError(f"{what} failed: {response}")
    return response


async def maintain_keys(client: AsyncClient) -> None:
    """Upload our keys, query changed devices and claim one-time keys, as needed.

    nio does none of this by itself; a real client does it after every sync. Without it a
    receiver's device is unknown to senders, and an encrypted message arrives as an
    undecryptable MegolmEvent.
    """
    if not client.olm:
        return
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())


async def sync_once(client: AsyncClient, *, timeout_ms: int = 0) -> SyncResponse:
    """One /sync (long-polling up to ``timeout_ms``), then key maintenance."""
    response = await client.sync(timeout=timeout_ms, sync_filter=SYNC_FILTER)
    checked = _check(response, SyncResponse, f"sync of {client.user_id}")
    await maintain_keys(client)
    return checked


# Helpers take a timeout rather than leaving it to asyncio.timeout() so that the error
# they raise on expiry can say what was seen by then.
async def sync_until(
    client: AsyncClient,
    condition: Callable[[], bool],
    *,
    timeout: float = 10,
) -> None:
    """Sync until ``condition()`` holds (checked after each sync).

    The first sync does not long-poll: it only catches up with what the server already
    has, which is often all the condition needs (``lambda: True`` is "catch up"). A
    long poll there would wait out its full second whenever nothing new arrives.
    """
    deadline = time.monotonic() + timeout
    first = True
    while True:
        remaining = deadline - time.monotonic()
        poll = 0 if first else max(0, min(remaining, 1))
        first = False
        await sync_once(client, timeout_ms=int(poll * 1000))
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{client.user_id}: condition not met within {timeout:g} s")


async def participant(
    hs: EmbeddedHomeserver,
    user: RegisteredUser,
    store_dir: Path,
    *,
    device_id: str | None = None,
) -> AsyncClient:
    """A logged-in nio client for ``user`` with its encryption store in ``store_dir``.

    Its device keys are uploaded before it returns, so others can encrypt to it at once.
    ``max_limit_exceeded=None`` makes nio wait out 429s the way the bot's client does.
    """
    store_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (one local mkdir)
    config = AsyncClientConfig(
        store_sync_tokens=True, encryption_enabled=True, max_limit_exceeded=None
    )
    client = AsyncClient(
        hs.url, user.user_id, device_id=device_id, store_path=str(store_dir), config=config
    )
    try:
        response = await client.login(user.password, device_name=f"test {user.localpart}")
        _check(response, LoginResponse, f"login of {user.user_id}")
        await maintain_keys(client)
    except BaseException:
        await client.close()
        raise
    return client


class ClientPool:
    """Participants that are all closed together when the ``async with`` block ends."""

    def __init__(self, hs: EmbeddedHomeserver, store_root: Path) -> None:
        self.hs = hs
        self.store_root = store_root
        self.clients: list[AsyncClient] = []

    async def participant(
        self, user: RegisteredUser, *, device_id: str | None = None
    ) -> AsyncClient:
        store = self.store_root / f"{user.localpart}-{len(self.clients)}"
        client = await participant(self.hs, user, store, device_id=device_id)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        clients, self.clients = self.clients, []
        for client in clients:
            await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def create_room(
    client: AsyncClient,
    *,
    name: str,
    encrypted: bool = False,
    invite: Sequence[str] = (),
    power_users: Mapping[str, int] | None = None,
) -> str:
    """Create a private room and return its id once ``client`` has it from sync.

    ``power_users`` must not name the creator: in room version 12 (Synapse's default)
    creators have unlimited power and may not appear in ``m.room.power_levels``.
    """
    initial_state: list[dict[str, Any]] = []
    if encrypted:
        initial_state.append(
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        )
    override = None
    if power_users:
        if client.user_id in power_users:
            raise ValueError("the creator must not be listed in power_users (room v12)")
        override = {"users": dict(power_users)}
    response = await client.room_create(
        name=name,
        invite=list(invite),
        initial_state=initial_state,
        power_level_override=override,
    )
    room_id: str = _check(response, RoomCreateResponse, f"creating room {name!r}").room_id
    # room_send needs the room (and whether it is encrypted) in client.rooms, which only
    # sync fills in.
    await sync_until(client, lambda: room_id in client.rooms)
    return room_id


async def join(client: AsyncClient, room_id: str) -> None:
    """Join ``room_id`` and sync until the client knows the room."""
    response = await client.join(room_id)
    _check(response, JoinResponse, f"{client.user_id} joining {room_id}")
    await sync_until(client, lambda: room_id in client.rooms)


async def join_via(client: AsyncClient, room_id: str, server_name: str) -> None:
    """Join ``room_id`` on another homeserver through ``server_name`` (nio's ``join``
    takes no server names), then sync until the client knows the room."""
    url = (
        f"{client.homeserver}/_matrix/client/v3/join/{quote(room_id, safe='')}"
        f"?server_name={quote(server_name, safe='')}"
    )
    headers = {"Authorization": f"Bearer {client.access_token}"}
    async with aiohttp.ClientSession() as http, http.post(url, json={}, headers=headers) as resp:
        if resp.status != 200:
            raise MatrixError(
                f"{client.user_id} joining {room_id} via {server_name}: "
                f"{resp.status} {await resp.text()}"
            )
    await sync_until(client, lambda: room_id in client.rooms)


async def send_text(
    client: AsyncClient, room_id: str, body: str, *, extra: Mapping[str, Any] | None = None
) -> str:
    """Send an ``m.text`` message (encrypted if the room is); returns the event id."""
    content: dict[str, Any] = {"msgtype": "m.text", "body": body, **(extra or {})}
    response = await client.room_send(
        room_id, "m.room.message", content, ignore_unverified_devices=True
    )
    sent = _check(response, RoomSendResponse, f"{client.user_id} sending to {room_id}")
    event_id: str = sent.event_id
    return event_id


def content_of(event: Event) -> dict[str, Any]:
    """The (decrypted) content of an event."""
    content: dict[str, Any] = event.source.get("content", {})
    return content


async def collect_messages(
    client: AsyncClient,
    room_id: str,
    *,
    until: Callable[[list[RoomMessage]], bool],
    timeout: float = 10,
) -> list[RoomMessage]:
    """Sync and collect the ``m.room.message`` events of ``room_id``, decrypted, in order,
    until ``until(collected)`` holds.

    Starts from the client's current sync position: a client that never synced sees the
    room's recent history first. Raises TimeoutError (with what was collected, and how
    many events could not be decrypted) if ``until`` does not hold in time.
    """
    collected: list[RoomMessage] = []
    undecryptable = 0
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        incremental = client.next_batch is not None
        response = await sync_once(client, timeout_ms=int(max(0, min(remaining, 1)) * 1000))
        room = response.rooms.join.get(room_id)
        if room is not None:
            # A limited timeline in an incremental sync means a gap we cannot see.
            if room.timeline.limited and incremental:
                raise MatrixError(f"sync timeline of {room_id} was limited: events missed")
            for event in room.timeline.events:
                if isinstance(event, RoomMessage):
                    collected.append(event)
                elif isinstance(event, MegolmEvent):
                    undecryptable += 1
        if until(collected):
            return collected
        if time.monotonic() >= deadline:
            bodies = [content_of(e).get("body") for e in collected]
            raise TimeoutError(
                f"{client.user_id} in {room_id}: condition not met within {timeout:g} s; "
                f"collected {bodies}, {undecryptable} undecryptable"
            )


async def room_messages(client: AsyncClient, room_id: str, *, page_size: int = 500) -> list[Event]:
    """The whole timeline of ``room_id`` (oldest first), paged back from the end.

    Encrypted events are decrypted where the client has the keys. For counting what was
    sent, e.g. events carrying a given content key.
    """
    events: list[Event] = []
    start: str | None = None
    while True:
        response = await client.room_messages(
            room_id, start=start, direction=MessageDirection.back, limit=page_size
        )
        page = _check(response, RoomMessagesResponse, f"paging {room_id}")
        events.extend(page.chunk)
        if not page.chunk or not page.end:
            break
        start = page.end
    events.reverse()
    return events


def with_content_key(events: Iterable[Event], key: str) -> list[Event]:
    """The events whose content has ``key`` (e.g. ``org.blossom.dispatch``)."""
    return [event for event in events if key in content_of(event)]
