"""The crew's scale-out: one stage to N rooms split over two federating homeservers.

A crew is how Blossom grows past one homeserver: each member sends to the rooms
of its own server. On :class:`~bot.devtools.federation.FederatedPair` (two
Synapses on this machine, federating on loopback) it measures, in one run:

- **sharded**: half the rooms on each server, one member on duty per server
  (each first in its own cities' order), the standbys *not* joined;
- **replicated**: the same with each member also joined to every room of the
  other server, as its standby: every event then federates to the other server;
- **failover**: replicated, and the member on duty for server b's half SIGKILLed
  at the instant: the standby on a covers those rooms after ``failover.grace``;

each against **one bot** (``python -m bot run``, no crew) sending all N rooms on
server a, interleaved in pairs (one bot, then the crew, then one bot, …) like
the fan-out pairs. Times are from the instant to the events' ``origin_server_ts``
(each set by the sender's own server), the same end point on both sides. Every
release is the real bot in fresh processes, armed by ``!arm`` in a control room
both members share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.botproc import BotProcess, seed_rooms, write_config
from benchmarks.load import Background, process_cpu_s
from benchmarks.measure import Blossom, BlossomRun, arm, command
from benchmarks.raw import RawClient, bounded, origin_timestamps
from benchmarks.summary import summarise_scaleout
from benchmarks.world import (
    JOIN_CONCURRENCY,
    BotAccount,
    World,
    build_world,
    log,
    scenario_data,
    write_scenario,
)
from bot.app import DB_FILE
from bot.devtools.federation import FederatedPair
from bot.devtools.homeserver import EmbeddedHomeserver

LAYOUTS = ("sharded", "replicated", "failover")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the crew's scale-out (two federating Synapses)")
    g.add_argument("--scaleout", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--scaleout-rooms", type=int, default=1000, help="rooms, split over both (1000)")
    g.add_argument("--scaleout-pairs", type=int, default=5, help="pairs per layout (5)")
    g.add_argument(
        "--scaleout-grace", type=float, default=20.0, help="the scenario's failover.grace, s (20)"
    )
    g.add_argument(
        "--scaleout-heartbeat", type=float, default=5.0, help="crew.heartbeat_seconds (5)"
    )


@dataclass
class Member:
    """One crew member: its account on its own server, and that server's rooms."""

    label: str  # "a" or "b"
    hs: EmbeddedHomeserver
    account: BotAccount  # .raw on its own server, .rooms: its server's rooms
    org: RawClient  # the organiser on its server, who made (and invites to) its rooms
    proc: BotProcess | None = None

    @property
    def user_id(self) -> str:
        return self.account.user.user_id


@dataclass
class ScaleWorld:
    pair: FederatedPair
    solo: World  # one bot in every room of its own, all on server a
    members: tuple[Member, Member]
    control: str  # the crew's control room (on a; both members, power 50)
    setup_s: dict[str, float] = field(default_factory=dict)

    @property
    def org(self) -> RawClient:
        return self.members[0].org

    @property
    def rooms(self) -> list[str]:
        return [r for m in self.members for r in m.account.rooms]

    def pids(self) -> list[int | None]:
        procs = [m.proc.proc.pid for m in self.members if m.proc and m.proc.proc]
        return [os.getpid(), self.pair.a.pid, self.pair.b.pid, *procs]


async def build_scale_world(
    pair: FederatedPair, http: aiohttp.ClientSession, rooms_n: int
) -> ScaleWorld:
    """The solo bot's rooms and server a's half on a, server b's half on b (in
    parallel: two servers), then the crew's control room, joined from both."""
    t0 = time.monotonic()

    async def on_a() -> tuple[World, World]:
        solo = await build_world(
            pair.a, http, room_count=rooms_n, bot_rooms={"solo": rooms_n}, prefix="solo"
        )
        half = rooms_n - rooms_n // 2
        return solo, await build_world(
            pair.a, http, room_count=half, bot_rooms={"crew": half}, prefix="crew-a"
        )

    (solo, wa), wb = await asyncio.gather(
        on_a(),
        build_world(
            pair.b,
            http,
            room_count=rooms_n // 2,
            bot_rooms={"crew": rooms_n // 2},
            prefix="crew-b",
        ),
    )
    a = Member("a", pair.a, wa.bots["crew"], wa.org)
    b = Member("b", pair.b, wb.bots["crew"], wb.org)
    ids = [a.user_id, b.user_id]
    control = await a.org.create_room("crew control", invite=ids, power_users={i: 50 for i in ids})
    for m in (a, b):
        await m.account.raw.join(control)  # b's over federation (the invite names a)
    setup = {"rooms_s": round(time.monotonic() - t0, 1)}
    log(
        f"scale-out: {rooms_n} rooms for one bot on a, {len(a.account.rooms)} + "
        f"{len(b.account.rooms)} for the crew, in {setup['rooms_s']:.0f} s"
    )
    return ScaleWorld(pair, solo, (a, b), control, setup)


# Rooms a standby reads at once before the measurements (as the bot's look does).
FIRST_READ_CONCURRENCY = 8


async def join_standbys(world: ScaleWorld) -> dict[str, float]:
    """Each member joins every room of the other's server (the replicated layout):
    invited by that room's organiser, joined over federation. Then each reads each
    of those rooms once, as a standby that has been in its rooms for a while has:
    the first ``/messages`` in a room joined over federation makes the joiner's
    server fetch the history from before the join from the other server (one
    ``/backfill`` per room, seconds each under load), which would otherwise fall
    on the first replicated release's looks (and past the bot's 10 s look
    timeout, a standby sends without having looked)."""
    t0 = time.monotonic()
    a, b = world.members
    todo = [(other, m, room) for m, other in ((a, b), (b, a)) for room in m.account.rooms]

    async def one(job: tuple[Member, Member, str]) -> None:
        joiner, owner, room = job
        await owner.org.invite(room, joiner.user_id)
        await joiner.account.raw.join(room)

    await bounded(JOIN_CONCURRENCY, todo, one)
    joins = time.monotonic() - t0

    async def read(job: tuple[Member, Member, str]) -> None:
        await job[0].account.raw.messages(job[2], 100)

    t1 = time.monotonic()
    await bounded(FIRST_READ_CONCURRENCY, todo, read)
    reads = time.monotonic() - t1
    log(
        f"scale-out: {len(todo)} standby joins over federation in {joins:.0f} s, "
        f"their first reads (backfill) in {reads:.0f} s"
    )
    return {"standby_joins_s": round(joins, 1), "standby_first_reads_s": round(reads, 1)}


# -- one release by the crew ------------------------------------------------------------


def crew_scenario(
    scenario_id: str, members: Sequence[Member], cities: int, instant: datetime, grace_s: float
) -> dict[str, Any]:
    """One stage at ``instant``; each member's rooms in cities of its own, where it
    is first in the order and the other is its standby."""
    data = scenario_data(scenario_id, [], 1, instant)
    data["failover"] = {"grace": f"{grace_s:g}s"}
    ids = [m.user_id for m in members]
    for m in members:
        for city in scenario_data(scenario_id, m.account.rooms, max(1, cities // 2), instant)[
            "cities"
        ]:
            city["id"] = f"{m.label}{city['id']}"
            city["name"] = f"{city['name']} ({m.label})"
            city["crew"] = [m.user_id, *(i for i in ids if i != m.user_id)]
            data["cities"].append(city)
    return data


@dataclass(frozen=True)
class CrewRelease:
    """One release by the crew, as the servers stamped it."""

    layout: str
    rooms: int
    first_ms: float  # first origin_server_ts - the instant
    last_ms: float  # the last room's first copy - the instant: every room has the stage
    sent: dict[str, int]  # rooms each member sent ("a", "b")
    failed: int  # rooms no copy is known of
    duplicates: int  # rooms both members sent to (the later one redacts its copy)
    covered: int  # failover: rooms the standby covered
    covered_ms: float | None  # failover: the last of those - the instant
    before_kill: int  # failover: rooms the killed member had reached
    background_cores: float
    synapse_cpu_s: dict[str, float]  # each server's CPU from the instant to the end


def _ledger(proc: BotProcess, run_id: int) -> list[tuple[str, str, str | None, str]]:
    """(room, state, event id, last error) of the run's text deliveries; [] if the
    database cannot be read (a member SIGKILLed mid-write)."""
    try:
        with contextlib.closing(proc._db()) as db:
            rows = db.execute(
                "SELECT room_id, state, event_id, COALESCE(last_error, '') FROM deliveries"
                " WHERE run_id = ?",
                (run_id,),
            ).fetchall()
    except sqlite3.Error:
        return []
    return [(str(r), str(s), e, str(err)) for r, s, e, err in rows]


def _run_id(proc: BotProcess, scenario_id: str) -> int | None:
    db = proc.storage / DB_FILE
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        row = c.execute("SELECT MAX(id) FROM runs WHERE scenario_id = ?", (scenario_id,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


async def _armed_run(proc: BotProcess, scenario_id: str, timeout: float = 30) -> int:  # noqa: ASYNC109
    """The run id ``proc``'s member gave ``scenario_id`` (a follower arms after the
    speaker has answered)."""
    await _until(
        f"{proc.workdir.name} arming", lambda: _run_id(proc, scenario_id) is not None, timeout
    )
    return _run_id(proc, scenario_id) or 0


async def _until(what: str, check: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"scale-out: {what} within {timeout:g} s")
        await asyncio.sleep(0.05)


class Crew:
    """The two members as ``python -m bot run`` processes, one store each."""

    def __init__(self, world: ScaleWorld, args: argparse.Namespace, workdir: Path) -> None:
        self.world, self.args = world, args
        ids = [m.user_id for m in world.members]
        for m in world.members:
            d = workdir / f"crew-{m.label}"
            d.mkdir(parents=True, exist_ok=True)
            m.proc = BotProcess(d)
            write_config(
                m.proc.config_path,
                homeserver=m.hs.url,
                user_id=m.user_id,
                password=m.account.user.password,
                control_room=world.control,
                max_in_flight=args.max_in_flight,
                prepare_seconds=args.prepare,
                sync_hold_seconds=args.sync_hold,
                crew={"members": ids, "heartbeat_seconds": args.scaleout_heartbeat},
            )

    def procs(self) -> list[BotProcess]:
        return [m.proc for m in self.world.members if m.proc is not None]

    async def seed(self, replicated: bool) -> None:
        """Opt each member in to the rooms it is joined to (the benchmark joined it)."""
        for m in self.world.members:
            assert m.proc is not None
            rooms = self.world.rooms if replicated else m.account.rooms
            await seed_rooms(
                m.proc.storage,
                [self.world.control, m.account.control_room, *rooms],
                self.world.org.user_id,
            )

    async def start(self) -> None:
        """Both processes, until each sees the other up (``!crew`` without a
        ``(down)``): arming earlier, before a heartbeat has crossed the
        federation, leaves both members speaking."""
        for p in self.procs():
            for old in p.scenarios.glob("*.yaml"):
                old.unlink()  # finished runs
            p.spawn()
        await asyncio.gather(*(p.wait_ready() for p in self.procs()))
        ids = [m.user_id for m in self.world.members]
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(TimeoutError):
                _, reply = await command(self.world.org, self.world.control, "!crew", 5)
                body = str(reply.get("content", {}).get("body", ""))
                if all(i in body for i in ids) and "(down)" not in body:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("scale-out: the members never saw each other up")
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the other way round too

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs() if p.proc is not None))

    async def settle_killed(self, member: Member, scenario_id: str) -> None:
        """Restart a member killed mid-run until it has settled that run (it looks,
        finds the standby's copies, sends nothing), so that the next measurement
        does not pay for it."""
        proc = member.proc
        assert proc is not None
        run = _run_id(proc, scenario_id)
        proc.spawn()
        try:
            await proc.wait_ready()
            if run is not None:
                await _until(
                    f"{member.label} settling {scenario_id}",
                    lambda: proc.terminal_count(run) >= len(self.world.rooms),
                    120 + len(self.world.rooms) / 5,
                )
        finally:
            await proc.stop()

    async def release(
        self, layout: str, scenario_id: str, lead_s: float, *, last: bool = False
    ) -> CrewRelease:
        """One stage to every room, in fresh processes; ``failover``: member b
        SIGKILLed at the instant (and restarted afterwards to settle, unless this
        is the ``last`` release)."""
        world, args = self.world, self.args
        try:
            await self.start()
            instant = datetime.now(UTC) + timedelta(seconds=lead_s)
            data = crew_scenario(
                scenario_id, world.members, args.cities, instant, args.scaleout_grace
            )
            for p in self.procs():
                write_scenario(p.scenarios, data)
            await arm(world.org, world.control, scenario_id, confirm=True)
            armed_left = (instant - datetime.now(UTC)).total_seconds()
            if armed_left < args.prepare + 0.5:
                log(f"  warning: armed only {armed_left:.1f} s before the instant; raise --lead")
            runs = {}
            for m in world.members:
                assert m.proc is not None
                runs[m.label] = await _armed_run(m.proc, scenario_id)
            await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))
            b = world.members[1]
            if layout == "failover":
                assert b.proc is not None
                b.proc.kill()
            bg = Background(world.pids)
            bg.start()
            cpu0 = {m.label: process_cpu_s(m.hs.pid) for m in world.members}
            live = [m for m in world.members if m.proc is not None and m.proc.proc is not None]
            n = len(world.rooms)
            wait = lead_s + 60 + n / 5 + args.scaleout_grace

            # A member has ledger rows for the rooms it is joined to (its own
            # server's when sharded, every room otherwise), none for the rest.
            expected = {m.label: n if layout != "sharded" else len(m.account.rooms) for m in live}

            def done() -> bool:
                return all(
                    m.proc.terminal_count(runs[m.label]) >= expected[m.label]
                    for m in live
                    if m.proc
                )

            await _until(f"{scenario_id} finishing", done, wait)
            cpu = {
                m.label: round(process_cpu_s(m.hs.pid) - cpu0[m.label], 3) for m in world.members
            }
            background = round(bg.cores(), 2)
            ledgers = {m.label: _ledger(m.proc, runs[m.label]) for m in world.members if m.proc}
        finally:
            await self.stop()
        if layout == "failover" and not last:
            await self.settle_killed(world.members[1], scenario_id)
        return await self._stamped(layout, instant, ledgers, cpu, background)

    async def _stamped(
        self,
        layout: str,
        instant: datetime,
        ledgers: dict[str, list[tuple[str, str, str | None, str]]],
        cpu: dict[str, float],
        background: float,
    ) -> CrewRelease:
        """The servers' stamps of what each member sent, and what they say."""
        go_ms = instant.timestamp() * 1000
        b = self.world.members[1]
        first_copy: dict[str, float] = {}
        sent: dict[str, int] = {}
        senders: dict[str, int] = {}
        for m in self.world.members:
            mine = [
                (room, eid) for room, state, eid, _ in ledgers[m.label] if state == "sent" and eid
            ]
            sent[m.label] = len(mine)
            for room, _ in mine:
                senders[room] = senders.get(room, 0) + 1
            stamps = await origin_timestamps(m.account.raw, mine)
            for room, eid in mine:
                first_copy[room] = min(first_copy.get(room, float("inf")), stamps[eid] - go_ms)
        covered_ms: float | None = None
        covered = before_kill = 0
        if layout == "failover":
            # Rooms of b's half that a sent (it covered them) or found b's copy in.
            b_rooms = set(b.account.rooms)
            by_a = {room: (state, err) for room, state, _, err in ledgers["a"] if room in b_rooms}
            covered_times = [
                first_copy[r] for r, (s, _) in by_a.items() if s == "sent" and r in first_copy
            ]
            covered = len(covered_times)
            covered_ms = max(covered_times, default=None)
            found = [r for r, (s, err) in by_a.items() if s == "skipped" and "delivered" in err]
            before_kill = len(found)
            for r in found:  # b's copy, whose stamp b's ledger may not have kept
                first_copy.setdefault(r, float("nan"))
        times = [t for t in first_copy.values() if not math.isnan(t)]
        return CrewRelease(
            layout=layout,
            rooms=len(self.world.rooms),
            first_ms=round(min(times, default=float("nan")), 1),
            last_ms=round(max(times, default=float("nan")), 1),
            sent=sent,
            failed=len(self.world.rooms) - len(first_copy),
            duplicates=sum(1 for k in senders.values() if k > 1),
            covered=covered,
            covered_ms=None if covered_ms is None else round(covered_ms, 1),
            before_kill=before_kill,
            background_cores=background,
            synapse_cpu_s=cpu,
        )


# -- the whole measurement ----------------------------------------------------------------


async def _settle(world: ScaleWorld, max_wait: float = 180.0) -> None:
    """Until both servers have finished their own background work after the setup."""
    pids = [world.pair.a.pid, world.pair.b.pid]
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = sum(process_cpu_s(p) for p in pids)
        await asyncio.sleep(2.0)
        if (sum(process_cpu_s(p) for p in pids) - before) / 2.0 < 0.15:
            return
    log("  note: the homeserver is still busy; measuring anyway")


def _solo_line(s: BlossomRun) -> str:
    return f"one bot last +{s.last_lateness_ms:.0f} ms"


def _crew_line(c: CrewRelease) -> str:
    sent = f"sent a {c.sent.get('a')}, b {c.sent.get('b')}"
    line = f"crew {c.layout} last +{c.last_ms:.0f} ms ({sent}"
    if c.layout == "failover":
        line += f"; standby covered {c.covered}, last +{c.covered_ms} ms, b reached {c.before_kill}"
    return line + f"; {c.failed} failed, {c.duplicates} rooms with two copies)"


async def measure_pairs(
    world: ScaleWorld,
    args: argparse.Namespace,
    solo: Blossom,
    crew: Crew,
    layouts: Sequence[str],
    quiet: Callable[..., Any],
) -> tuple[list[BlossomRun], dict[str, list[CrewRelease]]]:
    """``--scaleout-pairs`` rounds of: one bot, then each of ``layouts``."""
    n = len(world.rooms)
    lead = args.lead + n / 500
    solos: list[BlossomRun] = []
    crews: dict[str, list[CrewRelease]] = {layout: [] for layout in layouts}
    for i in range(args.scaleout_pairs):
        await quiet(args, world.pids)
        s = await solo.measure(world.solo.rooms, f"solo-{layouts[0]}-{i}", lead)
        solos.append(s)
        lines = [_solo_line(s)]
        for layout in layouts:
            await quiet(args, world.pids)
            last = i == args.scaleout_pairs - 1 and layout == layouts[-1]
            c = await crew.release(layout, f"crew-{layout}-{i}", lead, last=last)
            crews[layout].append(c)
            lines.append(_crew_line(c))
        log(f"  round {i + 1}: " + "; ".join(lines))
    return solos, crews


async def measure_scaleout(
    args: argparse.Namespace,
    workdir: Path,
    new_blossom: Callable[..., Blossom],
    quiet: Callable[..., Any],
) -> dict[str, Any]:
    """Everything the scale-out section of the results file holds."""
    n = args.scaleout_rooms
    log(
        f"== crew scale-out: {n} rooms over two federating Synapses, "
        f"{args.scaleout_pairs} pairs per layout, grace {args.scaleout_grace:g} s =="
    )
    pair = FederatedPair(workdir / "federation", rate_limits="relaxed")
    await pair.start()
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            world = await build_scale_world(pair, http, n)
            solo = new_blossom(world.solo, world.solo.bots["solo"], args, workdir / "scale-solo")
            crew = Crew(world, args, workdir)
            await crew.seed(replicated=False)
            if args.quiet_wait > 0:
                await _settle(world)
            solo_1, crew_1 = await measure_pairs(world, args, solo, crew, ["sharded"], quiet)
            world.setup_s.update(await join_standbys(world))
            await crew.seed(replicated=True)
            if args.quiet_wait > 0:
                await _settle(world)
            solo_2, crew_2 = await measure_pairs(
                world, args, solo, crew, ["replicated", "failover"], quiet
            )
    finally:
        await pair.stop()
    return summarise_scaleout(
        rooms=n,
        split=[len(m.account.rooms) for m in world.members],
        grace_s=args.scaleout_grace,
        heartbeat_s=args.scaleout_heartbeat,
        setup_s=world.setup_s,
        rounds=[
            ("sharded", solo_1, [asdict(c) for c in crew_1["sharded"]]),
            ("replicated", solo_2, [asdict(c) for c in crew_2["replicated"]]),
            ("failover", solo_2, [asdict(c) for c in crew_2["failover"]]),
        ],
    )
