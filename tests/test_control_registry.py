"""The command registry, argument types, targets and the controller's flow,
against small fakes (no homeserver; milliseconds)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from bot.clock import ManualClock
from bot.control import commands as commands_module
from bot.control.args import (
    CITY_ARG,
    DURATION_ARG,
    NUMBER_ARG,
    PLACE_ARG,
    SLUG_ARG,
    WHICH_ARG,
    BadValue,
    NewPlace,
)
from bot.control.catalog import CONTROL_COMMANDS, PARTICIPANT_COMMANDS
from bot.control.checkins import counted_by_next_gate
from bot.control.commands import Controller
from bot.control.confirm import Asked, Confirmations, command_key
from bot.control.parse import Command, UsageError, parse
from bot.control.registry import Args, Context, Reply, Table, command, commands_of
from bot.control.targets import abort_cities, pick_run, resolve_cities
from bot.runs import ArmError
from bot.text import control as text

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# -- argument types ------------------------------------------------------------------------


def test_duration_uses_the_scenario_grammar() -> None:
    assert DURATION_ARG.convert("1h30m") == timedelta(hours=1, minutes=30)
    assert DURATION_ARG.convert("-5m") == timedelta(minutes=-5)
    for bad in ("30m1h", "5", "soon", "1h1h", "m"):
        with pytest.raises(BadValue):
            DURATION_ARG.convert(bad)


def test_slug_is_the_scenario_layers() -> None:
    assert SLUG_ARG.convert("lantern-walk") == "lantern-walk"
    for bad in ("a_b", "Demo", "dеmo", "-x", "x-"):  # `_` is no slug in scenario files
        with pytest.raises(BadValue):
            SLUG_ARG.convert(bad)


def test_city_any_case_ids_only() -> None:
    assert CITY_ARG.convert("North") == "north"
    for bad in ("nоrth", "go,", "a_b"):
        with pytest.raises(BadValue):
            CITY_ARG.convert(bad)
    assert WHICH_ARG.convert("Drill") == "drill"
    with pytest.raises(BadValue):
        WHICH_ARG.convert("real")


def test_number_and_place_with_one_geo_parser() -> None:
    assert NUMBER_ARG.convert("120") == 120
    for bad in ("0", "1000001", "٣", "1.5"):
        with pytest.raises(BadValue):
            NUMBER_ARG.convert(bad)
    assert PLACE_ARG.convert("Town Hall 52.5,13.4") == NewPlace("Town Hall", (52.5, 13.4))
    assert PLACE_ARG.convert("Gate 7") == NewPlace("Gate 7", None)
    with pytest.raises(BadValue, match="latitude"):
        PLACE_ARG.convert("Town 95,1")
    with pytest.raises(BadValue):
        PLACE_ARG.convert("52.5,13.4")  # a position without a name


# -- the parser over the real declarations -------------------------------------------------


def test_parse_converts_and_confirms() -> None:
    r = parse("!delay walk drill 15m North", CONTROL_COMMANDS)
    assert isinstance(r, Command)
    assert r.values == {"scenario": "walk", "run": "drill", "duration": timedelta(minutes=15),
                        "city": "north"}
    assert isinstance(parse("!delay walk 30m1h", CONTROL_COMMANDS), UsageError)
    arm = parse("!arm walk confirm", CONTROL_COMMANDS)
    assert isinstance(arm, Command) and arm.confirmed and arm.args == {"scenario": "walk"}
    # !hold is not confirmable: "confirm" is just a (bad) city word there.
    hold = parse("!hold walk confirm", CONTROL_COMMANDS)
    assert isinstance(hold, Command) and not hold.confirmed and hold.values["city"] == "confirm"


def test_abort_words_after_the_scenario() -> None:
    r = parse("!abort rd Go home now", CONTROL_COMMANDS)
    assert isinstance(r, Command) and r.values["city"] == "go" and r.values["message"] == "home now"
    r = parse("!abort rd", CONTROL_COMMANDS)
    assert isinstance(r, Command) and r.values == {"scenario": "rd"}
    r = parse("!abort rd Полиция", CONTROL_COMMANDS)  # not id-shaped: no city at all
    assert isinstance(r, Command) and "city" not in r.values and "message" in r.values


def test_every_command_declared_once_with_help() -> None:
    assert set(CONTROL_COMMANDS) == {
        "help", "arm", "disarm", "status", "headcount", "hold", "resume", "delay", "release",
        "redirect", "abort", "drill", "purge"}
    assert set(PARTICIPANT_COMMANDS) == {"here", "help", "join", "stop"}
    releasing = {n for n, d in CONTROL_COMMANDS.items() if d.releases}
    assert releasing == {"arm", "drill", "release", "resume"}
    assert all(d.confirmable for n, d in CONTROL_COMMANDS.items() if n in releasing | {"purge"})

    class Twice:
        @command("x", "X.", example="!x")
        async def one(self, ctx: Context, args: Args) -> Reply:
            return Reply("1")

        @command("x", "X again.", example="!x")
        async def two(self, ctx: Context, args: Args) -> Reply:
            return Reply("2")

    with pytest.raises(ValueError, match="twice"):
        commands_of(Twice)
    table = Table()

    class Group:
        @command("ping", "Answer pong.", example="!ping")
        async def ping(self, ctx: Context, args: Args) -> Reply:
            return Reply("pong")

    table.add(Group())
    assert table.help("Commands:") == "Commands:\n!ping — Answer pong. e.g. !ping"
    ping = table.handlers["ping"]
    reply = asyncio.run(ping(Context("!r", "@a", "$e"), Args(table.defs["ping"], {})))
    assert reply == Reply("pong")


# -- targets -------------------------------------------------------------------------------


def fake_run(sid: str, cities: list[str], *, drill: bool = False) -> Any:
    scenario = SimpleNamespace(cities=[SimpleNamespace(id=c) for c in cities])
    return SimpleNamespace(scenario_id=sid, scenario=scenario,
                           drill_room="!drill" if drill else None,
                           label=lambda: f"[drill] {sid}" if drill else sid)


class FakeRuns:
    def __init__(self, *armed: Any) -> None:
        self.list = list(armed)

    def by_scenario(self, sid: str, *, drill: bool = False) -> Any:
        return next((a for a in self.list
                     if a.scenario_id == sid and (a.drill_room is not None) == drill), None)


def test_cities_match_any_case_and_never_widen() -> None:
    rd = fake_run("rd", ["north", "south"])
    assert resolve_cities(rd, "NORTH") == ["north"]
    assert resolve_cities(rd, None) == ["north", "south"]
    with pytest.raises(ArmError, match="rd has no city nrth"):
        resolve_cities(rd, "nrth")
    assert abort_cities(rd, None, None, "") == ["north", "south"]
    assert abort_cities(rd, "All", "go", "") == ["north", "south"]
    assert abort_cities(rd, "North", "police", "") == ["north"]
    for city, message in (("sout", None), ("go", "home now"), (None, "Полиция")):
        with pytest.raises(ArmError) as err:
            abort_cities(rd, city, message, "")
        assert "!abort rd all <message>" in str(err.value) and "north, south" in str(err.value)


def test_pick_run_drill_and_live() -> None:
    live, drill = fake_run("walk", ["north"]), fake_run("walk", ["north"], drill=True)
    runs = FakeRuns(live, drill)
    retype = ("!hold walk drill north", "!hold walk live north")
    with pytest.raises(ArmError) as err:
        pick_run(runs, "walk", None, retype)  # type: ignore[arg-type]
    assert "!hold walk drill north" in str(err.value) and "!hold walk live" in str(err.value)
    picked = pick_run(runs, "walk", "live", retype)  # type: ignore[arg-type]
    assert picked.armed is live and picked.say("Holding walk").startswith("[live] ")
    assert pick_run(runs, "walk", "drill", retype).armed is drill  # type: ignore[arg-type]
    alone = pick_run(FakeRuns(drill), "walk", None, retype)  # type: ignore[arg-type]
    assert alone.armed is drill and alone.say("x") == "x"
    with pytest.raises(ArmError, match="no drill of walk"):
        pick_run(FakeRuns(live), "walk", "drill", retype)  # type: ignore[arg-type]


def test_ack_follows_the_gate() -> None:
    def stage(sid: str, gated: bool = False) -> Any:
        return SimpleNamespace(id=sid, require=object() if gated else None)

    s = SimpleNamespace(stages=[stage("call"), stage("meet"), stage("go", True)])
    assert not counted_by_next_gate(s, "")  # type: ignore[arg-type]
    assert not counted_by_next_gate(s, "call")  # type: ignore[arg-type]
    assert counted_by_next_gate(s, "meet")  # type: ignore[arg-type]
    assert counted_by_next_gate(s, "go")  # type: ignore[arg-type]  # no gate ahead
    first = SimpleNamespace(stages=[stage("call", True)])
    assert counted_by_next_gate(first, "")  # type: ignore[arg-type]


# -- confirmations and the controller ------------------------------------------------------


def test_confirmations_window() -> None:
    clock = ManualClock(T0)
    c = Confirmations(clock, window_s=120)
    assert command_key("!Arm  walk   CONFIRM") == "!arm walk"
    assert c.take("!r", "!arm walk") is None
    c.ask("!r", "!arm walk")
    assert c.take("!other", "!arm walk") is None
    assert c.take("!r", "!arm walk") is Asked.HANDLER
    assert c.take("!r", "!arm walk") is None  # used up
    c.ask("!r", "!arm walk", Asked.READ_LATE)
    assert c.take("!r", "!arm walk") is Asked.READ_LATE
    c.ask("!r", "!purge x")
    clock.advance(timedelta(seconds=121))
    assert c.take("!r", "!purge x") is None


class FakeAudit:
    def __init__(self) -> None:
        self.audits: list[tuple[str, str]] = []

    async def record(self, *, now: datetime, room_id: str, sender: str, command: str,
                     result: str) -> None:
        self.audits.append((command, result))


class FakeStore:
    def __init__(self) -> None:
        self.audit = FakeAudit()


class FakeRooms:
    async def is_core(self, sender: str, room_id: str) -> bool:
        return sender == "@org"


class FakeNotifier:
    def __init__(self) -> None:
        self.replies: list[str] = []

    async def reply(self, room_id: str, event_id: str, body: str, **_: Any) -> None:
        self.replies.append(body)


class ArmingRuns(FakeRuns):
    def __init__(self) -> None:
        super().__init__()
        self.armed_ids: list[str] = []
        self.held: list[list[str]] = []

    def arm_options(self, sid: str, typed: str) -> Any:
        from bot.runs import ArmOptions

        return ArmOptions()

    async def arm(self, sid: str, *, sender: str, control_room: str, **kw: Any) -> Any:
        from bot.runs import ArmOutcome

        self.armed_ids.append(sid)
        self.list.append(fake_run(sid, ["alpha"]))
        return ArmOutcome(f"Armed {sid}", "table", run_id=len(self.armed_ids))

    async def hold(self, armed: Any, cities: list[str]) -> str:
        self.held.append(cities)
        return f"Holding {armed.scenario_id} in {', '.join(cities)}"

    async def redirect(self, armed: Any, city: str, place: str, name: str, geo: Any) -> str:
        return f"Redirected {place} in {city}"


class WarningRuns(ArmingRuns):
    """An !arm whose pre-flight has a warning: it asks unless confirmed."""

    def __init__(self) -> None:
        super().__init__()
        self.confirmed_seen: list[bool] = []

    async def arm(self, sid: str, *, sender: str, control_room: str, **kw: Any) -> Any:
        from bot.runs import ArmOutcome

        self.confirmed_seen.append(kw["confirmed"])
        if not kw["confirmed"]:
            return ArmOutcome("Pre-flight: too slow", "table", run_id=None)
        return await super().arm(sid, sender=sender, control_room=control_room, **kw)


def test_confirming_a_late_read_still_shows_the_preflight_warning() -> None:
    """A `confirm` for a command read late is not also a `confirm` of warnings the
    organiser has not seen yet: !arm asks again with its pre-flight."""
    clock = ManualClock(T0)
    runs, store, notifier = WarningRuns(), FakeStore(), FakeNotifier()
    c = Controller(store=store, runs=runs, rooms=FakeRooms(), notifier=notifier,  # type: ignore[arg-type]
                   clock=clock)
    typed = int((T0 - timedelta(seconds=commands_module.LATE_READ_S + 95)).timestamp() * 1000)
    now_ms = int(T0.timestamp() * 1000)

    async def go() -> None:
        await c.handle("!c", "$1", "@org", "!arm walk", sent_ms=typed)
        assert "read" in notifier.replies[-1] and runs.armed_ids == []
        await c.handle("!c", "$2", "@org", "!arm walk confirm", sent_ms=now_ms)
        assert "Pre-flight: too slow" in notifier.replies[-1] and runs.armed_ids == []
        await c.handle("!c", "$3", "@org", "!arm walk confirm", sent_ms=now_ms)
        assert runs.armed_ids == ["walk"]

    asyncio.run(go())
    assert runs.confirmed_seen == [False, True]


def controller(clock: ManualClock) -> tuple[Controller, ArmingRuns, FakeStore, FakeNotifier]:
    from bot.control.steering import Steering

    runs, store, notifier = ArmingRuns(), FakeStore(), FakeNotifier()
    c = Controller(store=store, runs=runs, rooms=FakeRooms(), notifier=notifier,  # type: ignore[arg-type]
                   clock=clock)
    Steering(runs=runs, store=store, matrix=None, clock=clock).register(c)  # type: ignore[arg-type]
    return c, runs, store, notifier


def test_release_read_late_asks_stop_read_late_runs() -> None:
    clock = ManualClock(T0)
    c, runs, store, notifier = controller(clock)
    typed = int((T0 - timedelta(seconds=commands_module.LATE_READ_S + 95)).timestamp() * 1000)

    async def go() -> None:
        await c.handle("!c", "$1", "@org", "!arm walk", sent_ms=typed)
        assert runs.armed_ids == []
        assert "typed 11:57:25Z and read 12:00:00Z (2m35s later)" in notifier.replies[-1]
        assert "!arm walk confirm" in notifier.replies[-1]
        await c.handle("!c", "$2", "@org", "!arm walk confirm", sent_ms=int(T0.timestamp() * 1000))
        assert runs.armed_ids == ["walk"]
        await c.handle("!c", "$3", "@org", "!hold walk ALPHA", sent_ms=typed)
        assert runs.held == [["alpha"]] and "Holding walk in alpha" in notifier.replies[-1]
        await c.handle("!c", "$4", "@org", "!arm other confirm")
        assert "nothing to confirm" in notifier.replies[-1] and runs.armed_ids == ["walk"]
        await c.handle("!c", "$5", "@stranger", "!arm x")
        assert notifier.replies[-1] == text.NOT_CORE

    asyncio.run(go())
    assert store.audit.audits == [
        ("!arm walk", "asked to confirm: read late"),
        ("!arm walk confirm", "ok"),
        ("!hold walk alpha", "ok"),
        ("!arm other confirm", "refused: nothing to confirm: send !arm other first, then "
         "!arm other confirm within 120 seconds"),
        ("!arm", "refused: not core group"),
    ]


def test_audit_keeps_no_free_text_or_refused_city_words() -> None:
    clock = ManualClock(T0)
    c, runs, store, _ = controller(clock)
    runs.list.append(fake_run("rd", ["north", "south"]))
    asyncio.run(c.handle("!c", "$1", "@org", "!abort rd go home now"))
    asyncio.run(c.handle("!c", "$2", "@org", "!redirect rd north spot Secret Place 1,2"))
    # The refused abort keeps no "go"; the redirect keeps its ids, not the new name.
    assert [a for a, _ in store.audit.audits] == ["!abort rd", "!redirect rd north spot"]
