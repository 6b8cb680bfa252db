"""The three measurements of one fan-out size: the ceiling, a typical bot, Blossom."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, LoginResponse, RoomSendResponse, SyncResponse

from benchmarks.botproc import BotProcess, seed_rooms, write_config
from benchmarks.load import Background, process_cpu_s
from benchmarks.raw import RawClient, SendRun, ceiling_fanout, origin_timestamps
from benchmarks.world import BotAccount, World, log, scenario_data, write_scenario

Content = Callable[[int, str], Mapping[str, Any]]


@dataclass(frozen=True)
class Fanout:
    """One fan-out, as the homeserver saw it."""

    rooms: int
    msgs_per_s: float  # rooms / (last response - go), i.e. until the sender knows
    span_ms: float  # last origin_server_ts - go
    first_ms: float  # first origin_server_ts - go
    done_ms: float  # last reply - go: when the sender knows every room has it
    extra: Mapping[str, Any]


def _fanout(run: SendRun, ts: Mapping[str, int], **extra: Any) -> Fanout:
    go_ms = run.started * 1000
    stamps = [ts[e] for _, e in run.sent]
    return Fanout(
        rooms=len(run.sent),
        msgs_per_s=len(run.sent) / run.seconds,
        span_ms=max(stamps) - go_ms,
        first_ms=min(stamps) - go_ms,
        done_ms=run.seconds * 1000,
        extra=extra,
    )


# -- 1. the ceiling ------------------------------------------------------------------


async def sweep(
    client: RawClient, rooms: Sequence[str], content: Content, levels: Sequence[int]
) -> dict[int, float]:
    """Messages per second at each concurrency (client-side: until the last reply)."""
    rates: dict[int, float] = {}
    for c in levels:
        run = await ceiling_fanout(client, rooms, content, c)
        rates[c] = len(run.sent) / run.seconds
        log(f"  sweep: {c:>3} in flight: {rates[c]:6.1f} msg/s over {len(rooms)} rooms")
    return rates


Pids = Callable[[], Iterable[int | None]]


async def measure_ceiling(
    client: RawClient,
    rooms: Sequence[str],
    content: Content,
    candidates: Sequence[int],
    pids: Pids = lambda: [],
    hs_pid: int | None = None,
) -> Fanout:
    """The best of the candidate concurrencies, over every room."""
    best: Fanout | None = None
    for c in candidates:
        bg = Background(pids)
        bg.start()
        hs0 = process_cpu_s(hs_pid)
        run = await ceiling_fanout(client, rooms, content, c)
        hs_cpu = process_cpu_s(hs_pid) - hs0
        background = round(bg.cores(), 2)
        f = _fanout(
            run,
            await origin_timestamps(client, run.sent),
            concurrency=c,
            background_cores=background,
            synapse_cpu_s=round(hs_cpu, 3),
        )
        if best is None or f.msgs_per_s > best.msgs_per_s:
            best = f
    assert best is not None
    return best


# -- 2. a typical bot ---------------------------------------------------------------


class TypicalBot:
    """matrix-nio as most bots use it: ``await room_send(...)`` in a for loop."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    @classmethod
    async def login(cls, url: str, account: BotAccount, store: Path) -> TypicalBot:
        store.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (one local mkdir)
        client = AsyncClient(
            url,
            account.user.user_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=False, max_limit_exceeded=None),
        )
        resp = await client.login(account.user.password, device_name="typical bot")
        if not isinstance(resp, LoginResponse):
            raise RuntimeError(f"typical bot login: {resp}")
        sync = await client.sync(
            timeout=0,
            full_state=True,
            sync_filter={"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}},
        )
        if not isinstance(sync, SyncResponse):
            raise RuntimeError(f"typical bot sync: {sync}")
        return cls(client)

    async def fanout(self, rooms: Sequence[str], content: Content) -> SendRun:
        sent: list[tuple[str, str]] = []
        started = time.time()
        for i, room in enumerate(rooms):
            resp = await self.client.room_send(room, "m.room.message", dict(content(i, room)))
            if not isinstance(resp, RoomSendResponse):
                raise RuntimeError(f"typical bot send to {room}: {resp}")
            sent.append((room, resp.event_id))
        return SendRun(started, time.time(), sent)

    async def close(self) -> None:
        await self.client.close()


async def measure_typical(
    bot: TypicalBot,
    raw: RawClient,
    rooms: Sequence[str],
    content: Content,
    pids: Pids = lambda: [],
    hs_pid: int | None = None,
) -> Fanout:
    bg = Background(pids)
    bg.start()
    hs0 = process_cpu_s(hs_pid)
    run = await bot.fanout(rooms, content)
    hs_cpu = process_cpu_s(hs_pid) - hs0
    background = round(bg.cores(), 2)
    return _fanout(
        run,
        await origin_timestamps(raw, run.sent),
        background_cores=background,
        synapse_cpu_s=round(hs_cpu, 3),
    )


# -- 3. Blossom ----------------------------------------------------------------------


async def command(
    org: RawClient,
    control: str,
    text: str,
    timeout: float = 60,  # noqa: ASYNC109
) -> tuple[str, dict[str, Any]]:
    """Send a control-room command as ``org``; (its event id, the first reply to it)."""
    command = await org.send(control, {"msgtype": "m.text", "body": text})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in await org.messages(control, 50):
            content = ev.get("content", {})
            reply_to = (content.get("m.relates_to") or {}).get("m.in_reply_to", {})
            if reply_to.get("event_id") == command:
                return command, ev
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no reply to {text}")


async def arm(
    org: RawClient,
    control: str,
    scenario_id: str,
    timeout: float = 60,  # noqa: ASYNC109
    *,
    confirm: bool = False,
) -> int:
    """``!arm``; the run id it answers. ``confirm``: send ``!arm … confirm`` when the
    bot asks for it (a crew member not joined to the rooms another serves does)."""
    _, reply = await command(org, control, f"!arm {scenario_id}", timeout)
    body = str(reply.get("content", {}).get("body", ""))
    if confirm and not body.startswith("Armed") and f"!arm {scenario_id} confirm" in body:
        _, reply = await command(org, control, f"!arm {scenario_id} confirm", timeout)
        body = str(reply.get("content", {}).get("body", ""))
    match = re.search(r"\(run (\d+)\)", body)
    if not body.startswith("Armed") or match is None:
        raise RuntimeError(f"!arm {scenario_id} refused: {body}")
    return int(match.group(1))


@dataclass(frozen=True)
class BlossomRun:
    fanout: Fanout
    first_lateness_ms: float
    last_lateness_ms: float
    city_skew_ms: float  # spread of the cities' last messages
    city_mean_skew_ms: float  # spread of the cities' mean lateness
    failed: int
    ready_s: float
    release_cpu_s: float  # prepare + fan-out, from /proc
    process_cpu_s: float  # the whole process life, from wait4
    peak_rss_mb: float
    rss_ready_mb: float
    background_cores: float  # other work on the machine during the release
    synapse_cpu_s: float  # the homeserver's CPU over the same window


class Blossom:
    """The real bot, one process per repeat, armed through its control room."""

    def __init__(
        self,
        world: World,
        account: BotAccount,
        workdir: Path,
        *,
        cities: int,
        max_in_flight: int | None = None,
        prepare_seconds: float = 3.0,
        sync_hold_seconds: float | None = None,
    ) -> None:
        self.world = world
        self.account = account
        self.cities = cities
        self.prepare_seconds = prepare_seconds
        self.proc = BotProcess(workdir)
        self.profile_dir: Path | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        write_config(
            self.proc.config_path,
            homeserver=world.hs.url,
            user_id=account.user.user_id,
            password=account.user.password,
            control_room=account.control_room,
            max_in_flight=max_in_flight,
            prepare_seconds=prepare_seconds,
            sync_hold_seconds=sync_hold_seconds,
        )
        self._seeded = False

    async def command(self, text: str, timeout: float = 60) -> tuple[str, dict[str, Any]]:  # noqa: ASYNC109
        """Send a control-room command as the organiser; (its event id, the bot's reply)."""
        return await command(self.world.org, self.account.control_room, text, timeout)

    async def arm(self, scenario_id: str, timeout: float = 60) -> int:  # noqa: ASYNC109
        return await arm(self.world.org, self.account.control_room, scenario_id, timeout)

    async def seed(self) -> None:
        """Record the control room and the rooms as opted in (once per bot store)."""
        if not self._seeded:
            await seed_rooms(
                self.proc.storage,
                [self.account.control_room, *self.account.rooms],
                self.world.organiser.user_id,
            )
            self._seeded = True

    async def _wait_notice(self, text: str, timeout: float = 60) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in await self.world.org.messages(self.account.control_room, 20):
                if ev.get("sender") == self.account.user.user_id and text in str(
                    ev.get("content", {}).get("body", "")
                ):
                    return
            await asyncio.sleep(0.3)
        raise TimeoutError(f"no control-room notice with {text!r}")

    def _start_profilers(self, tag: str) -> list[subprocess.Popen[bytes]]:
        """py-spy on the bot and on Synapse for the release (``--profile DIR``)."""
        if self.profile_dir is None:
            return []
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        procs = []
        for name, pid in (("bot", self.proc.pid), ("synapse", self.world.hs.pid)):
            out = self.profile_dir / f"{tag}-{name}.txt"
            procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return procs

    async def _stop_profilers(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            await asyncio.to_thread(p.wait, 30)

    async def measure(
        self,
        rooms: Sequence[str],
        scenario_id: str,
        lead_s: float,
        *,
        direct: int = 0,
        seed: Callable[[Path, str], Awaitable[None]] | None = None,
    ) -> BlossomRun:
        """One release of a one-stage scenario to ``rooms`` (and ``direct`` private
        participants that ``seed`` registers in the bot's store), in a fresh process."""
        if seed is not None:
            await seed(self.proc.storage, scenario_id)
        await self.seed()
        proc = self.proc
        for old in proc.scenarios.glob("*.yaml"):
            old.unlink()  # finished runs; keep !arm's library scan the same size each time
        proc.spawn()
        try:
            ready_s = await proc.wait_ready()
            rss_ready, _ = proc.rss_mb()
            instant = datetime.now(UTC) + timedelta(seconds=lead_s)
            write_scenario(
                proc.scenarios,
                scenario_data(scenario_id, rooms, self.cities, instant, direct=bool(direct)),
            )
            run_id = await self.arm(scenario_id)
            armed_left = (instant - datetime.now(UTC)).total_seconds()
            if armed_left < self.prepare_seconds + 0.5:
                log(f"  warning: armed only {armed_left:.1f} s before the instant; raise --lead")
            # CPU from just before the bot starts preparing until every delivery is done.
            await asyncio.sleep(max(0.0, armed_left - self.prepare_seconds - 0.3))
            cpu0 = proc.cpu_seconds()
            profilers = self._start_profilers(scenario_id)
            # The homeserver's CPU and other load from the instant on (the fan-out).
            await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))
            bg = Background(lambda: [os.getpid(), self.world.hs.pid, proc.pid])
            bg.start()
            hs0 = process_cpu_s(self.world.hs.pid)
            expected = len(rooms) + direct
            deadline = time.monotonic() + lead_s + 30 + expected / 5
            while proc.terminal_count(run_id) < expected:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{scenario_id}: the release did not finish")
                await asyncio.sleep(0.05)
            cpu1 = proc.cpu_seconds()
            background = bg.cores()
            hs_cpu = process_cpu_s(self.world.hs.pid) - hs0
            await self._stop_profilers(profilers)
            await self._wait_notice(f"{scenario_id}: stage go delivered")
            deliveries = proc.deliveries(run_id)
            sent_at = proc.sent_times(run_id)
        finally:
            usage = await proc.stop() if proc.proc is not None else None
        assert usage is not None
        sent = [(room, eid) for _, room, state, eid in deliveries if state == "sent" and eid]
        ts = await origin_timestamps(self.account.raw, sent)
        go_ms = instant.timestamp() * 1000
        city_by_room = {room: city for city, room, _, _ in deliveries}
        late = {eid: ts[eid] - go_ms for _, eid in sent}
        by_city: defaultdict[str, list[float]] = defaultdict(list)
        for room, eid in sent:
            by_city[city_by_room[room]].append(late[eid])
        last_by_city = [max(v) for v in by_city.values()]
        mean_by_city = [statistics.fmean(v) for v in by_city.values()]
        done_s = max(sent_at) - instant.timestamp()
        fanout = Fanout(
            rooms=len(sent),
            msgs_per_s=len(sent) / done_s,
            span_ms=max(late.values()),
            first_ms=min(late.values()),
            done_ms=done_s * 1000,
            extra={},
        )
        return BlossomRun(
            fanout=fanout,
            first_lateness_ms=min(late.values()),
            last_lateness_ms=max(late.values()),
            city_skew_ms=max(last_by_city) - min(last_by_city),
            city_mean_skew_ms=max(mean_by_city) - min(mean_by_city),
            failed=expected - len(sent),
            ready_s=ready_s,
            release_cpu_s=cpu1 - cpu0,
            background_cores=round(background, 2),
            synapse_cpu_s=round(hs_cpu, 3),
            process_cpu_s=usage.cpu_s,
            peak_rss_mb=usage.peak_rss_mb,
            rss_ready_mb=rss_ready,
        )


# -- 4. an abort during the fan-out ---------------------------------------------------


@dataclass(frozen=True)
class AbortRun:
    """``!abort`` typed ``abort_after_s`` into a one-stage fan-out to ``rooms``."""

    rooms: int
    abort_after_s: float
    reply_ms: float  # !abort's origin_server_ts -> the bot's reply's
    first_stop_ms: float  # -> the first stop message in a room
    last_stop_ms: float  # -> the last one: every room told to stop
    stage_rooms: int  # rooms the stage reached before the abort stopped it
    stage_rooms_after_reply: int  # of those, stamped after the bot's reply (in flight)
    stop_failed: int


async def measure_abort(
    blossom: Blossom,
    rooms: Sequence[str],
    scenario_id: str,
    lead_s: float,
    abort_after_s: float,
) -> AbortRun:
    """The organiser aborts while the stage is still going out; how soon is it
    read, and how soon has every room been told to stop?"""
    proc = blossom.proc
    org, control = blossom.world.org, blossom.account.control_room
    for old in proc.scenarios.glob("*.yaml"):
        old.unlink()
    await blossom.seed()
    proc.spawn()
    try:
        await proc.wait_ready()
        instant = datetime.now(UTC) + timedelta(seconds=lead_s)
        data = scenario_data(scenario_id, rooms, blossom.cities, instant)
        # A later stage keeps the run armed however soon the first one is done.
        data["stages"].append({"id": "later", "at": "+10m", "text": "Not sent: aborted"})
        write_scenario(proc.scenarios, data)
        run_id = await blossom.arm(scenario_id)
        await asyncio.sleep(max(0.0, instant.timestamp() + abort_after_s - time.time()))
        deadline = time.monotonic() + 60 + len(rooms) / 5
        command, reply = await blossom.command(f"!abort {scenario_id}", 60)
        reply_ts = int(reply["origin_server_ts"])
        while proc.terminal_count(run_id, "!abort") < len(rooms) or proc.terminal_count(
            run_id, "go"
        ) < len(rooms):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scenario_id}: the abort did not finish")
            await asyncio.sleep(0.05)
        stops = proc.deliveries(run_id, "!abort")
        stages = proc.deliveries(run_id, "go")
    finally:
        await proc.stop()
    raw = blossom.account.raw
    command_ts = int((await org.event(control, command))["origin_server_ts"])
    stop_sent = [(room, eid) for _, room, state, eid in stops if state == "sent" and eid]
    stage_sent = [(room, eid) for _, room, state, eid in stages if state == "sent" and eid]
    stop_ts = await origin_timestamps(raw, stop_sent)
    stage_ts = await origin_timestamps(raw, stage_sent)
    return AbortRun(
        rooms=len(rooms),
        abort_after_s=abort_after_s,
        reply_ms=reply_ts - command_ts,
        first_stop_ms=min(stop_ts.values(), default=float("nan")) - command_ts,
        last_stop_ms=max(stop_ts.values(), default=float("nan")) - command_ts,
        stage_rooms=len(stage_sent),
        stage_rooms_after_reply=sum(1 for t in stage_ts.values() if t > reply_ts),
        stop_failed=len(rooms) - len(stop_sent),
    )
