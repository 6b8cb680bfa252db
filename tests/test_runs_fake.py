"""The run manager against a fake Matrix (tests/fakes.py): arming, re-arming,
run identity, order after downtime, holds, gates, abort, redirect, restore.
Real store, dispatcher and notifier; ManualClock; milliseconds per test."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fakes import CONTROL, T0, kit, scenario

from bot.ledger import DeliveryState, DispatchState
from bot.runs import ArmError

A, B = "!a:fake", "!b:fake"


def three_stages(sid: str = "re", rooms: tuple[str, ...] = (A,)) -> dict[str, object]:
    return scenario(
        sid,
        {"town": rooms},
        [
            {"id": "one", "at": "0s", "text": "first"},
            {"id": "two", "at": "+5s", "text": "second"},
            {"id": "three", "at": "+10s", "text": "third"},
        ],
    )


async def test_arm_releases_each_stage_once_in_order(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        out = await k.arm("re")
        assert out.run_id is not None and "Armed re" in out.text
        for s in (0, 5, 10):
            await k.at(T0 + timedelta(seconds=s))
        assert k.hs.stages(A) == [("one", "text"), ("two", "text"), ("three", "text")]
        assert any("is complete" in n for n in k.hs.notices())
        assert not k.runs.armed


# -- defect 3: re-arming does not re-send past stages -----------------------------------


async def test_rearm_after_the_run_sends_nothing_past(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        for s in (0, 5, 10):
            await k.at(T0 + timedelta(seconds=s))
        with pytest.raises(ArmError, match=r"every stage of re is past.*!arm re at"):
            await k.arm("re")
        await k.at(T0 + timedelta(seconds=20))
        assert len(k.hs.stages(A)) == 3


async def test_disarm_and_arm_mid_run_does_not_resend_the_first_stage(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        await k.at(T0)
        await k.runs.disarm(k.runs.get("re"))
        out = await k.arm("re")
        assert "1 past dispatches already went out" in out.text, out.text
        assert out.run_id is not None
        for s in (1, 5, 10):
            await k.at(T0 + timedelta(seconds=s))
        assert k.hs.stages(A) == [("one", "text"), ("two", "text"), ("three", "text")]


async def test_rearm_with_resend_sends_past_stages_again(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        await k.at(T0)
        await k.runs.disarm(k.runs.get("re"))
        k.clock.set(T0 + timedelta(seconds=7))
        out = await k.arm("re", resend_past=True)
        assert out.run_id is not None, out.text
        await k.at(T0 + timedelta(seconds=7))
        assert [s for s, _ in k.hs.stages(A)] == ["one", "one", "two"]
        report = [n for n in k.hs.notices() if "stage one" in n][-1]
        assert "its instant had passed when the run was armed" in report, report


async def test_first_arming_with_a_past_stage_asks_to_confirm(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A], now=T0 + timedelta(seconds=2)) as k:
        k.write(three_stages())
        out = await k.arm("re")
        assert out.needs_confirm and "Nothing is scheduled" in out.text, out.text
        assert await k.store.runs.of_scenario("re") == []
        out = await k.arm("re", confirmed=True)
        assert out.run_id is not None
        await k.at(T0 + timedelta(seconds=2))
        assert k.hs.stages(A) == [("one", "text")]


async def test_arm_at_a_new_instant_runs_it_again(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        for s in (0, 5, 10):
            await k.at(T0 + timedelta(seconds=s))
        week = T0 + timedelta(days=7)
        opts = k.runs.arm_options("re", f"at {week:%Y-%m-%dT%H:%M:%S}+00:00")
        assert opts.start_at == week
        out = await k.arm("re", start_at=opts.start_at)
        assert out.run_id is not None and "first at 2030-06-08 12:00:00Z" in out.text, out.text
        for s in (0, 5, 10):
            await k.at(week + timedelta(seconds=s))
        assert [s for s, _ in k.hs.stages(A)] == ["one", "two", "three"] * 2


def test_arm_options_local_time_in_a_city_and_refusals(tmp_path: Path) -> None:
    from bot.runs.options import parse_arm_options

    zones = {"lisbon": "Europe/Lisbon"}
    now = T0
    opts = parse_arm_options("resend at 2030-12-08 19:00 lisbon", zones, now)
    assert opts.start_at is not None and opts.start_at.isoformat() == "2030-12-08T19:00:00+00:00"
    assert opts.resend
    summer = parse_arm_options("at 2030-07-08T19:00 lisbon", zones, now)
    assert summer.start_at is not None and summer.start_at.hour == 18
    for bad, why in [
        ("at 2020-01-01T00:00Z", "in the past"),
        ("at 2030-12-08T19:00", "offset or a city"),
        ("at tomorrow", "cannot read"),
        ("soon", "!arm takes"),
        ("confirm resend", "!arm takes"),  # confirm is the control layer's, and last
        ("at 2031-03-30T01:30 lisbon", "does not exist"),
    ]:
        with pytest.raises(ArmError, match=why):
            parse_arm_options(bad, zones, now)


# -- issue 11 defect 4: the preview comes before anything is scheduled -------------------


async def test_preflight_warning_asks_to_confirm_and_schedules_nothing(tmp_path: Path) -> None:
    rooms = tuple(f"!r{i}:fake" for i in range(4))
    async with kit(tmp_path, opted_in=rooms, rate=0.2) as k:
        k.write(three_stages("tight", rooms))
        preview = await k.runs.preview("tight")
        assert preview.warnings and preview.needs_confirm
        out = await k.arm("tight")
        assert "Pre-flight" in out.text and out.needs_confirm, out.text
        assert out.run_id is None and k.timers.job_ids() == []
        assert await k.store.runs.of_scenario("tight") == []
        out = await k.arm("tight", confirmed=True)
        assert out.run_id is not None and k.timers.job_ids()


async def test_missing_room_is_a_problem_to_confirm(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages("miss", (A, B)))
        out = await k.arm("miss")
        assert out.run_id is None and "Problems" in out.text and B in out.text
        out = await k.arm("miss", confirmed=True)
        assert out.run_id is not None


# -- defect 6: a room listed twice (id and alias) ------------------------------------------


async def test_room_listed_by_id_and_alias_in_two_cities_is_refused(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A], aliases={"#a:fake": A}) as k:
        k.write(
            scenario(
                "dup", {"north": [A], "south": ["#a:fake"]}, [{"id": "go", "at": "0s", "text": "x"}]
            )
        )
        with pytest.raises(ArmError) as err:
            await k.arm("dup", confirmed=True)
        assert A in str(err.value) and "north" in str(err.value) and "south" in str(err.value)
        assert "#a:fake" in str(err.value)
        assert await k.store.runs.of_scenario("dup") == []


# -- issue 11 defect 1: run identity ---------------------------------------------------------


async def test_every_event_carries_the_run_key_and_txn_ids_differ(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        await k.at(T0)
        await k.runs.disarm(k.runs.get("re"))
        await k.arm("re", resend_past=True)
        await k.at(T0 + timedelta(seconds=1))
        first, again = [e for e in k.hs.in_room(A) if e.tag]
        assert first.tag == {**(first.tag or {}), "run": k.keys[0]}
        assert again.tag is not None and again.tag["run"] == k.keys[1]
        assert first.txn_id != again.txn_id
        runs = await k.store.runs.of_scenario("re")
        assert [r.run_key for r in runs] == k.keys


async def test_recovery_never_takes_an_earlier_runs_event(tmp_path: Path) -> None:
    """A re-armed run's delivery left SENDING by a crash: the room holds the
    previous run's event for the same stage, which must not count as sent."""
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        await k.at(T0)
        await k.runs.disarm(k.runs.get("re"))
        await k.arm("re", resend_past=True)
        run2 = k.runs.get("re").run.id
        # The crash: run 2's delivery was SENDING, its request never left.
        row = (await k.store.ledger.dispatches(run2))[0]
        release = await k.runs.build_release(k.runs.get("re"), row)
        await k.dispatcher.prepare([release])
        (key,) = release.keys()
        await k.store.ledger.advance(
            key, DeliveryState.PENDING, DeliveryState.SENDING, now=k.clock.now()
        )
        k.hs.forget_txn_ids()
        await k.at(T0 + timedelta(seconds=1))
        assert k.hs.searched, "recovery looked in the room"
        assert k.hs.stages(A) == [("one", "text"), ("one", "text")]
        delivered = await k.store.ledger.delivery(key)
        assert delivered is not None and delivered.event_id == k.hs.in_room(A)[-1].event_id


# -- defect 5: late stages in order ----------------------------------------------------------


@pytest.mark.parametrize("order", ["forward", "backward"])
async def test_late_stages_after_downtime_arrive_in_order(tmp_path: Path, order: str) -> None:
    """Down across four instants: on restart every timer is due at once, and each
    release looks its rooms up again (an alias is a request). The lookups answer
    last-first here; the rooms must still get the stages in order."""
    async with kit(tmp_path, opted_in=[A, B], aliases={"#b:fake": B}) as k:
        k.write(
            scenario(
                "down",
                {"town": [A, "#b:fake"]},
                [{"id": f"s{i}", "at": f"+{5 * i}s", "text": f"stage {i}"} for i in range(4)],
            )
        )
        await k.arm("down")
        k.rooms.lookup_delays = [0.04, 0.03, 0.02, 0.01]
        # Down across all four instants: every timer is due at once on restart.
        reverse = order == "backward"
        await k.at(T0 + timedelta(seconds=17), order=lambda ids: sorted(ids, reverse=reverse))
        for room in (A, B):
            assert k.hs.stages(room) == [(f"s{i}", "text") for i in range(4)], k.hs.stages(room)


# -- steering ---------------------------------------------------------------------------------


async def test_hold_then_release_reports_the_real_reason(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        armed = (await k.arm("re")) and k.runs.get("re")
        await k.runs.hold(armed, ["town"])
        await k.at(T0)
        assert k.hs.stages(A) == []
        assert (
            await k.store.ledger.dispatch(armed.run.id, "town", "one")
        ).state is DispatchState.HELD
        k.clock.set(T0 + timedelta(seconds=30))
        await k.runs.release_now(armed, "one", ["town"])
        await k.idle()
        assert k.hs.stages(A) == [("one", "text")]
        report = [n for n in k.hs.notices() if "stage one delivered" in n][-1]
        assert "until !release" in report and "unavailable" not in report, report


async def test_gate_holds_until_checkins_then_resume(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        data = three_stages("gate")
        data["stages"][1]["require"] = {"checkins": 2}  # type: ignore[index]
        k.write(data)
        await k.arm("gate")
        armed = k.runs.get("gate")
        await k.at(T0)
        await k.store.participants.add_checkin(
            armed.run.id, "town", "one", "@p1:fake", now=k.clock.now(), via="here"
        )
        await k.at(T0 + timedelta(seconds=5))
        assert [s for s, _ in k.hs.stages(A)] == ["one"]
        assert any("held in town: gate not met (1/2" in n for n in k.hs.notices())
        await k.store.participants.add_checkin(
            armed.run.id, "town", "one", "@p2:fake", now=k.clock.now(), via="here"
        )
        await k.runs.hold(armed, ["town"])
        await k.runs.resume(armed, ["town"])
        await k.idle()
        assert [s for s, _ in k.hs.stages(A)] == ["one", "two"]


async def test_abort_cancels_and_sends_the_stop_message(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        await k.at(T0)
        reply = await k.runs.abort(k.runs.get("re"), ["town"], "go home")
        assert "2 pending stage(s) cancelled" in reply
        await k.idle()
        assert k.hs.stages(A) == [("one", "text"), ("!abort", "text")]
        assert k.hs.in_room(A)[-1].content["body"] == "go home"
        assert not k.runs.armed
        assert any("(aborted)" in n for n in k.hs.notices())


async def test_delay_moves_due_times_and_the_recorded_delay_together(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        armed = k.runs.get("re")
        await k.runs.delay(armed, ["town"], timedelta(minutes=10))
        rows = await k.store.ledger.dispatches(armed.run.id)
        assert [r.due_at - T0 for r in rows] == [
            timedelta(minutes=10, seconds=s) for s in (0, 5, 10)
        ]
        assert await k.store.steering.delays(armed.run.id) == {"town": 600.0}
        await k.at(T0 + timedelta(seconds=30))
        assert k.hs.stages(A) == []
        await k.at(T0 + timedelta(minutes=10))
        assert k.hs.stages(A) == [("one", "text")]


async def test_redirect_after_reveal_edits_and_corrects(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(
            scenario(
                "redir",
                {"town": [A]},
                [
                    {"id": "go", "at": "0s", "text": "Meet at {spot}", "place": "spot"},
                    {"id": "end", "at": "+60s", "text": "done"},
                ],
                places={"spot": {"name": "the fountain", "geo": "52.5,13.4"}},
            )
        )
        await k.arm("redir")
        await k.at(T0)
        assert k.hs.stages(A) == [("go", "text"), ("go", "location")]
        await k.runs.redirect(k.runs.get("redir"), "town", "spot", "the bridge", (52.6, 13.5))
        await k.idle()
        bodies = [str(e.content.get("body")) for e in k.hs.in_room(A)]
        assert any(b.startswith("* ") and "the bridge" in b for b in bodies), bodies
        assert ("!fix-spot-1", "text") in k.hs.stages(A)


async def test_restore_after_restart_resumes_the_run(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[A]) as k:
        k.write(three_stages())
        await k.arm("re")
        await k.at(T0)
        store, hs = k.store, k.hs
        k.dispatcher.stop()
        # A new process: same database and rooms, nothing in memory.
        async with kit(
            tmp_path, opted_in=[A], store=store, hs=hs, now=T0 + timedelta(seconds=2)
        ) as k2:
            await k2.runs.restore()
            assert "re" in {a.scenario_id for a in k2.runs.armed.values()}
            for s in (5, 10):
                await k2.at(T0 + timedelta(seconds=s))
            assert hs.stages(A) == [("one", "text"), ("two", "text"), ("three", "text")]
        assert CONTROL
