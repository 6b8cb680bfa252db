"""Fan-out benchmark: Blossom against the homeserver's ceiling and a typical bot.

    python -m benchmarks.fanout          # make bench: everything docs/performance.md shows
    python -m benchmarks.fanout --quick  # 50 and 200 rooms, 3 pairs, no extras; scale-out at 100
    python -m benchmarks.fanout --smoke  # 3 rooms, 2 cities: the code path only
    python -m benchmarks.fanout --only-scaleout [--quick]  # the crew's scale-out alone

It starts its own Synapse (relaxed rate limits, every sender exempt), creates the
rooms once and, for each room count, measures on the same rooms with the same
message, interleaved in pairs: the ceiling (a bare aiohttp client doing PUT /send
at the best concurrency of a sweep), then Blossom (``python -m bot run`` in a child
process releasing one stage of an armed scenario), then the ceiling again, and so
on; and a typical matrix-nio bot sending room after room. Then the in-flight
trade-off (fan-out time and a mid-fan-out ``!abort`` at each ``max_in_flight``),
encrypted rooms, direct messages and presence; then, that server stopped, the
crew's scale-out on two federating Synapses (benchmarks/scaleout.py). Everything goes to one file,
``benchmarks/results/latest.json``, with the commit, the machine, the versions and
the load; ``python -m benchmarks.report`` turns it into docs/performance.md's
tables. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import scaleout
from benchmarks.inflight import measure_in_flight
from benchmarks.load import process_cpu_s, wait_quiet
from benchmarks.measure import (
    Blossom,
    TypicalBot,
    measure_ceiling,
    measure_typical,
    sweep,
)
from benchmarks.report import FORMAT, render, render_scaleout
from benchmarks.runinfo import load_now, machine, source_version
from benchmarks.summary import memory_model, pair_record, summarise_size
from benchmarks.world import BotAccount, StageContent, World, build_world, log
from bot.config import DispatchConfig
from bot.devtools.homeserver import EmbeddedHomeserver

RESULTS = Path(__file__).parent / "results" / "latest.json"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _add_sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rooms", type=_ints, default=[50, 200, 1000], help="room counts (50,200,1000)")
    p.add_argument("--pairs", type=int, default=5, help="ceiling/Blossom pairs per room count (5)")
    p.add_argument("--typical-runs", type=int, default=1, help="typical-bot runs per count (1)")
    p.add_argument("--cities", type=int, default=10, help="cities the rooms spread over (10)")
    p.add_argument(
        "--sweep",
        type=_ints,
        default=[1, 2, 4, 8, 16, 32, 64, 128],
        help="ceiling concurrencies to try (1,2,4,...,128); the best is the ceiling's",
    )
    p.add_argument(
        "--sweep-rooms", type=int, default=1000, help="rooms the sweep uses, at most (1000)"
    )
    p.add_argument(
        "--in-flight",
        type=_ints,
        default=[16, 32, 64, 128],
        help="max_in_flight levels of the trade-off (16,32,64,128); empty: skip it",
    )
    p.add_argument("--in-flight-rooms", type=int, default=1000, help="rooms of the trade-off")
    p.add_argument("--in-flight-repeats", type=int, default=5, help="repeats per level (5)")
    p.add_argument("--abort-after", type=float, default=1.0, help="seconds after the instant (1)")


def _add_bot(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="the bot's dispatch.max_in_flight in the pairs (its default)",
    )
    p.add_argument("--prepare", type=float, default=3.0, help="the bot's prepare_seconds (3)")
    p.add_argument(
        "--sync-hold",
        type=float,
        default=None,
        help="the bot's dispatch.sync_hold_seconds (its default)",
    )
    p.add_argument("--lead", type=float, default=8.0, help="seconds from !arm to the instant (8)")


def _add_machine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        help="wait before each measurement until other processes use fewer cores (0.3)",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=120.0, help="...but at most this many seconds (120)"
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the benchmark, Synapse and the bot at this niceness (e.g. -10 as root, "
        "to keep other work on a shared machine from skewing the numbers)",
    )


def _add_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encrypted", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--encrypted-rooms", type=int, default=100)
    p.add_argument("--encrypted-devices", type=int, default=5)
    p.add_argument("--presence", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--presence-rooms", type=int, default=2000)
    p.add_argument("--presence-members", type=int, default=10, help="members per room")
    p.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--direct-participants", type=int, default=1000)
    p.add_argument(
        "--repeats", type=int, default=3, help="repeats of the encrypted, direct and presence runs"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout", description=__doc__.split("\n\n")[0]
    )
    _add_sizes(p)
    _add_bot(p)
    _add_machine(p)
    _add_extras(p)
    scaleout.add_arguments(p)
    p.add_argument(
        "--only-scaleout",
        action="store_true",
        help="the crew's scale-out alone (no single-server fan-out; the report shows only it)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="50 and 200 rooms, 3 pairs, no extras; scale-out at 100 rooms, 2 pairs",
    )
    p.add_argument("--smoke", action="store_true", help="3 rooms, 1 pair, the code path only")
    p.add_argument("--profile", type=Path, default=None, help="py-spy the bot and Synapse into DIR")
    p.add_argument("--workdir", type=Path, default=None, help="keep the homeserver and bots here")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.rooms, args.pairs = [50, 200], 3
        args.sweep, args.sweep_rooms = [1, 4, 16, 32, 64], 200
        args.in_flight, args.in_flight_rooms, args.in_flight_repeats = [16, 32, 64], 200, 1
        args.encrypted = args.presence = args.direct = False
        args.scaleout_rooms, args.scaleout_pairs, args.scaleout_grace = 100, 2, 10.0
    if args.smoke:
        args.rooms, args.pairs, args.cities = [3], 1, 2
        args.sweep, args.sweep_rooms = [1, 2], 3
        args.in_flight, args.in_flight_rooms, args.in_flight_repeats = [32], 3, 1
        args.lead, args.prepare, args.quiet_wait = 5.0, 1.0, 0.0
        args.abort_after = 0.0
        args.encrypted = args.presence = args.direct = False
        args.scaleout_rooms, args.scaleout_pairs, args.scaleout_grace = 4, 1, 2.0
        args.scaleout_heartbeat = 1.0
    if args.only_scaleout:
        args.scaleout = True
    if args.pairs < 1 or args.in_flight_repeats < 1 or args.typical_runs < 0:
        p.error("--pairs and --in-flight-repeats must be at least 1")
    if args.scaleout and (args.scaleout_pairs < 1 or args.scaleout_rooms < 2):
        p.error("--scaleout-pairs must be at least 1 and --scaleout-rooms at least 2")
    if args.scaleout and not 2 <= args.scaleout_grace <= 600:
        p.error("--scaleout-grace must be between 2 and 600 s (what failover.grace allows)")
    return args


async def settle(hs: EmbeddedHomeserver, *, max_wait: float = 180.0) -> None:
    """Wait until Synapse has finished its own background work (after creating
    rooms it is busy for a while), so the first measurement does not pay for it."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = process_cpu_s(hs.pid)
        await asyncio.sleep(2.0)
        if (process_cpu_s(hs.pid) - before) / 2.0 < 0.1:
            return
    log("  note: the homeserver is still busy; measuring anyway")


async def quiet(args: argparse.Namespace, pids: Callable[[], list[int | None]]) -> None:
    """Wait for other work on the machine to calm down before a measurement."""
    if args.quiet_wait <= 0:
        return
    cores = await wait_quiet(pids, threshold=args.quiet_threshold, max_wait=args.quiet_wait)
    if cores >= args.quiet_threshold:
        log(f"  note: other work is using {cores:.2f} cores; measuring anyway")


def new_blossom(
    world: World,
    account: BotAccount,
    args: argparse.Namespace,
    where: Path,
    *,
    max_in_flight: int | None = None,
) -> Blossom:
    """The real bot, configured by the command line's dispatch settings."""
    blossom = Blossom(
        world,
        account,
        where,
        cities=args.cities,
        max_in_flight=max_in_flight if max_in_flight is not None else args.max_in_flight,
        prepare_seconds=args.prepare,
        sync_hold_seconds=args.sync_hold,
    )
    if args.profile is not None:
        blossom.profile_dir = args.profile.resolve()
    return blossom


async def measure_size(
    world: World, args: argparse.Namespace, rooms_n: int, workdir: Path
) -> dict[str, Any]:
    """The sweep, then ``--pairs`` pairs (ceiling, Blossom), then the typical bot."""
    account = world.bots[f"bot-{rooms_n}"]
    rooms = account.rooms
    content = StageContent("bench-baseline", args.cities)
    log(f"== {rooms_n} rooms over {args.cities} cities, {args.pairs} pairs ==")
    if args.quiet_wait > 0:
        await settle(world.hs)
    rates = await sweep(account.raw, rooms[: args.sweep_rooms], content, args.sweep)
    best = max(rates, key=rates.__getitem__)
    blossom = new_blossom(world, account, args, workdir / f"blossom-{rooms_n}")
    pids = lambda: [os.getpid(), world.hs.pid]  # noqa: E731
    lead = args.lead + rooms_n / 500
    pairs: list[dict[str, Any]] = []
    for i in range(args.pairs):
        await quiet(args, pids)
        c = await measure_ceiling(account.raw, rooms, content, [best], pids, world.hs.pid)
        await quiet(args, pids)
        b = await blossom.measure(rooms, f"bench-{rooms_n}-{i}", lead)
        pairs.append(pair_record(c, b))
        log(
            f"  pair {i + 1}: ceiling {c.msgs_per_s:.1f} msg/s (c={best}), Blossom "
            f"{b.fanout.msgs_per_s:.1f} ({pairs[-1]['throughput_ratio']:.0%}); last stamp "
            f"+{b.fanout.span_ms:.0f} vs {c.span_ms:.0f} ms, last reply +{b.fanout.done_ms:.0f} "
            f"vs {c.done_ms:.0f} ms; first +{b.first_lateness_ms:.0f} ms; background "
            f"{c.extra['background_cores']:.2f}/{b.background_cores:.2f} cores"
        )
    typicals: list[dict[str, Any]] = []
    if args.typical_runs:
        typical_bot = await TypicalBot.login(world.hs.url, account, workdir / f"typical-{rooms_n}")
        try:
            for _ in range(args.typical_runs):
                await quiet(args, pids)
                t = await measure_typical(
                    typical_bot, account.raw, rooms, content, pids, world.hs.pid
                )
                typicals.append(asdict(t))
                log(f"  typical bot: {t.msgs_per_s:.1f} msg/s")
        finally:
            await typical_bot.close()
    return summarise_size(rooms_n, best, rates, pairs, typicals)


async def _phase(
    report: dict[str, Any], name: str, work: Callable[[], Awaitable[Any]], output: Path
) -> None:
    """Run one part of the benchmark, keeping its result and how long it took, and
    write the results file so far: a part that fails (after an hour of the others)
    is recorded as failed, the parts before it are kept, and the next ones run."""
    t0 = time.monotonic()
    try:
        report[name] = await work()
    except Exception as err:  # any failure of one part: recorded, the next parts run
        log(f"{name} FAILED: {type(err).__name__}: {err}")
        traceback.print_exc()
        report.setdefault("failed_phases", {})[name] = f"{type(err).__name__}: {err}"
    report["phase_s"][name] = round(time.monotonic() - t0, 1)
    write_results(output, report)


def write_results(output: Path, report: Mapping[str, Any]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(output)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    out = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("workdir", "output")
    }
    # What the bot ran with where the command line left it to the bot's defaults.
    defaults = DispatchConfig()
    out["bot_max_in_flight"] = args.max_in_flight or defaults.max_in_flight
    out["bot_sync_hold_seconds"] = (
        args.sync_hold if args.sync_hold is not None else defaults.sync_hold_seconds
    )
    return out


async def measure_world(
    hs: EmbeddedHomeserver, args: argparse.Namespace, workdir: Path, report: dict[str, Any]
) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        sizes = sorted({*args.rooms, *([args.in_flight_rooms] if args.in_flight else [])})
        world = await build_world(
            hs, http, room_count=max(sizes), bot_rooms={f"bot-{n}": n for n in sizes}
        )
        report["setup_s"] = {k: round(v, 1) for k, v in world.setup_seconds.items()}

        async def sizes_work() -> list[dict[str, Any]]:
            return [await measure_size(world, args, n, workdir) for n in args.rooms]

        await _phase(report, "results", sizes_work, args.output)
        report["memory"] = memory_model(report.get("results") or [])
        if args.in_flight:
            await _phase(
                report,
                "in_flight",
                lambda: measure_in_flight(world, args, workdir, new_blossom, quiet),
                args.output,
            )
        if args.encrypted:
            from benchmarks.encrypted import measure_encrypted

            await _phase(
                report, "encrypted", lambda: measure_encrypted(hs, http, args, workdir), args.output
            )
        if args.direct:
            from benchmarks.direct import measure_direct

            await _phase(
                report, "direct", lambda: measure_direct(hs, http, args, workdir), args.output
            )
        if args.presence:
            from benchmarks.presence import measure_presence

            await _phase(
                report, "presence", lambda: measure_presence(hs, http, args, workdir), args.output
            )


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "fanout",
        "format": FORMAT,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.fanout", *sys.argv[1:]]),
        "source": source_version(),
        "machine": machine(),
        "load": {"start": load_now()},
        "settings": _settings(args),
        "phase_s": {},
    }
    if not args.only_scaleout:
        hs = EmbeddedHomeserver(workdir / "homeserver", rate_limits="relaxed")
        await hs.start()
        try:
            await measure_world(hs, args, workdir, report)
        finally:
            await hs.stop()
    if args.scaleout:
        # After the single server has stopped: the pair has the machine to itself.
        await _phase(
            report,
            "scaleout",
            lambda: scaleout.measure_scaleout(args, workdir, new_blossom, quiet),
            args.output,
        )
    report["load"]["end"] = load_now()
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by Synapse and the bot
    t0 = time.monotonic()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir.resolve()
        cleanup = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="blossom-bench-"))
        cleanup = True
    report: dict[str, Any] | None = None
    try:
        report = asyncio.run(run(args, workdir))
    finally:
        # Kept after a failed part (its bots' and homeservers' logs say why).
        if cleanup and report is not None and not report.get("failed_phases"):
            shutil.rmtree(workdir, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    write_results(args.output, report)
    print(render(report) + "\n\n" + render_scaleout(report))
    print(f"\nWrote {args.output} ({report['wall_s']:.0f} s).")
    if report.get("failed_phases"):
        parts = ", ".join(report["failed_phases"])
        print(f"Failed: {parts}; the work directory is kept: {workdir}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
