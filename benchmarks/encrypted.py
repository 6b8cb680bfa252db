"""Encrypted rooms: one stage to N encrypted rooms with D participant devices each,
room keys shared ahead of the instant (``prepare_seconds``) versus at the instant.

Each repeat uses a fresh bot device (new store, the old device deleted), so every
release starts without megolm sessions, as the first stage of a real run does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MegolmEvent,
    RoomMessageText,
    SyncResponse,
)

from benchmarks.measure import Blossom, BlossomRun
from benchmarks.raw import RawClient, bounded
from benchmarks.world import JOIN_CONCURRENCY, World, build_world, log, register
from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver


async def _device(hs: EmbeddedHomeserver, user_id: str, device_id: str) -> None:
    path = f"/_synapse/admin/v2/users/{quote(user_id, safe='')}/devices/{quote(device_id, safe='')}"
    async with (
        aiohttp.ClientSession() as http,
        http.delete(
            hs.url + path, headers={"Authorization": f"Bearer {await hs.admin_token()}"}
        ) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"deleting device {device_id}: {resp.status}")


async def participant(hs: EmbeddedHomeserver, name: str, store: Path) -> AsyncClient:
    """A logged-in nio client with its device keys uploaded (so senders encrypt to it)."""
    user = await register(hs, name)
    store.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (one local mkdir)
    client = AsyncClient(
        hs.url,
        user.user_id,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    resp = await client.login(user.password, device_name="participant")
    if not isinstance(resp, LoginResponse):
        raise RuntimeError(f"participant login: {resp}")
    await client.keys_upload()
    return client


async def read_stage(client: AsyncClient, scenario_id: str) -> tuple[int, int]:
    """(decrypted, undecryptable) stage messages of ``scenario_id`` that reach a
    participant in one incremental sync (each room's new events)."""
    resp = await client.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 20}}})
    if not isinstance(resp, SyncResponse):
        raise RuntimeError(f"participant sync: {resp}")
    decrypted = undecryptable = 0
    for room in resp.rooms.join.values():
        for event in room.timeline.events:
            if isinstance(event, RoomMessageText):
                tag = event.source.get("content", {}).get(DISPATCH_KEY, {})
                decrypted += tag.get("scenario") == scenario_id
            elif isinstance(event, MegolmEvent):
                undecryptable += 1
    return decrypted, undecryptable


def _summary(runs: list[BlossomRun]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(float(statistics.median(values)), 1)

    return {
        "fanout_ms": med([r.last_lateness_ms for r in runs]),
        "first_lateness_ms": med([r.first_lateness_ms for r in runs]),
        "msgs_per_s": med([r.fanout.msgs_per_s for r in runs]),
        "bot_cpu_s": round(float(statistics.median([r.release_cpu_s for r in runs])), 3),
        "bot_peak_rss_mb": med([r.peak_rss_mb for r in runs]),
        "failed": sum(r.failed for r in runs),
        "runs_ms": [round(r.last_lateness_ms) for r in runs],
    }


async def measure_encrypted(
    hs: EmbeddedHomeserver, http: aiohttp.ClientSession, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    rooms_n, devices = args.encrypted_rooms, args.encrypted_devices
    log(f"== encrypted: {rooms_n} rooms, {devices} participant devices each ==")
    people = [
        await participant(hs, f"enc-p{i}", workdir / "enc-participants" / str(i))
        for i in range(devices)
    ]
    try:
        world: World = await build_world(
            hs,
            http,
            room_count=rooms_n,
            bot_rooms={"bot": rooms_n},
            prefix="enc",
            encrypted=True,
            invite_all=[p.user_id for p in people],
        )
        account = world.bots["bot"]
        joins = [
            (RawClient(http, hs.url, p.access_token, p.user_id), room)
            for p in people
            for room in world.rooms
        ]

        async def join(pair: tuple[RawClient, str]) -> None:
            await pair[0].join(pair[1])

        await bounded(JOIN_CONCURRENCY, joins, join)
        log(f"  {len(joins)} participant joins done")
        reader = people[0]
        await reader.sync(
            timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 1}}}
        )
        result: dict[str, Any] = {"rooms": rooms_n, "participant_devices_per_room": devices}
        for variant, prepare in (("keys_shared_ahead", args.prepare), ("keys_at_instant", 0.0)):
            runs: list[BlossomRun] = []
            readable_counts: list[int] = []
            unreadable_counts: list[int] = []
            for rep in range(args.repeats):
                bot_dir = workdir / f"enc-{variant}-{rep}"
                blossom = Blossom(
                    world, account, bot_dir, cities=args.cities, prepare_seconds=prepare
                )
                sid = f"enc-{variant.replace('_', '-')}-{rep}"
                run = await blossom.measure(world.rooms, sid, args.lead + rooms_n / 100)
                runs.append(run)
                readable, unreadable = await read_stage(reader, sid)
                readable_counts.append(readable)
                unreadable_counts.append(unreadable)
                log(
                    f"  {variant} repeat {rep + 1}: fan-out {run.last_lateness_ms:.0f} ms, "
                    f"first +{run.first_lateness_ms:.0f} ms, {run.fanout.msgs_per_s:.1f} msg/s, "
                    f"CPU {run.release_cpu_s:.2f} s; a participant decrypts {readable} of "
                    f"{rooms_n} rooms ({unreadable} undecryptable)"
                )
                # The next repeat starts from a new device without megolm sessions.
                creds = json.loads((bot_dir / "data" / "credentials.json").read_text())
                await _device(hs, account.user.user_id, creds["device_id"])
                shutil.rmtree(bot_dir / "data" / "nio-store", ignore_errors=True)
            result[variant] = {
                **_summary(runs),
                "participant_decrypted_rooms": readable_counts,
                "participant_undecryptable": unreadable_counts,
            }
        ahead, instant = result["keys_shared_ahead"], result["keys_at_instant"]
        result["instant_saving_ms"] = round(instant["fanout_ms"] - ahead["fanout_ms"], 1)
        return result
    finally:
        for p in people:
            await p.close()
