"""A member's own doubled copies of one dispatch part (the homeserver sent a
delayed event twice, or its copy raced the bot's late send): all but the
earliest are redacted, with or without a crew. Pure logic and the shell over
fakes (milliseconds); the live test is in tests/test_failsafe_bot_live.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.crew.look import Copy, own_doubles, resolve
from bot.matrix.events import Dispatched
from bot.runs.doubles import OwnDoubles

ME, OTHER = "@bot:fake", "@other:fake"
ROOM, CONTROL = "!city:fake", "!control:fake"


def test_all_but_the_earliest_own_copy_by_timestamp_then_event_id() -> None:
    copies = [Copy(20, "$b", ME), Copy(10, "$z", ME), Copy(10, "$a", ME), Copy(5, "$o", OTHER)]
    assert own_doubles(copies, ME) == (Copy(10, "$z", ME), Copy(20, "$b", ME))
    assert own_doubles([Copy(10, "$a", ME)], ME) == ()
    assert own_doubles([Copy(10, "$a", ME), Copy(10, "$a", ME)], ME) == ()  # one seen twice
    assert own_doubles(copies, OTHER) == ()


def test_never_redacts_the_copy_the_crew_rule_keeps() -> None:
    copies = [Copy(20, "$b", ME), Copy(10, "$a", ME), Copy(15, "$o", OTHER)]
    for order in ((ME, OTHER), (OTHER, ME)):
        kept = resolve(copies, order).keep
        assert kept not in own_doubles(copies, ME)
        assert set(own_doubles(copies, ME)) <= set(resolve(copies, order).redact)


@dataclass
class FakeMatrix:
    redacted: list[tuple[str, str]] = field(default_factory=list)

    async def redact(self, room_id: str, event_id: str, reason: str) -> bool:
        self.redacted.append((room_id, event_id))
        return True


@dataclass
class FakeNotifier:
    said: list[tuple[str | None, str]] = field(default_factory=list)

    async def report(self, room_id: str | None, text: str, **_: Any) -> None:
        self.said.append((room_id, text))


@dataclass
class FakeLedger:
    """delivery event ids: which the bot recorded for its sends."""

    recorded: set[str] = field(default_factory=set)

    async def repoint(self, event_id: str, kept: str) -> bool:
        if event_id not in self.recorded:
            return False
        self.recorded = (self.recorded - {event_id}) | {kept}
        return True


@dataclass
class FakeRun:
    id: int
    control_room: str


@dataclass
class FakeArmed:
    run: FakeRun
    run_key: str


def _ev(event_id: str, ts: int, sender: str = ME, part: str = "text") -> Dispatched:
    from bot.crew.look import DispatchTag

    return Dispatched(ROOM, event_id, sender, ts, DispatchTag("$arm", "north", "one", part, "s"))


async def test_a_crew_of_one_redacts_its_later_copy_and_tells_the_control_room() -> None:
    matrix, notifier = FakeMatrix(), FakeNotifier()
    armed = {7: FakeArmed(FakeRun(7, CONTROL), "$arm")}
    ledger = FakeLedger({"$late"})  # the bot's late send, after the homeserver's copy
    doubles = OwnDoubles(ME, armed=lambda: armed.values(), matrix=matrix, notifier=notifier,
                         ledger=ledger)
    await doubles.on_dispatched(_ev("$late", 2000))
    await doubles.on_dispatched(_ev("$other_part", 2500, part="location"))
    assert matrix.redacted == [] and notifier.said == []
    await doubles.on_dispatched(_ev("$first", 1000))  # the earlier copy seen second
    await doubles.on_dispatched(_ev("$first", 1000))  # and again (two syncs): nothing more
    assert matrix.redacted == [(ROOM, "$late")]
    assert ledger.recorded == {"$first"}  # a !redirect edits the copy the room shows
    assert len(notifier.said) == 1
    room, said = notifier.said[0]
    assert room == CONTROL
    assert "$late" in said and "$first" in said and "run 7" in said and "1 later" in said
    await doubles.on_dispatched(_ev("$o", 500, sender=OTHER))  # the crew's rule, not this
    assert matrix.redacted == [(ROOM, "$late")]


async def test_a_run_no_longer_armed_still_has_its_doubles_redacted() -> None:
    matrix, notifier = FakeMatrix(), FakeNotifier()
    doubles = OwnDoubles(ME, armed=lambda: (), matrix=matrix, notifier=notifier,
                         ledger=FakeLedger())
    await doubles.on_dispatched(_ev("$a", 1000))
    await doubles.on_dispatched(_ev("$b", 1000))
    assert matrix.redacted == [(ROOM, "$b")]
    assert notifier.said and notifier.said[0][0] is None  # every control room


async def test_the_ledger_is_repointed_to_the_copy_kept(tmp_path: Any) -> None:
    from bot.ledger import DeliveryKey, DeliveryState, Part
    from bot.store import PlannedDispatch, Store

    store = await Store.open(tmp_path / "b.db")
    try:
        now = datetime(2030, 1, 1, tzinfo=UTC)
        run_id = await store.runs.create(
            scenario_id="s", source_path="s.yaml", source_sha256="x", armed_by="@o:x",
            control_room=CONTROL, now=now, dispatches=[PlannedDispatch("north", "one", 0, now)],
            run_key="$arm",
        )
        key = DeliveryKey(run_id, "s", "north", "one", ROOM, Part.TEXT, "$arm")
        await store.ledger.ensure_deliveries([key], now, now)
        await store.ledger.transition(key, DeliveryState.SENDING, now=now)
        await store.ledger.transition(key, DeliveryState.SENT, now=now, event_id="$late")
        assert await store.ledger.repoint("$late", "$first")
        row = await store.ledger.delivery(key)
        assert row is not None and row.event_id == "$first"
        assert not await store.ledger.repoint("$nothing", "$first")
    finally:
        await store.close()
