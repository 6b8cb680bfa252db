"""A crew member's read ahead on two federating Synapses (tests/conftest.py's
``federated_pair``; bot/runs/warmup.py): after it, the first look in a room
joined over federation reads locally — with the room's server cut off, it
still sees the room's history at once. Without it that first look made the
homeserver backfill from the other server (seconds per room under load; with
that server cut off, only what arrived since the join came back, after
seconds)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from matrix_helpers import create_room, participant, send_text, sync_until

from bot.clock import SystemClock
from bot.crew.link import CrewLink
from bot.devtools.federation import FederatedPair
from bot.matrix.actions import MatrixActions

pytestmark = pytest.mark.homeserver

ROOMS, HISTORY = 3, 5
QUICK_S = 5.0  # half the look's limit; locally it takes tens of milliseconds


class _Roster:
    me, crew = "", None  # the link's reads ahead use neither


async def test_after_the_read_ahead_the_first_look_reads_locally(
    federated_pair: FederatedPair, tmp_path: Path
) -> None:
    pair, suffix = federated_pair, uuid.uuid4().hex[:6]
    mod_u = await pair.b.register(f"warm-mod-{suffix}")
    bot_u = await pair.a.register(f"warm-bot-{suffix}")
    await pair.b.exempt_from_rate_limits(mod_u.user_id)
    await pair.a.exempt_from_rate_limits(bot_u.user_id)
    mod = await participant(pair.b, mod_u, tmp_path / "mod")
    bot = await participant(pair.a, bot_u, tmp_path / "bot")
    try:
        rooms = [await create_room(mod, name=f"warm {i}", invite=[bot_u.user_id])
                 for i in range(ROOMS)]
        for room in rooms:
            for j in range(HISTORY):
                await send_text(mod, room, f"before the join {j}")
        await sync_until(bot, lambda: all(r in bot.invited_rooms for r in rooms), timeout=30)
        for room in rooms:
            resp = await bot.join(room)
            assert getattr(resp, "status_code", None) is None, resp
        await sync_until(bot, lambda: all(r in bot.rooms for r in rooms), timeout=30)
        actions = MatrixActions(bot, SystemClock())
        link = CrewLink(roster=_Roster(), matrix=actions)  # type: ignore[arg-type]
        link.warm(rooms)
        await link.warmed()
        pair.partition()
        for room in rooms:
            started = time.monotonic()
            events = await actions.recent_events(room)
            took = time.monotonic() - started
            assert events is not None, room
            bodies = [e.get("content", {}).get("body", "") for e in events if isinstance(e, dict)]
            assert sum("before the join" in b for b in bodies) == HISTORY, (room, bodies)
            assert took < QUICK_S, (room, took)
    finally:
        await mod.close()
        await bot.close()
