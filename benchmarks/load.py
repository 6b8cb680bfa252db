"""Other work on the machine, which skews a benchmark on 2 cores.

Linux only (/proc). "Background" is the machine's busy CPU minus that of the
benchmark's own processes (this one, Synapse, the bot), in cores.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


def process_cpu_s(pid: int | None) -> float:
    """user + system CPU seconds of a process (all its threads) so far; 0 if gone."""
    if not pid:
        return 0.0
    return _process_cpu_s(pid)


def _process_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class Background:
    """Cores used by everything else between ``start()`` and ``cores()``."""

    def __init__(self, pids: Callable[[], Iterable[int | None]]) -> None:
        self._pids = pids
        self._t0 = 0.0
        self._busy0 = 0.0
        self._own0: dict[int, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = _machine_busy_s()
        self._own0 = {p: _process_cpu_s(p) for p in self._pids() if p}

    def cores(self) -> float:
        elapsed = max(1e-3, time.monotonic() - self._t0)
        busy = _machine_busy_s() - self._busy0
        own = 0.0
        for p in {p for p in self._pids() if p} | set(self._own0):
            own += _process_cpu_s(p) - self._own0.get(p, 0.0)
        return max(0.0, (busy - own) / elapsed)


async def wait_quiet(
    pids: Callable[[], Iterable[int | None]],
    *,
    threshold: float = 0.25,
    window: float = 2.0,
    max_wait: float = 180.0,
) -> float:
    """Wait (up to ``max_wait`` s) until other work uses under ``threshold`` cores
    over a ``window``; returns the last background measured."""
    deadline = time.monotonic() + max_wait
    while True:
        bg = Background(pids)
        bg.start()
        await asyncio.sleep(window)
        cores = bg.cores()
        if cores < threshold or time.monotonic() > deadline:
            return cores
