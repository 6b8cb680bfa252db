"""The embedded homeserver and the nio helpers do what the other tests rely on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import FreshHomeserver, NewUser
from matrix_helpers import (
    ClientPool,
    collect_messages,
    content_of,
    create_room,
    join,
    room_messages,
    send_text,
    sync_until,
    with_content_key,
)
from nio import RoomMessageText

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver, HomeserverError, rate_limit_config

REPO = Path(__file__).resolve().parent.parent


async def _versions(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/_matrix/client/versions") as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def _answers(url: str) -> bool:
    try:
        await _versions(url)
    except aiohttp.ClientError:
        return False
    return True


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (our container's init may not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _dies_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- pure parts -------------------------------------------------------------------


def test_rate_limit_profiles() -> None:
    assert rate_limit_config("default") == {}
    relaxed = rate_limit_config("relaxed")
    assert relaxed["rc_room_creation"]["per_second"] >= 1000
    assert relaxed["rc_login"]["address"]["burst_count"] >= 1000
    assert relaxed["rc_invites"]["per_user"]["burst_count"] >= 1000
    strict = rate_limit_config("strict")
    assert strict["rc_message"] == {"per_second": 0.5, "burst_count": 5}
    assert strict["rc_joins"] == relaxed["rc_joins"]


def test_importable_without_synapse() -> None:
    code = "import sys; sys.modules['synapse'] = None; import bot.devtools.homeserver"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- against a real Synapse --------------------------------------------------------


@pytest.mark.homeserver
async def test_start_stop_restart_kill(fresh_homeserver: FreshHomeserver) -> None:
    hs = await fresh_homeserver()
    url, first_pid = hs.url, hs.pid
    assert url.startswith("http://127.0.0.1:")
    user = await hs.register("survivor", "pw")

    await hs.restart()
    assert hs.url == url and hs.pid != first_pid
    assert first_pid is not None and not _alive(first_pid)
    # Same database: the user is still there.
    assert await hs.login(user)

    pid = hs.pid
    await hs.kill()
    assert pid is not None and not _alive(pid)
    assert not await _answers(url)
    await hs.start()
    assert await hs.login(user)

    await hs.stop()
    assert not hs.running and not await _answers(url)
    await hs.stop()  # stopping twice is harmless


@pytest.mark.homeserver
async def test_start_failure_shows_the_log(tmp_path: Path) -> None:
    hs = EmbeddedHomeserver(tmp_path / "bad", server_name="not a valid name")
    with pytest.raises(HomeserverError, match="invalid format"):
        await hs.start(timeout=30)
    assert not hs.running


@pytest.mark.homeserver
async def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL the Python process that started Synapse: Synapse must not survive it."""
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib
        from bot.devtools.homeserver import EmbeddedHomeserver
        async def main():
            hs = EmbeddedHomeserver(pathlib.Path({str(tmp_path / "orphan")!r}))
            await hs.start()
            print(hs.pid, hs.url, flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
        """
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        pid_text, url = line.decode().split()
        child = int(pid_text)
        assert _alive(child) and await _answers(url)
    finally:
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
    if not await asyncio.to_thread(
        _dies_within, child, 5.0
    ):  # don't leak it even when the test fails
        os.killpg(child, signal.SIGKILL)
        pytest.fail("Synapse outlived its parent")
    assert not await _answers(url)


@pytest.mark.homeserver
async def test_register(homeserver: EmbeddedHomeserver, new_user: NewUser) -> None:
    alice = await new_user("Alice")
    assert alice.user_id == f"@{alice.localpart}:localhost"
    assert alice.localpart.startswith("alice-")
    assert await homeserver.login(alice)
    other = await new_user("alice")
    assert other.user_id != alice.user_id
    with pytest.raises(HomeserverError, match="M_USER_IN_USE"):
        await homeserver.register(alice.localpart)


@pytest.mark.homeserver
async def test_admin_token_is_an_admin(homeserver: EmbeddedHomeserver) -> None:
    token = await homeserver.admin_token()
    assert await homeserver.admin_token() == token  # cached
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.get(f"{homeserver.url}/_synapse/admin/v1/server_version") as resp,
    ):
        assert resp.status == 200


@pytest.mark.homeserver
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_message_round_trip(new_user: NewUser, clients: ClientPool, encrypted: bool) -> None:
    alice = await clients.participant(await new_user("alice"))
    bob = await clients.participant(await new_user("bob"))
    room_id = await create_room(alice, name="round trip", encrypted=encrypted, invite=[bob.user_id])
    await join(bob, room_id)
    # alice must see bob's join before sending, or her megolm session would skip him.
    await sync_until(alice, lambda: bob.user_id in alice.rooms[room_id].users)
    assert alice.rooms[room_id].encrypted is encrypted

    for n in range(3):
        await send_text(alice, room_id, f"hello {n}", extra={DISPATCH_KEY: {"n": n}})
    got = await collect_messages(bob, room_id, until=lambda ms: len(ms) >= 3, timeout=15)

    assert [m.body for m in got if isinstance(m, RoomMessageText)] == [
        "hello 0",
        "hello 1",
        "hello 2",
    ]
    assert all(m.decrypted is encrypted for m in got)
    assert [content_of(m)[DISPATCH_KEY]["n"] for m in got] == [0, 1, 2]

    history = await room_messages(bob, room_id)
    assert len(with_content_key(history, DISPATCH_KEY)) == 3
    assert history[0].source["type"] == "m.room.create"  # paged all the way back


@pytest.mark.homeserver
async def test_strict_limits_and_exemption(fresh_homeserver: FreshHomeserver) -> None:
    hs = await fresh_homeserver(rate_limits="strict", enable_delayed_events=True)
    assert (await _versions(hs.url))["unstable_features"].get("org.matrix.msc4140") is True

    async def send_burst(token: str, count: int) -> list[int]:
        """Create a room and send up to ``count`` messages, stopping at the first 429;
        the HTTP statuses of the sends. (Synapse holds every 429 back for 0.5 s.)"""
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base_url=hs.url, headers=headers) as http:
            async with http.post("/_matrix/client/v3/createRoom", json={}) as resp:
                assert resp.status == 200, await resp.text()
                room_id = (await resp.json())["room_id"]
            statuses: list[int] = []
            for n in range(count):
                path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{n}"
                body = {"msgtype": "m.text", "body": str(n)}
                async with http.put(path, json=body) as resp:
                    statuses.append(resp.status)
                if resp.status == 429:
                    break
            return statuses

    limited = await hs.register("limited")
    statuses = await send_burst(await hs.login(limited), 10)
    # A burst of 5 that room creation counts against too: the 5th send is refused (the
    # 6th on a machine slow enough for 0.5 s of refill to accrue meanwhile).
    assert statuses[-1] == 429 and len(statuses) in (5, 6), statuses

    bot = await hs.register("bot")
    await hs.exempt_from_rate_limits(bot.user_id)
    assert await send_burst(await hs.login(bot), 30) == [200] * 30
