"""Direct-message mode: one stage to N private participants, each in a direct chat
with the bot (cities with ``direct: true``), plus one city room per city.

Each participant opens a direct chat and the bot joins it; their ``!join`` is
recorded straight in the bot's store (N command round trips would measure the
opt-in, not the fan-out). The release itself is the real path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.measure import Blossom, BlossomRun
from benchmarks.raw import RawClient, bounded
from benchmarks.world import (
    CREATE_CONCURRENCY,
    JOIN_CONCURRENCY,
    build_world,
    city_of,
    log,
)
from bot.app import DB_FILE
from bot.clock import SystemClock
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.store import Store


async def measure_direct(
    hs: EmbeddedHomeserver, http: aiohttp.ClientSession, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    n, cities = args.direct_participants, args.cities
    log(f"== direct messages: {n} private participants over {cities} cities ==")
    t0 = time.monotonic()
    world = await build_world(hs, http, room_count=cities, bot_rooms={"bot": cities}, prefix="dm")
    account = world.bots["bot"]

    async def participant(i: int) -> tuple[str, str]:
        user = await hs.register(f"dm-participant{i:05d}")
        raw = await RawClient.login(http, hs.url, user.localpart, user.password)
        room = await raw.create_room("", invite=[account.user.user_id], direct=True)
        return user.user_id, room

    people: list[tuple[str, str]] = await bounded(CREATE_CONCURRENCY, range(n), participant)

    async def bot_join(pair: tuple[str, str]) -> None:
        await account.raw.join(pair[1])

    await bounded(JOIN_CONCURRENCY, people, bot_join)
    setup_s = time.monotonic() - t0
    log(f"  {n} direct chats set up in {setup_s:.0f} s")

    async def seed(storage: Path, scenario_id: str) -> None:
        store = await Store.open(storage / DB_FILE)
        try:
            now = SystemClock().now()
            for i, (user_id, room) in enumerate(people):
                await store.rooms.set(room, "joined", now=now, opted_in_by=user_id, note="dm")
                await store.participants.add_direct(
                    scenario_id, city_of(i, cities), user_id, room, now=now
                )
        finally:
            await store.close()

    blossom = Blossom(
        world, account, workdir / "dm-bot", cities=cities, prepare_seconds=args.prepare
    )
    runs: list[BlossomRun] = []
    for rep in range(args.repeats):
        run = await blossom.measure(
            world.rooms, f"dm-{rep}", args.lead + n / 500, direct=n, seed=seed
        )
        runs.append(run)
        log(
            f"  repeat {rep + 1}: {run.fanout.rooms} rooms in {run.last_lateness_ms:.0f} ms, "
            f"{run.fanout.msgs_per_s:.1f} msg/s, first +{run.first_lateness_ms:.0f} ms, "
            f"CPU {run.release_cpu_s:.2f} s, peak RSS {run.peak_rss_mb:.0f} MiB"
        )

    def med(values: list[float]) -> float:
        return round(float(statistics.median(values)), 1)

    return {
        "participants": n,
        "city_rooms": cities,
        "setup_s": round(setup_s, 1),
        "msgs_per_s": med([r.fanout.msgs_per_s for r in runs]),
        "first_lateness_ms": med([r.first_lateness_ms for r in runs]),
        "last_lateness_ms": med([r.last_lateness_ms for r in runs]),
        "city_skew_ms": med([r.city_skew_ms for r in runs]),
        "bot_cpu_s": round(float(statistics.median([r.release_cpu_s for r in runs])), 3),
        "bot_peak_rss_mb": med([r.peak_rss_mb for r in runs]),
        "failed": sum(r.failed for r in runs),
    }
