"""The crew's duty applied to a fan-out (bot/runs/duty.py, pure) and the run
manager's crew path over the fake Matrix (bot/runs/covering.py): the member on
duty sends at the instant, a standby looks at instant + grace and sends only
what is missing, a late sender looks first, rooms outside a member's order are
left alone. Milliseconds each."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from fakes import BOT, CONTROL, T0, kit, scenario

from bot import DISPATCH_KEY
from bot.crew.duty import CrewView
from bot.crew.gate import GATE_KEY, checkin_token
from bot.crew.members import Crew, Member
from bot.crew.shares import CHECKINS_KEY, share_contents
from bot.delivery import Message, Release
from bot.ids import ABORT_STAGE
from bot.ledger import DeliveryState, DispatchState, Part
from bot.retry import SendFailure
from bot.runs.duty import split_by_duty

OTHER = "@other:fake"
GRACE = timedelta(seconds=5)
R1, R2, R3 = "!r1:fake", "!r2:fake", "!r3:fake"


def release(rooms: Sequence[str], city: str = "town") -> Release:
    return Release(
        run_id=1,
        scenario_id="s",
        city_id=city,
        stage_id="one",
        due_at=T0,
        rooms=tuple(rooms),
        messages=(Message(Part.TEXT, "m.room.message", {"body": "x"}),),
        run_key="$arm:fake",
    )


def view(*, other_seen: datetime | None = T0, me: str = BOT) -> CrewView:
    crew = Crew((BOT, OTHER), timedelta(seconds=1))
    members = {OTHER: Member(OTHER, seen_at=other_seen)} if other_seen else {}
    return CrewView(crew, members, me=me)


def split(order: Sequence[str], *, now: datetime = T0, v: CrewView | None = None,
          rooms: Sequence[str] = (R1, R2), joined: dict[str, set[str]] | None = None,
          missed: bool = False):  # type: ignore[no-untyped-def]
    return split_by_duty(
        [release(rooms)],
        view=v or view(),
        me=BOT,
        order_of=lambda _city: order,
        joined=joined or {r: {BOT, OTHER} for r in rooms},
        grace=GRACE,
        now=now,
        instant_of=lambda r: r.due_at,
        missed=lambda _at: missed,
    )


def test_on_duty_sends_every_room_at_the_instant() -> None:
    plan = split((BOT, OTHER))
    assert [r.rooms for r in plan.now] == [(R1, R2)]
    assert plan.waves == () and plan.elsewhere == ()


def test_a_standby_looks_at_instant_plus_grace() -> None:
    plan = split((OTHER, BOT))
    assert plan.now == ()
    (wave,) = plan.waves
    assert wave.send_at == T0 + GRACE and wave.rank == 1 and wave.release.rooms == (R1, R2)


def test_the_member_before_is_down_at_the_instant_so_this_one_sends_at_once() -> None:
    plan = split((OTHER, BOT), v=view(other_seen=T0 - timedelta(seconds=10)))
    assert [r.rooms for r in plan.now] == [(R1, R2)] and plan.waves == ()


def test_a_room_the_member_before_is_not_in_is_sent_at_once() -> None:
    plan = split((OTHER, BOT), joined={R1: {BOT, OTHER}, R2: {BOT}})
    assert [r.rooms for r in plan.now] == [(R2,)]
    assert [w.release.rooms for w in plan.waves] == [(R1,)]


def test_a_late_sender_on_duty_looks_first() -> None:
    late = T0 + GRACE + timedelta(seconds=1)
    plan = split((BOT, OTHER), now=late)
    assert plan.now == ()
    (wave,) = plan.waves
    assert wave.send_at == late and wave.rank == 0


def test_within_grace_on_duty_does_not_look() -> None:
    plan = split((BOT, OTHER), now=T0 + GRACE - timedelta(seconds=1))
    assert [r.rooms for r in plan.now] == [(R1, R2)]


def test_missed_heartbeats_at_the_instant_make_the_member_on_duty_look() -> None:
    plan = split((BOT, OTHER), missed=True)
    assert plan.now == () and [w.send_at for w in plan.waves] == [T0]


def test_a_city_whose_order_leaves_this_member_out_is_left_alone() -> None:
    plan = split((OTHER,))
    assert plan.now == () and plan.waves == ()
    assert [rooms for _, rooms in plan.elsewhere] == [(R1, R2)]


# -- the run manager's crew path over the fake Matrix ----------------------------------


@dataclass
class FakeCrew:
    """bot.runs.duty.CrewSide over a fixed view; ``copies`` are other members'
    events in each room, the fake homeserver's events are this bot's."""

    hs: object
    crew: Crew = field(default_factory=lambda: Crew((BOT, OTHER), timedelta(seconds=1)))
    me: str = BOT
    other_seen: datetime | None = T0
    copies: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    looked: list[str] = field(default_factory=list)
    warmed: list[tuple[str, ...]] = field(default_factory=list)
    nudged: int = 0

    def view(self) -> CrewView:
        members = {}
        if self.other_seen is not None:
            members[OTHER] = Member(OTHER, seen_at=self.other_seen, armed=frozenset({"*"}))
        return _AnyDigest(self.crew, members, me=self.me)

    def missed(self, at: datetime) -> bool:
        return False

    def cut_off_since(self, at: datetime) -> bool:
        return False

    def heard_since(self, at: datetime) -> bool:
        return True

    def joined(self, room_id: str) -> frozenset[str]:
        return frozenset({BOT, OTHER})

    async def learn_members(self, room_ids: Sequence[str]) -> None:
        return None

    async def refresh(self) -> None:
        return None

    def warm(self, room_ids: Sequence[str]) -> None:
        self.warmed.append(tuple(room_ids))

    async def recent(self, room_id: str) -> list[object] | None:
        self.looked.append(room_id)
        mine = [
            {"type": e.type, "event_id": e.event_id, "sender": BOT, "content": e.content,
             "origin_server_ts": 1}
            for e in self.hs.in_room(room_id)  # type: ignore[attr-defined]
        ]
        return [*self.copies.get(room_id, []), *mine]

    def nudge(self) -> None:
        self.nudged += 1


class _AnyDigest(CrewView):
    def ready(self, user_id: str, at: datetime, digest: str | None = None) -> bool:
        return super().ready(user_id, at, None)


def crew_scenario(order: list[str]) -> dict[str, object]:
    data = scenario("cs", {"town": [R1, R2]}, [{"id": "one", "at": "0s", "text": "go"}])
    data["failover"] = {"grace": "5s"}
    data["cities"][0]["crew"] = order  # type: ignore[index]
    return data


def copy_in(room: str, *, run: str, sender: str = OTHER) -> dict[str, object]:
    return {
        "type": "m.room.message",
        "event_id": f"$copy-{room}",
        "sender": sender,
        "origin_server_ts": 1,
        "content": {
            "msgtype": "m.text",
            "body": "go",
            DISPATCH_KEY: {"scenario": "cs", "city": "town", "stage": "one", "part": "text",
                           "run": run},
        },
    }


async def _turns(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_standby_covers_only_the_rooms_the_member_on_duty_missed(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], crew=lambda hs: FakeCrew(hs)) as k:
        k.write(crew_scenario([OTHER, BOT]))
        out = await k.arm("cs")
        assert out.run_id is not None and k.crew.nudged == 1
        k.crew.copies[R1] = [copy_in(R1, run=k.keys[-1])]
        k.clock.set(T0)
        firing = asyncio.ensure_future(k.timers.fire_due())
        await _turns()
        assert k.hs.stages(R1) == [] and k.hs.stages(R2) == []  # a standby waits its grace
        assert k.crew.looked == []
        k.clock.set(T0 + timedelta(seconds=5))
        await asyncio.wait_for(firing, 5)
        await k.idle()
        assert sorted(k.crew.looked) == [R1, R2]
        assert k.hs.stages(R1) == []  # the other member's copy is there
        assert k.hs.stages(R2) == [("one", "text")]
        ledger = await k.store.ledger.deliveries(out.run_id, "town", "one")
        rows = {d.key.room_id: d for d in ledger}
        assert rows[R1].state is DeliveryState.SKIPPED and OTHER in (rows[R1].last_error or "")
        assert rows[R2].state is DeliveryState.SENT
        summary = next(n for n in k.hs.notices() if "stage one" in n)
        assert "delivered to 2 of 2" in summary and "1 by other crew members" in summary


async def test_on_duty_sends_at_the_instant_without_looking(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], crew=lambda hs: FakeCrew(hs)) as k:
        k.write(crew_scenario([BOT, OTHER]))
        await k.arm("cs")
        await k.at(T0)
        assert k.hs.stages(R1) == [("one", "text")] and k.hs.stages(R2) == [("one", "text")]
        assert k.crew.looked == []


async def test_the_member_before_down_means_sending_at_the_instant(tmp_path: Path) -> None:
    async with kit(
        tmp_path, opted_in=[R1, R2], crew=lambda hs: FakeCrew(hs, other_seen=None)
    ) as k:
        k.write(crew_scenario([OTHER, BOT]))
        await k.arm("cs")
        await k.at(T0)
        assert k.hs.stages(R1) == [("one", "text")] and k.hs.stages(R2) == [("one", "text")]


async def test_abort_reaches_rooms_whose_member_on_duty_is_down(tmp_path: Path) -> None:
    async with kit(
        tmp_path, opted_in=[R1, R2], crew=lambda hs: FakeCrew(hs, other_seen=None)
    ) as k:
        k.write(crew_scenario([OTHER, BOT]))
        await k.arm("cs")
        await k.runs.abort(k.runs.get("cs"), ["town"], None)
        await k.idle()
        for room in (R1, R2):
            assert k.hs.stages(room) == [(ABORT_STAGE, "text")]


async def test_a_standby_does_not_send_an_abort_the_member_on_duty_sent(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], crew=lambda hs: FakeCrew(hs)) as k:
        k.write(crew_scenario([OTHER, BOT]))
        await k.arm("cs")
        copy = copy_in(R1, run=k.keys[-1])
        copy["content"][DISPATCH_KEY]["stage"] = ABORT_STAGE  # type: ignore[index]
        k.crew.copies[R1] = [copy]
        await k.runs.abort(k.runs.get("cs"), ["town"], None)
        await _turns()
        assert k.hs.stages(R1) == []
        k.clock.advance(timedelta(seconds=5))
        await k.idle()
        assert sorted(k.crew.looked) == [R1, R2] and k.hs.stages(R1) == []
        assert k.hs.stages(R2) == [(ABORT_STAGE, "text")]  # no copy there: covered


async def test_a_retry_after_grace_looks_first_and_leaves_a_covered_room(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1, R2], crew=lambda hs: FakeCrew(hs)) as k:
        k.write(crew_scenario([BOT, OTHER]))
        out = await k.arm("cs")
        # R1 refuses every request for now (an outage of this member's server).
        k.hs.fail[R1] = [SendFailure(503, message="down")] * 100_000
        k.clock.set(T0)
        firing = asyncio.ensure_future(k.timers.fire_due())
        for _ in range(200):  # R1's retries wait real milliseconds
            if k.hs.stages(R2):
                break
            await asyncio.sleep(0.01)
        assert k.hs.stages(R2) == [("one", "text")] and k.hs.stages(R1) == []
        assert k.crew.looked == []  # within grace a retry does not look
        # Past grace, the other member covered R1: the next retry looks, finds it.
        k.crew.copies[R1] = [copy_in(R1, run=k.keys[-1])]
        k.clock.set(T0 + timedelta(seconds=6))
        await asyncio.wait_for(firing, 10)
        await k.idle()
        assert R1 in k.crew.looked and k.hs.stages(R1) == []
        row = next(d for d in await k.store.ledger.deliveries(out.run_id, "town", "one")
                   if d.key.room_id == R1)
        assert row.state is DeliveryState.SKIPPED and OTHER in (row.last_error or "")
        summary = next(n for n in k.hs.notices() if "stage one" in n)
        assert "delivered to 2 of 2" in summary, summary


# -- gates: one decision per city -------------------------------------------------------


def gated_scenario(order: list[str]) -> dict[str, object]:
    data = scenario("cg", {"town": [R1]}, [
        {"id": "call", "at": "0s", "text": "call"},
        {"id": "go", "at": "+10s", "text": "go", "require": {"checkins": 2, "else": "hold"}},
    ])
    data["failover"] = {"grace": "5s"}
    data["cities"][0]["crew"] = order  # type: ignore[index]
    return data


def gate_notice(run: str, action: str, checkins: int, sender: str = OTHER) -> dict[str, object]:
    return {
        "type": "m.room.message",
        "event_id": "$gate",
        "sender": sender,
        "origin_server_ts": 1,
        "content": {"msgtype": "m.notice", "body": "gate",
                    GATE_KEY: {"run": run, "city": "town", "stage": "go", "action": action,
                               "checkins": checkins, "needed": 2}},
    }


async def _state(k: object, run_id: int) -> DispatchState:
    row = await k.store.ledger.dispatch(run_id, "town", "go")  # type: ignore[attr-defined]
    assert row is not None
    return row.state  # type: ignore[no-any-return]


GO = T0 + timedelta(seconds=10)


async def _first_stage_as_standby(k: object) -> None:
    """Stage "call" with another member first: covered after its grace."""
    k.clock.set(T0)  # type: ignore[attr-defined]
    firing = asyncio.ensure_future(k.timers.fire_due())  # type: ignore[attr-defined]
    await _turns()
    k.clock.set(T0 + timedelta(seconds=5))  # type: ignore[attr-defined]
    await asyncio.wait_for(firing, 5)


async def test_the_member_on_duty_for_a_city_decides_its_gate_and_publishes_it(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs)) as k:
        k.write(gated_scenario([BOT, OTHER]))
        out = await k.arm("cg")
        await k.at(T0)
        await k.at(GO)
        assert await _state(k, out.run_id) is DispatchState.HELD
        (notice,) = [e for e in k.hs.in_room(CONTROL) if GATE_KEY in e.content]
        assert notice.content[GATE_KEY] == {"run": k.keys[-1], "city": "town", "stage": "go",
                                            "action": "hold", "checkins": 0, "needed": 2}


async def test_the_others_follow_a_published_gate_decision(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs, other_seen=GO)) as k:
        k.write(gated_scenario([OTHER, BOT]))
        out = await k.arm("cg")
        await _first_stage_as_standby(k)
        # The member on duty counted two check-ins; this one saw none itself.
        k.crew.copies[CONTROL] = [gate_notice(k.keys[-1], "release", 2)]
        k.clock.set(GO)
        firing = asyncio.ensure_future(k.timers.fire_due())
        for _ in range(100):
            if await _state(k, out.run_id) is not DispatchState.SCHEDULED:
                break
            await asyncio.sleep(0.01)
        assert await _state(k, out.run_id) is DispatchState.RELEASING
        k.clock.set(GO + timedelta(seconds=5))  # its standby's grace: covers R1
        await asyncio.wait_for(firing, 5)
        await k.idle()
        assert k.hs.stages(R1) == [("call", "text"), ("go", "text")]
        assert not [e for e in k.hs.in_room(CONTROL) if GATE_KEY in e.content]


async def test_without_a_published_decision_a_member_decides_at_instant_plus_grace(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs, other_seen=GO)) as k:
        k.write(gated_scenario([OTHER, BOT]))
        out = await k.arm("cg")
        await _first_stage_as_standby(k)
        k.clock.set(GO)
        await k.timers.fire_due()
        await _turns(200)
        assert await _state(k, out.run_id) is DispatchState.SCHEDULED  # waiting for it
        k.clock.set(GO + timedelta(seconds=5))
        for _ in range(100):
            if await _state(k, out.run_id) is not DispatchState.SCHEDULED:
                break
            await asyncio.sleep(0.01)
        assert await _state(k, out.run_id) is DispatchState.HELD
        for _ in range(100):
            if any(GATE_KEY in e.content for e in k.hs.in_room(CONTROL)):
                break
            await asyncio.sleep(0.01)
        assert [e.content[GATE_KEY]["action"] for e in k.hs.in_room(CONTROL)
                if GATE_KEY in e.content] == ["hold"]


# -- gates: check-ins shared across the crew, once per person ----------------------------

P1, P2 = "@p1:fake", "@p2:fake"


def share_notice(run: str, users: Sequence[str], sender: str = OTHER) -> dict[str, object]:
    (body,) = share_contents(run, "town", "call", users)
    return {"type": "m.room.message", "event_id": "$share", "sender": sender,
            "origin_server_ts": 1, "content": {"msgtype": "m.notice", "body": "check-ins",
                                               CHECKINS_KEY: body}}


async def _gate_with_shared(k: object, shared: Sequence[str], sender: str = OTHER) -> int:
    """Arm, release "call", check P1 in with this member, let ``sender`` share
    ``shared``, then the gate of "go" (this member on duty); the run's id."""
    k.write(gated_scenario([BOT, OTHER]))  # type: ignore[attr-defined]
    out = await k.arm("cg")  # type: ignore[attr-defined]
    await k.at(T0)  # type: ignore[attr-defined]
    await k.store.participants.add_checkin(  # type: ignore[attr-defined]
        out.run_id, "town", "call", P1, now=T0, via="here"
    )
    notices = [share_notice(k.keys[-1], shared, sender)] if shared else []  # type: ignore[attr-defined]
    k.crew.copies[CONTROL] = notices  # type: ignore[attr-defined]
    await k.at(GO)  # type: ignore[attr-defined]
    return int(out.run_id)


def _published(k: object) -> list[dict[str, object]]:
    return [e.content[GATE_KEY] for e in k.hs.in_room(CONTROL)  # type: ignore[attr-defined]
            if GATE_KEY in e.content]


async def test_the_gate_counts_check_ins_another_member_took(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs)) as k:
        run_id = await _gate_with_shared(k, [P2])
        await k.idle()
        assert await _state(k, run_id) is DispatchState.RELEASED
        assert [(d["action"], d["checkins"]) for d in _published(k)] == [("release", 2)]


async def test_a_person_checked_in_with_two_members_counts_once(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs)) as k:
        run_id = await _gate_with_shared(k, [P1])
        assert await _state(k, run_id) is DispatchState.HELD
        assert [(d["action"], d["checkins"]) for d in _published(k)] == [("hold", 1)]


async def test_check_ins_shared_by_someone_outside_the_crew_do_not_count(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs)) as k:
        run_id = await _gate_with_shared(k, [P2], sender="@stranger:fake")
        assert await _state(k, run_id) is DispatchState.HELD


async def test_each_member_shares_its_check_ins_as_tokens_before_a_gate(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs)) as k:
        await _gate_with_shared(k, [])
        await k.idle()
        (notice,) = [e for e in k.hs.in_room(CONTROL) if CHECKINS_KEY in e.content]
        assert notice.content[CHECKINS_KEY] == {"run": k.keys[-1], "city": "town",
                                                "stage": "call",
                                                "tokens": [checkin_token(k.keys[-1], P1)]}
        assert P1 not in str(notice.content)


async def test_a_role_gate_counts_the_role_check_ins_another_member_took(tmp_path: Path) -> None:
    from bot.crew.shares import tagged_share_contents

    async with kit(tmp_path, opted_in=[R1], crew=lambda hs: FakeCrew(hs)) as k:
        data = gated_scenario([BOT, OTHER])
        data["roles"] = [{"id": "front", "name": "Front"}]
        data["stages"][1]["require"]["role"] = "front"  # type: ignore[index]
        k.write(data)
        out = await k.arm("cg")
        await k.at(T0)
        await k.store.participants.add_checkin(
            out.run_id, "town", "call", P1, now=T0, via="here", role_id="front"
        )
        # The other member saw P2 (front) and P3 (no role): only P2 counts.
        bodies = tagged_share_contents(k.keys[-1], "town", "call",
                                       {P2: (None, "front"), "@p3:fake": (None, None)})
        k.crew.copies[CONTROL] = [
            {"type": "m.room.message", "event_id": f"$share{n}", "sender": OTHER,
             "origin_server_ts": 1,
             "content": {"msgtype": "m.notice", "body": "check-ins", CHECKINS_KEY: body}}
            for n, body in enumerate(bodies)
        ]
        await k.at(GO)
        await k.idle()
        assert await _state(k, out.run_id) is DispatchState.RELEASED
        assert [(d["action"], d["checkins"]) for d in _published(k)] == [("release", 2)]
        # This member's own share says the role its token counts for, not who.
        (mine,) = [e.content[CHECKINS_KEY] for e in k.hs.in_room(CONTROL)
                   if CHECKINS_KEY in e.content]
        assert (mine["pod"], mine["role"]) == (None, "front") and P1 not in str(mine)
