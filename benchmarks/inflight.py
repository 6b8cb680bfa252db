"""The in-flight trade-off: ``dispatch.max_in_flight`` against fan-out time and abort.

More requests in flight can make a fan-out faster (this Synapse persists larger
batches), but an ``!abort``'s stop messages queue in the homeserver behind every
stage request already in flight. So for each level the benchmark measures both:
a plain fan-out to ``--in-flight-rooms`` rooms, and an ``!abort`` typed
``--abort-after`` seconds into another such fan-out, timed from the command's
``origin_server_ts`` to the bot's reply and to the first and the last room's stop
message. Runs go level after level within each repeat (16, 32, 64, 128, 16, …),
so a slow patch of the machine does not land on one level only.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.measure import AbortRun, Blossom, BlossomRun, measure_abort
from benchmarks.summary import summarise_level
from benchmarks.world import World, log


async def measure_in_flight(
    world: World,
    args: argparse.Namespace,
    workdir: Path,
    new_blossom: Callable[..., Blossom],
    quiet: Callable[..., Any],
) -> dict[str, Any]:
    rooms_n = args.in_flight_rooms
    account = world.bots[f"bot-{rooms_n}"]
    lead = args.lead + rooms_n / 500
    log(
        f"== in flight {','.join(map(str, args.in_flight))} at {rooms_n} rooms: fan-out, and "
        f"!abort {args.abort_after:g} s in; {args.in_flight_repeats} repeats =="
    )
    pids = lambda: [os.getpid(), world.hs.pid]  # noqa: E731
    fanouts: dict[int, list[BlossomRun]] = {n: [] for n in args.in_flight}
    aborts: dict[int, list[AbortRun]] = {n: [] for n in args.in_flight}
    bots = {
        n: (
            new_blossom(world, account, args, workdir / f"inflight-{n}", max_in_flight=n),
            new_blossom(world, account, args, workdir / f"abort-{n}", max_in_flight=n),
        )
        for n in args.in_flight
    }
    for rep in range(args.in_flight_repeats):
        for n, (plain, aborted) in bots.items():
            await quiet(args, pids)
            f = await plain.measure(account.rooms, f"inflight-{n}-{rep}", lead)
            await quiet(args, pids)
            a = await measure_abort(
                aborted, account.rooms, f"abort-{n}-{rep}", lead, args.abort_after
            )
            fanouts[n].append(f)
            aborts[n].append(a)
            log(
                f"  {n:>3} in flight, repeat {rep + 1}: fan-out {f.fanout.done_ms:.0f} ms "
                f"(last stamp +{f.fanout.span_ms:.0f}); !abort replied +{a.reply_ms:.0f} ms, "
                f"first room told +{a.first_stop_ms:.0f} ms, last +{a.last_stop_ms:.0f} ms; "
                f"the stage reached {a.stage_rooms} of {a.rooms} rooms"
            )
    return {
        "rooms": rooms_n,
        "abort_after_s": args.abort_after,
        "repeats": args.in_flight_repeats,
        "levels": [summarise_level(n, fanouts[n], aborts[n]) for n in args.in_flight],
    }
