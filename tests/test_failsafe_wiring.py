"""The switch as the run manager drives it, over fakes (milliseconds): what is
scheduled at !arm (with a crew: only the rooms this member is on duty for),
what the instant cancels (rooms that hold the dispatch, a stage a gate held),
a cancel that failed is told and retried by the bot's pass, and a server that
sends a "delayed" event at once is asked no more. The live
tests are tests/test_failsafe_bot_live.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import BOT, T0, kit, scenario

from bot.crew.duty import CrewView
from bot.crew.members import Crew, Member
from bot.failsafe.secret import DelayId
from bot.matrix.delayed import DelayedRequestFailed, ScheduledEvent, SentAtOnce, Support
from bot.retry import SendFailure
from bot.runs.model import ArmError

OTHER = "@other:fake"
R1, R2 = "!r1:fake", "!r2:fake"


class FakeDelayed:
    """bot.matrix.delayed.DelayedEvents over a dict: id -> (room, content, delay)."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, dict[str, Any], int]] = {}
        self.by_txn: dict[str, str] = {}
        self.fail_cancels = False

    async def probe(self) -> Support:
        return Support(True, 3_600_000 * 24, 100, 0.0)

    ensure_supported = probe

    async def scheduled(self) -> list[ScheduledEvent]:
        return [ScheduledEvent(DelayId(i), r, "m.room.message", d, 0) for i, (r, _, d) in
                self.held.items()]

    async def schedule(self, room_id: str, event_type: str, content: Mapping[str, Any], *,
                       txn_id: str, delay_ms: int) -> DelayId:
        if txn_id not in self.by_txn:
            self.by_txn[txn_id] = f"syd_{len(self.by_txn)}"
            self.held[self.by_txn[txn_id]] = (room_id, dict(content), delay_ms)
        return DelayId(self.by_txn[txn_id])

    async def cancel(self, delay_id: DelayId) -> bool:
        for _ in range(3):  # a round trip: other tasks run meanwhile
            await asyncio.sleep(0)
        if self.fail_cancels:
            raise DelayedRequestFailed("cancel", SendFailure(None, message="timed out"))
        return self.held.pop(delay_id.reveal(), None) is not None

    def rooms(self) -> list[str]:
        return sorted(r for r, _, _ in self.held.values())


async def seal(room: str, event_type: str, content: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return event_type, content


@dataclass
class Duty:
    """The little of CrewSide the switch uses at arming: OTHER is up and first
    for the cities that name it first."""

    hs: object
    crew: Crew = field(default_factory=lambda: Crew((BOT, OTHER), timedelta(seconds=30)))
    me: str = BOT
    other_up: bool = True
    copies: dict[str, list[dict[str, object]]] = field(default_factory=dict)

    def view(self) -> CrewView:
        members = {OTHER: Member(OTHER, seen_at=T0, armed=frozenset())} if self.other_up else {}
        return _AnyDigest(self.crew, members, me=self.me)

    def missed(self, at: Any) -> bool:
        return False

    def heard_since(self, at: Any) -> bool:
        return True

    def joined(self, room_id: str) -> frozenset[str]:
        return frozenset({BOT, OTHER})

    async def learn_members(self, room_ids: Sequence[str]) -> None:
        return None

    async def refresh(self) -> None:
        return None

    def warm(self, room_ids: Sequence[str]) -> None:
        return None

    async def recent(self, room_id: str) -> list[object] | None:
        return list(self.copies.get(room_id, []))

    def nudge(self) -> None:
        return None


class _AnyDigest(CrewView):
    def ready(self, user_id: str, at: Any, digest: str | None = None) -> bool:
        return super().ready(user_id, at, None)


def switched(data: dict[str, Any], after: str = "2m") -> dict[str, Any]:
    return {**data, "failsafe": {"server": True, "after": after}}


async def test_with_a_crew_only_the_rooms_this_member_is_on_duty_for(tmp_path: Path) -> None:
    for other_up, expected in ((True, [R1]), (False, [R1, R2])):
        run_dir = tmp_path / str(other_up)
        async with kit(run_dir, opted_in=[R1, R2], now=T0 - timedelta(minutes=10),
                       crew=lambda hs, up=other_up: Duty(hs, other_up=up)) as k:
            server = FakeDelayed()
            k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
            data = switched(scenario("cw", {"north": [R1], "south": [R2]},
                                     [{"id": "one", "at": "0s", "text": "go"}]))
            data["failover"] = {"grace": "5s"}
            data["cities"][0]["crew"] = [BOT, OTHER]
            data["cities"][1]["crew"] = [OTHER, BOT]  # OTHER's, while it is up
            k.write(data)
            out = await k.arm("cw")
            assert out.run_id is not None, out.text
            assert server.rooms() == expected, other_up


async def test_the_instant_cancels_what_is_in_the_rooms_and_what_a_gate_held(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("ci", {"north": [R1], "south": [R2]}, [
            {"id": "one", "at": "0s", "text": "go"},
            {"id": "two", "at": "+1m", "text": "gated", "require": {"checkins": 5}},
        ])))
        out = await k.arm("ci")
        assert "failsafe: needs 4 delayed events (4 at once)" in out.text, out.text
        assert server.rooms() == [R1, R1, R2, R2]
        contents = [c for _, c, _ in server.held.values()]
        assert {c["org.blossom.dispatch"]["stage"] for c in contents} == {"one", "two"}
        await k.at(T0)
        assert server.rooms() == [R1, R2]  # one's are cancelled once sent
        await k.at(T0 + timedelta(minutes=1))  # two: held by its gate (no check-ins)
        assert server.rooms() == []


async def test_a_cancel_that_failed_is_told_and_retried_by_the_pass(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        switch = k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("cr", {"north": [R1]}, [{"id": "one", "at": "0s",
                                                           "text": "go"}])))
        await k.arm("cr")
        server.fail_cancels = True
        armed = k.runs.get("cr")
        await k.runs.hold(armed, ["north"])
        assert server.rooms() == [R1]
        assert any("failed and are retried" in n for n in k.hs.notices()), k.hs.notices()
        assert "syd_" not in " ".join(k.hs.notices())
        server.fail_cancels = False
        await switch.tick()
        assert server.rooms() == []


async def test_a_server_that_sends_at_once_switches_the_failsafe_off(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        asked: list[str] = []

        async def at_once(room_id: str, *_: Any, **__: Any) -> DelayId:
            asked.append(room_id)
            raise SentAtOnce("$early:fake")

        server.schedule = at_once  # type: ignore[method-assign]
        switch = k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("sa", {"north": [R1], "south": [R2]},
                                  [{"id": "one", "at": "0s", "text": "go"}])))
        out = await k.arm("sa")
        assert "sent 1 delayed events AT ONCE" in out.text, out.text
        assert asked == [R1]  # the batch stopped at the first
        await switch.tick()
        assert asked == [R1]  # and the pass asks no more
        k.write(switched(scenario("sb", {"north": [R1]}, [{"id": "one", "at": "0s",
                                                           "text": "go"}])))
        with pytest.raises(ArmError, match="sent a delayed event at once earlier"):
            await k.arm("sb")


async def test_back_after_the_server_sent_two_timers_at_once_send_nothing_again(
    tmp_path: Path,
) -> None:
    """A restart long after two instants: both timers fire together and both
    take the first stage (a timer takes every earlier one still waiting); the
    server had sent everything, so nothing goes out and each part is recorded
    as delivered by the homeserver."""
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("bk", {"north": [R1], "south": [R2]}, [
            {"id": "one", "at": "0s", "text": "go"},
            {"id": "two", "at": "+3s", "text": "two"},
        ]), after="10s"))
        await k.arm("bk")
        assert len(server.held) == 4
        server.held.clear()  # the bot was down; the server sent them all
        await k.at(T0 + timedelta(seconds=30))
        assert k.hs.in_room(R1) == [] and k.hs.in_room(R2) == []
        rows = await k.store.ledger.deliveries(1)
        assert len(rows) == 4
        assert {(r.state.value, r.last_error) for r in rows} == {
            ("skipped", "delivered by the homeserver (failsafe)")
        }


async def test_two_late_sends_of_one_stage_at_once_agree(tmp_path: Path) -> None:
    """Two paths cancelling the same rows at once (two timers taking one stage):
    one moves each row, the other finds it moved, and neither fails."""
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        switch = k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("tw", {"north": [R1], "south": [R2]}, [
            {"id": "one", "at": "0s", "text": "go"},
        ]), after="10s"))
        await k.arm("tw")
        server.held.clear()  # the server sent them while the bot was down
        k.clock.set(T0 + timedelta(seconds=30))
        armed = k.runs.get("tw")
        releases = [await k.runs.build_release(armed, d)
                    for d in await k.store.ledger.dispatches(armed.run.id)]
        await k.dispatcher.prepare(releases)
        await asyncio.gather(switch.before_late(armed, releases),
                             switch.before_late(armed, releases))
        rows = await k.store.ledger.deliveries(armed.run.id)
        assert {(r.state.value, r.last_error) for r in rows} == {
            ("skipped", "delivered by the homeserver (failsafe)")
        }


async def test_two_scheduling_batches_at_once_leave_every_event_scheduled(
    tmp_path: Path,
) -> None:
    """The pass and !arm (or a replacement) scheduling at once must not take the
    same row twice: the second would find it scheduled and cancel it."""
    async with kit(tmp_path, opted_in=[R1], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        plain = server.schedule

        passes: list[asyncio.Future[None]] = []

        async def slow(*args: Any, **kw: Any) -> DelayId:
            if not passes:  # the pass comes while !arm's request is in flight
                passes.append(asyncio.ensure_future(switch.tick()))
            for _ in range(5):
                await asyncio.sleep(0)
            return await plain(*args, **kw)

        server.schedule = slow  # type: ignore[method-assign]
        switch = k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("sc", {"north": [R1]}, [{"id": "one", "at": "0s",
                                                           "text": "go"}])))
        await k.arm("sc")
        await asyncio.gather(*passes)
        assert server.rooms() == [R1]
        states = [s.row.state.value for s in await k.store.delayed.rows(1)]
        assert states == ["scheduled"]


async def test_private_participants_joined_before_arming_are_covered(tmp_path: Path) -> None:
    dm = "!dm:fake"
    async with kit(tmp_path, opted_in=[R1, dm], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        data = switched(scenario("pd", {"north": [R1]}, [{"id": "one", "at": "0s",
                                                          "text": "go"}]))
        data["cities"][0]["direct"] = True
        k.write(data)
        await k.store.participants.add_direct("pd", "north", "@p:fake", dm, now=k.clock.now())
        await k.arm("pd")
        assert server.rooms() == sorted([R1, dm])


async def test_purge_cancels_what_may_still_fire_and_waits_while_it_cannot(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1], now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("pu", {"north": [R1]}, [{"id": "one", "at": "0s",
                                                           "text": "go"}])))
        await k.arm("pu")
        server.fail_cancels = True
        await k.runs.disarm(k.runs.get("pu"))  # its cancel fails: the event may fire
        assert server.rooms() == [R1]
        assert await k.runs.failsafe_purge("pu") == 1  # !purge must wait
        server.fail_cancels = False
        assert await k.runs.failsafe_purge("pu") == 0
        assert server.rooms() == []


async def test_a_stage_beyond_the_maximum_delay_is_scheduled_by_the_pass_once_allowed(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1], now=T0 - timedelta(hours=2)) as k:
        server = FakeDelayed()

        async def one_hour() -> Support:
            return Support(True, 3_600_000, 100, 0.0)

        server.probe = server.ensure_supported = one_hour  # type: ignore[method-assign]
        switch = k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(scenario("df", {"north": [R1]}, [{"id": "one", "at": "0s",
                                                           "text": "go"}])))
        out = await k.arm("df")
        assert "1 are scheduled later (the server's maximum delay)" in out.text, out.text
        assert server.rooms() == []
        await switch.tick()
        assert server.rooms() == []  # still beyond the maximum
        # Due at T0 + 2m: allowed from T0 + 2m - 1h; scheduled a minute after that.
        k.clock.set(T0 + timedelta(minutes=2) - timedelta(hours=1) + timedelta(minutes=1))
        await switch.tick()
        assert server.rooms() == [R1]
        ((_, _, delay_ms),) = server.held.values()
        assert delay_ms <= 3_600_000


async def test_a_member_back_before_the_instant_takes_duty_and_ours_is_cancelled(
    tmp_path: Path,
) -> None:
    """OTHER, first for south, was down at arming: this member scheduled south
    too. Back by the instant, OTHER sends; this member, now its standby, finds
    the copy when it looks and cancels its delayed event."""
    async with kit(tmp_path, opted_in=[R1, R2], now=T0 - timedelta(minutes=10),
                   crew=lambda hs: Duty(hs, other_up=False)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        data = switched(scenario("bk", {"north": [R1], "south": [R2]},
                                 [{"id": "one", "at": "0s", "text": "go"}]))
        data["failover"] = {"grace": "5s"}
        data["cities"][0]["crew"] = [BOT, OTHER]
        data["cities"][1]["crew"] = [OTHER, BOT]
        k.write(data)
        await k.arm("bk")
        assert server.rooms() == [R1, R2]
        k.crew.other_up = True
        tag = {"scenario": "bk", "city": "south", "stage": "one", "part": "text",
               "run": k.keys[-1]}
        k.crew.copies[R2] = [{"type": "m.room.message", "event_id": "$c", "sender": OTHER,
                              "origin_server_ts": 1,
                              "content": {"msgtype": "m.text", "body": "go",
                                          "org.blossom.dispatch": tag}}]
        k.clock.set(T0)
        firing = asyncio.ensure_future(k.timers.fire_due())
        await asyncio.sleep(0.2)
        k.clock.set(T0 + timedelta(seconds=5))
        await asyncio.wait_for(firing, 5)
        await k.idle()
        assert k.hs.stages(R1) == [("one", "text")] and k.hs.stages(R2) == []
        assert server.rooms() == []
