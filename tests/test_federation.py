"""Two Synapses federating on loopback (bot/devtools/federation.py): the ground the
crew's tests stand on. A room made on one server is joined from the other, messages
cross, a server that was down catches up, a partition holds messages back until it
heals. Real matrix-nio participants on each side."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from matrix_helpers import (
    collect_messages,
    content_of,
    create_room,
    join,
    join_via,
    participant,
    send_text,
    sync_until,
)
from nio import AsyncClient

from bot.devtools.federation import (
    FederatedPair,
    federation_config,
    federation_listener,
    write_self_signed_certificate,
)
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.devtools.loopback import TcpProxy, free_loopback_port

CROSSING_S = 5.0  # "within a few seconds": loopback federation takes well under one


# -- without a homeserver ---------------------------------------------------------------


def test_certificate_is_for_loopback(tmp_path: Path) -> None:
    write_self_signed_certificate(tmp_path / "c.pem", tmp_path / "k.pem")
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0  # the key is private


def test_servers_are_named_by_the_port_of_their_proxy(tmp_path: Path) -> None:
    pair = FederatedPair(tmp_path)
    for hs in pair.servers:
        host, port = hs.server_name.split(":")
        assert host == "127.0.0.1"
        assert pair.proxy(hs).listen_port == int(port)
        (listener,) = hs.extra_listeners
        assert listener == federation_listener(pair.proxy(hs).target_port)
        assert listener["tls"] is True and listener["port"] != hs.port
    assert pair.a.server_name != pair.b.server_name
    config = federation_config(pair.cert_path, pair.key_path)
    assert config["federation_verify_certificates"] is False
    assert config["trusted_key_servers"] == []
    assert config["ip_range_blacklist"] == []
    assert config["federation_domain_whitelist"] is None


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    port = free_loopback_port()
    return await asyncio.start_server(echo, "127.0.0.1", port), port


async def _round_trip(port: int) -> bytes:
    """What comes back for a ping: b"ping", or b"" if the connection is cut."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 2)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_proxy_forwards_until_paused() -> None:
    server, target = await _echo_server()
    proxy = TcpProxy(free_loopback_port(), target)
    await proxy.start()
    try:
        assert await _round_trip(proxy.listen_port) == b"ping"
        # A connection open across the pause is cut too.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        writer.write(b"open")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(4), 2) == b"open"
        proxy.pause()
        assert await _round_trip(proxy.listen_port) == b""  # reset at once
        writer.write(b"late")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(4), 2) == b""
        writer.close()
        proxy.resume()
        assert await _round_trip(proxy.listen_port) == b"ping"
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


# -- against the pair ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def people(
    pair: FederatedPair, tmp_path: Path, *names: tuple[str, EmbeddedHomeserver]
) -> AsyncIterator[list[AsyncClient]]:
    """A logged-in nio participant per (name, server), closed at the end."""
    clients: list[AsyncClient] = []
    try:
        for name, hs in names:
            user = await hs.register(f"{name}-{uuid.uuid4().hex[:8]}")
            clients.append(await participant(hs, user, tmp_path / f"store-{name}"))
        yield clients
    finally:
        for client in clients:
            await client.close()


async def shared_room(pair: FederatedPair, alice: AsyncClient, bob: AsyncClient) -> str:
    """A room on A (alice's) that bob on B has joined."""
    room = await create_room(alice, name="across", invite=[bob.user_id])
    await sync_until(bob, lambda: room in bob.invited_rooms)
    await join_via(bob, room, pair.a.server_name)
    await sync_until(alice, lambda: bob.user_id in alice.rooms[room].users)
    return room


async def received(client: AsyncClient, room: str, *bodies: str, timeout: float) -> list[str]:
    """The bodies of the messages ``client`` reads in ``room`` until all ``bodies`` came."""
    msgs = await collect_messages(
        client,
        room,
        until=lambda ms: all(any(content_of(m).get("body") == b for m in ms) for b in bodies),
        timeout=timeout,
    )
    return [str(content_of(m).get("body")) for m in msgs]


@pytest.mark.homeserver
async def test_invite_join_and_a_message_crosses(
    federated_pair: FederatedPair, tmp_path: Path
) -> None:
    pair = federated_pair
    async with people(pair, tmp_path, ("alice", pair.a), ("bob", pair.b), ("carol", pair.b)) as (
        alice,
        bob,
        carol,
    ):
        assert alice.user_id.endswith(":" + pair.a.server_name)
        assert bob.user_id.endswith(":" + pair.b.server_name)
        room = await shared_room(pair, alice, bob)
        started = time.monotonic()
        await send_text(alice, room, "hello from A")
        assert "hello from A" in await received(bob, room, "hello from A", timeout=CROSSING_S)
        assert time.monotonic() - started < CROSSING_S
        await send_text(bob, room, "hello from B")
        assert "hello from B" in await received(alice, room, "hello from B", timeout=CROSSING_S)
        # An invited user can also join without naming a server (nio's join, as the
        # bot's opt-in does): B joins through the server the invite came from.
        await alice.room_invite(room, carol.user_id)
        await sync_until(carol, lambda: room in carol.invited_rooms)
        await join(carol, room)
        await send_text(alice, room, "hello carol")
        assert "hello carol" in await received(carol, room, "hello carol", timeout=CROSSING_S)


@pytest.mark.homeserver
async def test_encrypted_messages_cross(federated_pair: FederatedPair, tmp_path: Path) -> None:
    pair = federated_pair
    async with people(pair, tmp_path, ("alice", pair.a), ("bob", pair.b)) as (alice, bob):
        room = await create_room(alice, name="secret across", encrypted=True, invite=[bob.user_id])
        await sync_until(bob, lambda: room in bob.invited_rooms)
        await join_via(bob, room, pair.a.server_name)
        await sync_until(alice, lambda: bob.user_id in alice.rooms[room].users)
        await send_text(alice, room, "for bob's eyes")
        assert "for bob's eyes" in await received(bob, room, "for bob's eyes", timeout=CROSSING_S)


@pytest.mark.homeserver
async def test_a_stopped_server_catches_up_after_restart(
    federated_pair: FederatedPair, tmp_path: Path
) -> None:
    pair = federated_pair
    async with people(pair, tmp_path, ("alice", pair.a), ("bob", pair.b)) as (alice, bob):
        room = await shared_room(pair, alice, bob)
        await send_text(alice, room, "before")
        await received(bob, room, "before", timeout=CROSSING_S)
        await pair.stop_server(pair.b)
        assert not pair.b.running
        await send_text(alice, room, "while B was down 1")
        await send_text(alice, room, "while B was down 2")
        await pair.start_server(pair.b)
        started = time.monotonic()
        bodies = await received(
            bob, room, "while B was down 1", "while B was down 2", timeout=CROSSING_S
        )
        assert time.monotonic() - started < CROSSING_S
        # Each once, in order: the latest came by catch-up, B fetched the one before it
        # as a missing prev_event.
        missed = [b for b in bodies if b.startswith("while B was down")]
        assert missed == ["while B was down 1", "while B was down 2"], bodies


@pytest.mark.homeserver
async def test_a_partition_holds_messages_until_healed(
    federated_pair: FederatedPair, tmp_path: Path
) -> None:
    pair = federated_pair
    async with people(pair, tmp_path, ("alice", pair.a), ("bob", pair.b)) as (alice, bob):
        room = await shared_room(pair, alice, bob)
        pair.partition()
        await send_text(alice, room, "across the cut")
        await send_text(bob, room, "back across the cut")
        # With federation cut nothing can cross: not seen in many times the ~0.3 s a
        # message takes when the servers are connected.
        with pytest.raises(TimeoutError):
            await received(bob, room, "across the cut", timeout=2)
        with pytest.raises(TimeoutError):
            await received(alice, room, "back across the cut", timeout=1)
        await pair.heal()
        healed = time.monotonic()
        await received(bob, room, "across the cut", timeout=CROSSING_S)
        await received(alice, room, "back across the cut", timeout=CROSSING_S)
        assert time.monotonic() - healed < CROSSING_S


@pytest.mark.homeserver
async def test_restore_after_a_kill_and_a_partition(
    federated_pair: FederatedPair, tmp_path: Path
) -> None:
    # What the fixture does after every test, whatever the test left behind.
    pair = federated_pair
    async with people(pair, tmp_path, ("alice", pair.a), ("bob", pair.b)) as (alice, bob):
        room = await shared_room(pair, alice, bob)
        await pair.kill_server(pair.a)
        pair.partition()
        await pair.restore()
        assert pair.a.running and pair.b.running
        assert not any(pair.proxy(hs).paused for hs in pair.servers)
        await send_text(bob, room, "after the restore")
        await received(alice, room, "after the restore", timeout=CROSSING_S)
