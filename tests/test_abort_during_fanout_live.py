"""An !abort typed while a fan-out is still sending is acted on at once.

During a fan-out the bot holds its own /sync (``dispatch.sync_hold_seconds``) and
reads its control rooms by polling them instead (bot/control/watch.py). Here a
slow homeserver (a loopback proxy that delays each stage message) keeps a
fan-out sending for ~8 s; the organiser aborts ~1.5 s in. The bot must answer
and stop within a couple of seconds — not when the fan-out would have ended —
and every room must get the stop message, after the stage where it got one.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from bot_harness import bot_env, iso_z, seconds_ahead
from loopback_proxy import LoopbackProxy
from matrix_helpers import ClientPool, content_of, room_messages, with_content_key

from bot import DISPATCH_KEY
from bot.devtools.homeserver import EmbeddedHomeserver

pytestmark = pytest.mark.homeserver

ROOMS = 16
STAGE_DELAY_S = 0.5  # per stage message, one in flight: ~8 s for the whole fan-out


class SlowStageProxy(LoopbackProxy):
    """Forwards everything to the homeserver; requests that send the ``go`` stage
    wait ``delay`` seconds first (a homeserver at its limit)."""

    def __init__(self, upstream: str, delay: float) -> None:
        super().__init__(upstream)
        self._delay = delay

    async def before_forward(self, request: web.Request, body: bytes) -> None:
        if request.method == "PUT" and "/send/" in request.path:
            try:
                tag = json.loads(body).get(DISPATCH_KEY) or {}
            except ValueError:
                tag = {}
            if tag.get("stage") == "go":
                await asyncio.sleep(self._delay)


class SlowStageBadEventProxy(SlowStageProxy):
    """Also puts a malformed event (a string ``origin_server_ts``, which makes
    matrix-nio's parser raise) at the head of every ``/messages`` page of
    ``room``, as a room holding one relayed from another server would."""

    def __init__(self, upstream: str, delay: float, room: str) -> None:
        super().__init__(upstream, delay)
        self.room = room
        self.served = 0

    def rewrite(self, request: web.Request, status: int, data: bytes) -> bytes:
        if status != 200 or not request.path.endswith("/messages") or self.room not in (
            request.path
        ):
            return data
        doc = json.loads(data)
        bad = {
            "type": "m.room.message", "sender": "@evil:elsewhere.example",
            "event_id": f"$bad-{self.served}", "origin_server_ts": "soon",
            "room_id": self.room, "content": {"msgtype": "m.text", "body": "!help"},
        }
        doc["chunk"] = [bad, *doc.get("chunk", [])]
        self.served += 1
        return json.dumps(doc).encode()


def stages_in(events: list[Any]) -> list[str]:
    return [content_of(e)[DISPATCH_KEY]["stage"] for e in with_content_key(events, DISPATCH_KEY)]


async def test_abort_during_fanout_is_read_at_once_and_stops_it(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    await abort_mid_fanout(homeserver, tmp_path, clients, bad_event=False)


async def test_abort_during_fanout_is_read_past_a_malformed_control_room_event(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool
) -> None:
    """Issue 11, defect 3: the control watch's /messages pages were not
    sanitised, and a failing page was asked for again from the same token: one
    malformed event in the control room disabled the watch, and the !abort
    waited out the fan-out."""
    await abort_mid_fanout(homeserver, tmp_path, clients, bad_event=True)


async def abort_mid_fanout(
    homeserver: EmbeddedHomeserver, tmp_path: Path, clients: ClientPool, *, bad_event: bool
) -> None:
    proxy: SlowStageProxy | None = None
    try:
        # One request in flight, and a hold longer than the whole fan-out: only the
        # control watch can bring the !abort in time.
        dispatch = {"max_in_flight": 1, "sync_hold_seconds": 60, "control_poll_seconds": 0.2}
        async with bot_env(homeserver, tmp_path, clients, "midabort", dispatch) as env:
            proxy = (
                SlowStageBadEventProxy(homeserver.url, STAGE_DELAY_S, env.control_room)
                if bad_event
                else SlowStageProxy(homeserver.url, STAGE_DELAY_S)
            )
            await proxy.start()
            config = yaml.safe_load(env.config_path.read_text())
            config["matrix"]["homeserver"] = proxy.url
            env.config_path.write_text(yaml.safe_dump(config))
            mod = await clients.participant(
                await homeserver.register(f"mod-midabort-{tmp_path.name[-6:]}")
            )
            rooms = [await env.city_room(mod, name=f"midabort {i}") for i in range(ROOMS)]

            def write(start: datetime) -> None:
                env.write_scenario({
                    "version": 1, "id": "midabort", "title": "Abort mid fan-out",
                    "start": iso_z(start),
                    "cities": [
                        {"id": "alpha", "name": "Alpha", "timezone": "UTC", "rooms": rooms[::2]},
                        {"id": "beta", "name": "Beta", "timezone": "UTC", "rooms": rooms[1::2]},
                    ],
                    "stages": [{"id": "go", "at": "0s", "text": "Walk to the fountain now"}],
                    "abort_text": "STOP: go home",
                })

            write(seconds_ahead(3600))  # listed rooms: the bot accepts their invites
            await env.start()
            for r in rooms:
                await env.opt_in(mod, r)
            start = seconds_ahead(4)
            write(start)
            assert "Armed midabort" in await env.command("!arm midabort")
            await asyncio.sleep(max(0.0, start.timestamp() + 1.5 - time.time()))

            sent_at = time.monotonic()
            reply = await env.command("!abort midabort", timeout=30)
            answered_s = time.monotonic() - sent_at
            assert "Aborting midabort in alpha, beta" in reply, reply
            # The fan-out had ~6 s left; without the watch the reply waits for it.
            assert answered_s < 3.5, f"!abort answered after {answered_s:.1f} s"

            notices = await env.control_notices("stage !abort delivered to 16 of 16", timeout=60)
            assert not any("failed" in n for n in notices), notices
            got_stage = 0
            for r in rooms:
                stages = stages_in(await room_messages(mod, r))
                assert stages in (["!abort"], ["go", "!abort"]), stages
                got_stage += stages == ["go", "!abort"]
            # The abort stopped the fan-out part-way: most rooms never got the stage.
            assert 1 <= got_stage <= ROOMS // 2, got_stage
            if isinstance(proxy, SlowStageBadEventProxy):
                assert proxy.served > 0  # the watch did read through the bad event
    finally:
        if proxy is not None:
            await proxy.close()
