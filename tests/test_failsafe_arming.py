"""Arming with the switch is all or nothing (docs/crew.md, "The switch"): a
crash or a failed write between creating the run and recording its delayed
events must not leave an armed run the organisers were told is covered and
that the switch knows nothing of. Over fakes (milliseconds)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import T0, kit, scenario
from store_helpers import count, failing_write
from test_failsafe_wiring import R1, R2, FakeDelayed, seal, switched

from bot.runs.model import ArmError


class Crash(BaseException):
    """The process dying mid-arm (SIGKILL): nothing after it runs."""


def _data() -> dict[str, Any]:
    return switched(scenario("ac", {"north": [R1], "south": [R2]},
                             [{"id": "one", "at": "0s", "text": "go"}]))


async def _uncovered(store: Any) -> list[int]:
    """Armed runs with no delayed-event rows at all."""
    rows = await store.db.fetch(
        "SELECT r.id FROM runs r WHERE r.state = 'armed' AND NOT EXISTS"
        " (SELECT 1 FROM delayed_events d WHERE d.run_id = r.id)"
    )
    return [int(r[0]) for r in rows]


async def test_a_crash_between_the_run_and_its_delayed_rows_arms_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(_data())

        async def crash(*_: Any, **__: Any) -> int:
            raise Crash

        monkeypatch.setattr(k.store.delayed, "add", crash)
        with pytest.raises(Crash):
            await k.arm("ac")
        # What a restart finds: no armed run the switch does not cover.
        assert await _uncovered(k.store) == []
        assert server.held == {}


async def test_a_failed_write_of_the_delayed_rows_arms_nothing_and_says_so(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(_data())
        with (
            failing_write(k.store.db, at=1, matching="INSERT INTO delayed_events") as writes,
            pytest.raises(ArmError, match="Nothing was armed"),
        ):
            await k.arm("ac")
        assert any("delayed_events" in w for w in writes)
        assert await count(k.store, "runs") == 0
        assert server.held == {}
        assert k.runs.by_scenario("ac") is None
        # And armed again once the disk is fine: covered.
        out = await k.arm("ac")
        assert out.run_id is not None, out.text
        assert await _uncovered(k.store) == []
        assert len(server.held) == 2


async def test_a_drill_of_a_scenario_with_the_failsafe_schedules_nothing(tmp_path: Path) -> None:
    """The reply says so; the homeserver must get nothing (a drill's rooms are
    not the scenario's, and its clock is not the wall's)."""
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(_data())
        out = await k.arm("ac", drill_room=R1)
        assert out.run_id is not None, out.text
        assert "not used in a drill" in out.text
        assert server.held == {}
        assert await count(k.store, "delayed_events") == 0
