"""Shared fixtures: one real Synapse per test session, cheap users, nio participants.

Tests that need the homeserver are marked ``@pytest.mark.homeserver``; run the rest
alone with ``pytest -m "not homeserver"``.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from matrix_helpers import ClientPool

from bot.devtools.federation import FederatedPair
from bot.devtools.homeserver import EmbeddedHomeserver, RegisteredUser

NewUser = Callable[..., Awaitable[RegisteredUser]]
FreshHomeserver = Callable[..., Awaitable[EmbeddedHomeserver]]


def _require_synapse() -> None:
    # Fail, not skip: CI installs Synapse, and a skipped integration suite would pass
    # unnoticed.
    if importlib.util.find_spec("synapse") is None:
        pytest.fail("matrix-synapse is not installed: pip install -e '.[test]'")


@pytest_asyncio.fixture(scope="session")
async def homeserver(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedHomeserver]:
    """The session's Synapse, rate limits relaxed. Shared: don't stop or kill it (use
    ``fresh_homeserver`` for that), and give every test its own users and rooms."""
    _require_synapse()
    hs = EmbeddedHomeserver(tmp_path_factory.mktemp("homeserver"), rate_limits="relaxed")
    await hs.start()
    try:
        yield hs
    finally:
        await hs.stop()


# The per-user cap of delayed events on the failsafe homeserver: small, so the
# cap's refusals are quick to reach (each test has its own users).
DELAYED_CAP = 8


@pytest_asyncio.fixture(scope="session")
async def delayed_homeserver(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedHomeserver]:
    """The session's Synapse with delayed events (MSC4140) on: a maximum delay of
    1 h and a cap of ``DELAYED_CAP`` per user (the switch's tests, issue 13).
    Started on first use, so a session without those tests never starts it;
    the plain ``homeserver`` is the one without the feature."""
    _require_synapse()
    hs = EmbeddedHomeserver(
        tmp_path_factory.mktemp("delayed-hs"),
        enable_delayed_events=True,
        max_event_delay="1h",
        max_delayed_events_per_user=DELAYED_CAP,
    )
    await hs.start()
    try:
        yield hs
    finally:
        await hs.stop()


@pytest_asyncio.fixture(scope="session")
async def _federated_pair_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[FederatedPair]:
    # Session-scoped, but a fixture only starts when a test asks for it: a session
    # without federated tests never starts these two servers.
    _require_synapse()
    pair = FederatedPair(tmp_path_factory.mktemp("federation"))
    await pair.start()
    try:
        yield pair
    finally:
        await pair.stop()


@pytest_asyncio.fixture
async def federated_pair(_federated_pair_session: FederatedPair) -> AsyncIterator[FederatedPair]:
    """The session's two federating Synapses (``pair.a``, ``pair.b``), started on first
    use (two cold starts in parallel, a few seconds). A test may stop, kill or restart
    either server or partition them; afterwards both run and federate again
    (``restore``). Give every test its own users and rooms."""
    pair = _federated_pair_session
    try:
        yield pair
    finally:
        await pair.restore()


@pytest_asyncio.fixture
async def fresh_homeserver(tmp_path: Path) -> AsyncIterator[FreshHomeserver]:
    """A factory of private homeservers, for tests that restart, kill or reconfigure one.

    ``hs = await fresh_homeserver(rate_limits="strict")``; all are stopped at teardown.
    Each costs a cold start (about 2 s), so prefer ``homeserver`` where it will do.
    """
    _require_synapse()
    started: list[EmbeddedHomeserver] = []

    async def make(**kwargs: Any) -> EmbeddedHomeserver:
        hs = EmbeddedHomeserver(tmp_path / f"homeserver-{len(started)}", **kwargs)
        started.append(hs)
        await hs.start()
        return hs

    try:
        yield make
    finally:
        for hs in started:
            await hs.stop()


def unique_localpart(name: str) -> str:
    """``name`` made unique on the shared homeserver, still readable in its logs."""
    return f"{name.lower()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def new_user(homeserver: EmbeddedHomeserver) -> NewUser:
    """``await new_user("alice")`` registers ``@alice-<hex>`` on the shared homeserver.

    Keyword arguments (``password``, ``admin``) go to :meth:`EmbeddedHomeserver.register`.
    """

    async def register(name: str, **kwargs: Any) -> RegisteredUser:
        return await homeserver.register(unique_localpart(name), **kwargs)

    return register


@pytest_asyncio.fixture
async def clients(homeserver: EmbeddedHomeserver, tmp_path: Path) -> AsyncIterator[ClientPool]:
    """``alice = await clients.participant(user)``: logged-in nio clients with their
    encryption stores under this test's tmp_path, all closed at teardown."""
    async with ClientPool(homeserver, tmp_path / "stores") as pool:
        yield pool
