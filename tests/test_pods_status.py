"""``!status`` of a run with pods: each pod row shows that pod's own check-ins
(ids and counts only), against the real store and fakes (milliseconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest_asyncio
from test_pods_people import NOW, SCENARIO, Kit, arm, release

from bot.clock import ManualClock
from bot.control.status import StatusCommands
from bot.store import Store


@pytest_asyncio.fixture
async def kit(tmp_path: Path) -> AsyncIterator[Kit]:
    store = await Store.open(tmp_path / "blossom.db")
    try:
        yield Kit(store)
    finally:
        await store.close()


async def test_status_shows_each_pods_own_checkins(kit: Kit) -> None:
    for n in range(8):
        await kit.say(f"@p{n}:x", "!join pods hk")
    run_id = await arm(kit)
    await release(kit, run_id, "hk", "call")
    await release(kit, run_id, "lon", "call")
    # Two in mongkok's room, one private participant of each pod, one in London.
    await kit.p.on_message("!mk:x", "$1", "@r1:x", "!here")
    await kit.p.on_message("!mk-med:x", "$2", "@r2:x", "!here")
    for n in range(8):
        await kit.p.on_message(f"!dm-p{n}:x", f"$p{n}", f"@p{n}:x", "!here")
    await kit.p.on_message("!lon:x", "$3", "@l:x", "!here")
    want: dict[str, int] = {"hk/mongkok": 2, "hk/causeway": 0, "hk/shatin": 0, "hk/tsuenwan": 0}
    for n in range(8):
        want[f"hk/{await kit.pod_of(f'@p{n}:x')}"] += 1
    want["lon"] = 1
    armed = SimpleNamespace(
        run=SimpleNamespace(id=run_id),
        scenario=SCENARIO,
        clock=ManualClock(NOW),
        label=lambda: "pods",
        held_cities=set(),
    )
    status = StatusCommands(None, None, kit.store, ManualClock(NOW))  # type: ignore[arg-type]
    rows = await status._rows(armed)  # type: ignore[arg-type]
    got = {row[1]: row[-1] for row in rows}
    assert got == {lane: f"{n} since call" for lane, n in want.items()}
