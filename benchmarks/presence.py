"""Scale of presence: the bot joined to many rooms with many members.

Measures the bot's time from start to ready (first start: login and initial sync;
restart: restored session, sync since its token), its memory once ready, and the
homeserver's cost of one sync for that account (initial full-state sync with the
bot's filter, and an incremental sync after one new message).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from benchmarks.botproc import BotProcess, seed_rooms, write_config
from benchmarks.raw import RawClient, bounded
from benchmarks.world import JOIN_CONCURRENCY, build_world, log, register
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.matrix.sync import SYNC_FILTER

MEMBER_CONCURRENCY = 16


async def _timed_sync(raw: RawClient, params: str) -> tuple[float, int, str]:
    """(seconds, response bytes, next_batch) of one /sync with the bot's filter."""
    url = f"{raw.base_url}/_matrix/client/v3/sync?filter={quote(json.dumps(SYNC_FILTER))}{params}"
    t0 = time.monotonic()
    async with raw.session.get(url, headers={"Authorization": f"Bearer {raw.token}"}) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"sync: {resp.status}")
    return time.monotonic() - t0, len(body), str(json.loads(body)["next_batch"])


async def measure_presence(
    hs: EmbeddedHomeserver, http: aiohttp.ClientSession, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    rooms_n, members = args.presence_rooms, args.presence_members
    log(f"== presence: {rooms_n} rooms x {members} members ==")
    t0 = time.monotonic()
    world = await build_world(
        hs, http, room_count=rooms_n, bot_rooms={"bot": rooms_n}, prefix="presence", public=True
    )
    account = world.bots["bot"]
    # The organiser and the bot are members already; add the rest.
    extra = max(0, members - 2)
    people = []
    for i in range(extra):
        user = await register(hs, f"presence-member{i}")
        people.append(await RawClient.login(http, hs.url, user.localpart, user.password))
    joins = [(p, room) for p in people for room in world.rooms]
    done = 0

    async def join(pair: tuple[RawClient, str]) -> None:
        nonlocal done
        await pair[0].join(pair[1])
        done += 1
        if done % 2000 == 0:
            log(f"  {done}/{len(joins)} member joins")

    await bounded(max(JOIN_CONCURRENCY, MEMBER_CONCURRENCY), joins, join)
    setup_s = time.monotonic() - t0
    log(f"  set up {rooms_n} rooms, {rooms_n * members} memberships in {setup_s:.0f} s")

    result: dict[str, Any] = {
        "rooms": rooms_n,
        "members_per_room": members,
        "memberships": rooms_n * members,
        "setup_s": round(setup_s, 1),
    }
    # The homeserver's cost of the bot's syncs (its filter, a separate device).
    initial_s, initial_bytes, token = await _timed_sync(account.raw, "&full_state=true&timeout=0")
    await world.org.send(world.rooms[0], {"msgtype": "m.text", "body": "one new message"})
    incr_s, incr_bytes, _ = await _timed_sync(account.raw, f"&since={token}&timeout=0")
    result["initial_sync_s"] = round(initial_s, 2)
    result["initial_sync_mb"] = round(initial_bytes / 2**20, 2)
    result["incremental_sync_ms"] = round(incr_s * 1000, 1)
    result["incremental_sync_bytes"] = incr_bytes

    # The bot itself: first start, then restarts from its stored sync token.
    proc = BotProcess(workdir / "presence-bot")
    proc.workdir.mkdir(parents=True, exist_ok=True)
    write_config(
        proc.config_path,
        homeserver=hs.url,
        user_id=account.user.user_id,
        password=account.user.password,
        control_room=account.control_room,
    )
    await seed_rooms(proc.storage, [account.control_room, *world.rooms], world.organiser.user_id)
    starts: list[dict[str, float]] = []
    for attempt in range(1 + max(1, args.repeats - 1)):
        proc.spawn()
        try:
            ready = await proc.wait_ready(timeout=900)
            cpu = proc.cpu_seconds()
            rss, _ = proc.rss_mb()
        finally:
            usage = await proc.stop()
        starts.append(
            {
                "ready_s": round(ready, 2),
                "cpu_to_ready_s": round(cpu, 2),
                "rss_ready_mb": round(rss, 1),
                "peak_rss_mb": round(usage.peak_rss_mb, 1),
            }
        )
        log(
            f"  bot {'first start' if attempt == 0 else 'restart'}: ready in {ready:.1f} s, "
            f"RSS {rss:.0f} MiB (peak {usage.peak_rss_mb:.0f}), CPU {cpu:.1f} s"
        )
    result["first_start"] = starts[0]
    rest = starts[1:]
    result["restart"] = {
        k: round(float(statistics.median([s[k] for s in rest])), 2) for k in starts[0]
    }
    return result
