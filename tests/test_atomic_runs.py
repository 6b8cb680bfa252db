"""The run manager's multi-row changes are all or nothing: a database failure in
the middle of !disarm or !abort leaves the run as it was (the store's own
multi-row changes: tests/test_store.py). Fakes and ManualClock; milliseconds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fakes import T0, kit, scenario
from store_helpers import failing_write

from bot.ledger import DispatchState, RunState
from bot.store import StoreError

A = "!a:fake"


def three_stages() -> dict[str, object]:
    return scenario(
        "atom",
        {"town": [A]},
        [
            {"id": "one", "at": "0s", "text": "first"},
            {"id": "two", "at": "+5s", "text": "second"},
            {"id": "three", "at": "+10s", "text": "third"},
        ],
    )


async def test_disarm_is_all_or_nothing(tmp_path: Path) -> None:
    """A failure after the pending stages were cancelled, before the run ended,
    cancels nothing: never a run left armed with its stages half cancelled."""
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("atom")
        await k.at(T0)
        armed = k.runs.get("atom")
        with failing_write(k.store.db, at=2) as seen, pytest.raises(StoreError):
            await k.runs.disarm(armed)
        assert "UPDATE runs" in seen[1]
        rows = {d.stage_id: d.state for d in await k.store.ledger.dispatches(armed.run.id)}
        assert rows == {
            "one": DispatchState.RELEASED,
            "two": DispatchState.SCHEDULED,
            "three": DispatchState.SCHEDULED,
        }
        assert [r.state for r in await k.store.runs.of_scenario("atom")] == [RunState.ARMED]
        await k.runs.disarm(armed)  # and it can be disarmed again
        rows = {d.stage_id: d.state for d in await k.store.ledger.dispatches(armed.run.id)}
        assert rows["two"] is rows["three"] is DispatchState.CANCELLED
        assert [r.state for r in await k.store.runs.of_scenario("atom")] == [RunState.DISARMED]


async def test_abort_is_all_or_nothing(tmp_path: Path) -> None:
    """A failure after a city's pending stages were cancelled, before its stop
    message was recorded, cancels nothing there: never stages cancelled without
    the stop message that tells the crowd."""
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("atom")
        await k.at(T0)
        armed = k.runs.get("atom")
        with failing_write(k.store.db, at=2) as seen, pytest.raises(StoreError):
            await k.runs.abort(armed, ["town"], "go home")
        assert "INSERT OR IGNORE INTO dispatches" in seen[1]
        rows = {d.stage_id: d.state for d in await k.store.ledger.dispatches(armed.run.id)}
        assert rows == {
            "one": DispatchState.RELEASED,
            "two": DispatchState.SCHEDULED,
            "three": DispatchState.SCHEDULED,
        }
        await k.runs.abort(armed, ["town"], "go home")  # and it can be aborted again
        await k.at(T0 + timedelta(seconds=1))
        await k.idle()
        assert k.hs.stages(A) == [("one", "text"), ("!abort", "text")]
