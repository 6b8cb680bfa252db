"""Fan-out benchmark: Blossom against the homeserver's ceiling and a typical bot.

    python -m benchmarks.fanout                 # 50, 200, 1000 rooms; 10 cities; 3 repeats
    python -m benchmarks.fanout --quick         # 50 and 200 rooms, 1 repeat
    python -m benchmarks.fanout --smoke         # 3 rooms, 2 cities: the code path only

It starts its own Synapse (relaxed rate limits, every sender exempt), creates the
rooms once and, for each room count, measures on the same rooms with the same
message: (1) the ceiling, a bare aiohttp client doing PUT /send with the best
concurrency of a sweep; (2) a typical matrix-nio bot sending room after room;
(3) Blossom itself (``python -m bot run`` in a child process) releasing one stage
of an armed scenario. Medians over repeats go to a table and to
``benchmarks/results/latest.json``. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from benchmarks.load import process_cpu_s, wait_quiet
from benchmarks.measure import (
    Blossom,
    BlossomRun,
    Fanout,
    TypicalBot,
    measure_abort,
    measure_ceiling,
    measure_typical,
    sweep,
)
from benchmarks.report import FANOUT_COLUMNS, fanout_cells
from benchmarks.world import BotAccount, StageContent, World, build_world, log
from bot.devtools.homeserver import EmbeddedHomeserver

RESULTS = Path(__file__).parent / "results" / "latest.json"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rooms", type=_ints, default=[50, 200, 1000], help="room counts (50,200,1000)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per room count (3)")
    p.add_argument("--cities", type=int, default=10, help="cities the rooms spread over (10)")
    p.add_argument(
        "--sweep",
        type=_ints,
        default=[1, 2, 4, 8, 16, 32, 64, 128],
        help="ceiling concurrencies to try (1,2,4,...,128)",
    )
    p.add_argument(
        "--sweep-rooms", type=int, default=200, help="rooms used by the sweep, at most (200)"
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=2,
        help="best sweep concurrencies re-measured over all rooms in each repeat (2)",
    )
    p.add_argument(
        "--max-in-flight", type=int, default=None, help="the bot's dispatch.max_in_flight"
    )
    p.add_argument("--prepare", type=float, default=3.0, help="the bot's prepare_seconds (3)")
    p.add_argument("--lead", type=float, default=8.0, help="seconds from !arm to the instant (8)")
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
    p.add_argument("--encrypted", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--encrypted-rooms", type=int, default=100)
    p.add_argument("--encrypted-devices", type=int, default=5)
    p.add_argument("--presence", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--presence-rooms", type=int, default=2000)
    p.add_argument("--presence-members", type=int, default=10, help="members per room")
    p.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--direct-participants", type=int, default=1000)
    p.add_argument(
        "--sync-hold",
        type=float,
        default=None,
        help="the bot's dispatch.sync_hold_seconds (its default)",
    )
    p.add_argument(
        "--abort",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time an !abort typed into the largest fan-out (on)",
    )
    p.add_argument("--abort-after", type=float, default=1.0, help="seconds after the instant (1.0)")
    p.add_argument("--quick", action="store_true", help="50 and 200 rooms, 1 repeat, no extras")
    p.add_argument("--smoke", action="store_true", help="3 rooms, 2 cities, tiny sweep, no extras")
    p.add_argument("--profile", type=Path, default=None, help="py-spy the bot and Synapse into DIR")
    p.add_argument("--workdir", type=Path, default=None, help="keep the homeserver and bots here")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.rooms, args.repeats = [50, 200], 1
        args.sweep = [1, 4, 16, 32, 64]
        args.encrypted = args.presence = args.direct = False
    if args.smoke:
        args.rooms, args.repeats, args.cities = [3], 1, 2
        args.sweep, args.candidates = [1, 2], 1
        args.lead, args.prepare, args.quiet_wait = 5.0, 1.0, 0.0
        args.abort_after = 0.0
        args.encrypted = args.presence = args.direct = False
    return args


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise(
    rooms: int,
    best: dict[int, float],
    ceilings: list[Fanout],
    typicals: list[Fanout],
    blossoms: list[BlossomRun],
) -> dict[str, Any]:
    ceiling = median([f.msgs_per_s for f in ceilings])
    typical = median([f.msgs_per_s for f in typicals])
    blossom = median([b.fanout.msgs_per_s for b in blossoms])
    # The ceiling's time for N messages: from its first request to its last reply.
    # (Its last origin_server_ts comes earlier: Synapse stamps an event when it
    # creates it and persists a burst in batches, so with N requests in flight the
    # stamps bunch at the start; ceiling_origin_span_ms shows that.)
    ceiling_time = median([f.done_ms for f in ceilings])
    last = median([b.last_lateness_ms for b in blossoms])
    # Ratios per repeat (each against the ceiling measured alongside), then the median.
    return {
        "rooms": rooms,
        "ceiling_msgs_per_s": round(ceiling, 1),
        "typical_bot_msgs_per_s": round(typical, 1),
        "blossom_msgs_per_s": round(blossom, 1),
        "blossom_vs_ceiling": round(
            median(
                [
                    b.fanout.msgs_per_s / c.msgs_per_s
                    for b, c in zip(blossoms, ceilings, strict=True)
                ]
            ),
            3,
        ),
        "blossom_vs_typical": round(
            median(
                [
                    b.fanout.msgs_per_s / t.msgs_per_s
                    for b, t in zip(blossoms, typicals, strict=True)
                ]
            ),
            3,
        ),
        "first_lateness_ms": round(median([b.first_lateness_ms for b in blossoms]), 1),
        "last_lateness_ms": round(last, 1),
        "ceiling_time_ms": round(ceiling_time, 1),
        "ceiling_origin_span_ms": round(median([f.span_ms for f in ceilings]), 1),
        "blossom_done_ms": round(median([b.fanout.done_ms for b in blossoms]), 1),
        "last_lateness_vs_ceiling_time": round(
            median(
                [b.last_lateness_ms / c.done_ms for b, c in zip(blossoms, ceilings, strict=True)]
            ),
            3,
        ),
        "typical_bot_time_ms": round(median([f.done_ms for f in typicals]), 1),
        "city_skew_ms": round(median([b.city_skew_ms for b in blossoms]), 1),
        "city_mean_skew_ms": round(median([b.city_mean_skew_ms for b in blossoms]), 1),
        "bot_cpu_s": round(median([b.release_cpu_s for b in blossoms]), 3),
        "bot_process_cpu_s": round(median([b.process_cpu_s for b in blossoms]), 2),
        "bot_peak_rss_mb": round(median([b.peak_rss_mb for b in blossoms]), 1),
        "bot_rss_ready_mb": round(median([b.rss_ready_mb for b in blossoms]), 1),
        "bot_ready_s": round(median([b.ready_s for b in blossoms]), 2),
        "failed": sum(b.failed for b in blossoms),
        # The homeserver's CPU per message: does the bot make it work harder?
        "synapse_cpu_ms_per_msg": {
            "ceiling": round(
                median([c.extra["synapse_cpu_s"] / c.rooms for c in ceilings]) * 1e3, 2
            ),
            "typical_bot": round(
                median([t.extra["synapse_cpu_s"] / t.rooms for t in typicals]) * 1e3, 2
            ),
            "blossom": round(median([b.synapse_cpu_s / b.fanout.rooms for b in blossoms]) * 1e3, 2),
        },
        "background_cores": round(
            max(
                median([c.extra["background_cores"] for c in ceilings]),
                median([t.extra["background_cores"] for t in typicals]),
                median([b.background_cores for b in blossoms]),
            ),
            2,
        ),
        "best_concurrency": median([f.extra["concurrency"] for f in ceilings]),
        "sweep_msgs_per_s": {str(c): round(r, 1) for c, r in best.items()},
        "repeats": [
            {
                "ceiling": asdict(c),
                "typical_bot": asdict(t),
                "blossom": asdict(b),
            }
            for c, t, b in zip(ceilings, typicals, blossoms, strict=True)
        ],
    }


def memory_model(rows: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Least-squares line through (rooms, peak RSS): base MiB and MiB per room."""
    if len(rows) < 2:
        return None
    xs = [float(r["rooms"]) for r in rows]
    ys = [float(r["bot_peak_rss_mb"]) for r in rows]
    fit = statistics.linear_regression(xs, ys)
    return {"base_mb": round(fit.intercept, 1), "mb_per_room": round(fit.slope, 4)}


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
    world: World, account: BotAccount, args: argparse.Namespace, where: Path
) -> Blossom:
    """The real bot, configured by the command line's dispatch settings."""
    blossom = Blossom(
        world,
        account,
        where,
        cities=args.cities,
        max_in_flight=args.max_in_flight,
        prepare_seconds=args.prepare,
        sync_hold_seconds=args.sync_hold,
    )
    if args.profile is not None:
        blossom.profile_dir = args.profile.resolve()
    return blossom


async def measure_size(
    world: World, args: argparse.Namespace, rooms_n: int, workdir: Path
) -> dict[str, Any]:
    account = world.bots[f"bot-{rooms_n}"]
    rooms = account.rooms
    content = StageContent("bench-baseline", args.cities)
    log(f"== {rooms_n} rooms over {args.cities} cities ==")
    if args.quiet_wait > 0:
        await settle(world.hs)
    rates = await sweep(account.raw, rooms[: args.sweep_rooms], content, args.sweep)
    candidates = sorted(rates, key=rates.__getitem__, reverse=True)[: args.candidates]
    typical_bot = await TypicalBot.login(world.hs.url, account, workdir / f"typical-{rooms_n}")
    blossom = new_blossom(world, account, args, workdir / f"blossom-{rooms_n}")
    ceilings: list[Fanout] = []
    typicals: list[Fanout] = []
    blossoms: list[BlossomRun] = []
    try:
        pids = lambda: [os.getpid(), world.hs.pid]  # noqa: E731
        for rep in range(args.repeats):
            await quiet(args, pids)
            c = await measure_ceiling(account.raw, rooms, content, candidates, pids, world.hs.pid)
            await quiet(args, pids)
            t = await measure_typical(typical_bot, account.raw, rooms, content, pids, world.hs.pid)
            lead = args.lead + rooms_n / 500
            await quiet(args, pids)
            b = await blossom.measure(rooms, f"bench-{rooms_n}-{rep}", lead)
            ceilings.append(c)
            typicals.append(t)
            blossoms.append(b)
            log(
                f"  repeat {rep + 1}: ceiling {c.msgs_per_s:.1f} msg/s "
                f"(c={c.extra['concurrency']}), typical {t.msgs_per_s:.1f}, "
                f"Blossom {b.fanout.msgs_per_s:.1f} "
                f"({b.fanout.msgs_per_s / c.msgs_per_s:.0%}); first +{b.first_lateness_ms:.0f} ms, "
                f"last +{b.last_lateness_ms:.0f} ms (ceiling {c.done_ms:.0f} ms), "
                f"city skew {b.city_skew_ms:.0f} ms; CPU {b.release_cpu_s:.2f} s, "
                f"peak RSS {b.peak_rss_mb:.0f} MiB; background load "
                f"{c.extra['background_cores']:.2f}/{t.extra['background_cores']:.2f}/"
                f"{b.background_cores:.2f} cores"
            )
    finally:
        await typical_bot.close()
    return summarise(rooms_n, rates, ceilings, typicals, blossoms)


async def measure_abort_size(
    world: World, args: argparse.Namespace, rooms_n: int, workdir: Path
) -> dict[str, Any]:
    """One !abort typed ``--abort-after`` seconds into a fan-out to ``rooms_n`` rooms."""
    account = world.bots[f"bot-{rooms_n}"]
    log(f"== !abort {args.abort_after:g} s into a fan-out to {rooms_n} rooms ==")
    await quiet(args, lambda: [os.getpid(), world.hs.pid])
    blossom = new_blossom(world, account, args, workdir / f"abort-{rooms_n}")
    a = await measure_abort(
        blossom, account.rooms, f"abort-{rooms_n}", args.lead + rooms_n / 500, args.abort_after
    )
    log(
        f"  reply +{a.reply_ms:.0f} ms, every room told to stop +{a.last_stop_ms:.0f} ms "
        f"(first +{a.first_stop_ms:.0f}); the stage reached {a.stage_rooms} of {a.rooms} rooms "
        f"({a.stage_rooms_after_reply} of them after the reply: in flight)"
    )
    return asdict(a)


def source_version() -> str | None:
    """The commit measured (with "+dirty" for uncommitted changes), if in a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bot", "benchmarks"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions: dict[str, str | None] = {}
    for dist in ("matrix-synapse", "matrix-nio", "aiohttp", "aiosqlite", "APScheduler"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "homeserver": "Synapse, SQLite, on loopback; bot and benchmark on the same machine",
    }


def print_table(results: Sequence[dict[str, Any]], console: Console) -> None:
    table = Table(title="Fan-out: one message to each room (medians)")
    for col in FANOUT_COLUMNS:
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(*fanout_cells(r))
    console.print(table)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = datetime.now(UTC)
    hs = EmbeddedHomeserver(workdir / "homeserver", rate_limits="relaxed")
    await hs.start()
    report: dict[str, Any] = {
        "benchmark": "fanout",
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.fanout", *sys.argv[1:]]),
        "source": source_version(),
        "machine": machine(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("workdir", "output")
        },
    }
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            world = await build_world(
                hs,
                http,
                room_count=max(args.rooms),
                bot_rooms={f"bot-{n}": n for n in args.rooms},
            )
            report["setup_s"] = {k: round(v, 1) for k, v in world.setup_seconds.items()}
            results = [await measure_size(world, args, n, workdir) for n in args.rooms]
            report["results"] = results
            report["memory"] = memory_model(results)
            if args.abort:
                report["abort"] = await measure_abort_size(world, args, max(args.rooms), workdir)
            if args.encrypted:
                from benchmarks.encrypted import measure_encrypted

                report["encrypted"] = await measure_encrypted(hs, http, args, workdir)
            if args.direct:
                from benchmarks.direct import measure_direct

                report["direct"] = await measure_direct(hs, http, args, workdir)
            if args.presence:
                from benchmarks.presence import measure_presence

                report["presence"] = await measure_presence(hs, http, args, workdir)
    finally:
        await hs.stop()
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
    try:
        report = asyncio.run(run(args, workdir))
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    console = Console(width=max(Console().width, 160))
    print_table(report["results"], console)
    if report.get("memory"):
        m = report["memory"]
        console.print(f"Bot memory ≈ {m['base_mb']} MiB + {m['mb_per_room']} MiB per room")
    console.print(f"Wrote {args.output} ({report['wall_s']:.0f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
