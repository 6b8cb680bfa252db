"""The dead-man's switch without a homeserver: the scenario key, the pure planning
(what to schedule when, the crew check, counts for !arm, what steering cancels),
the delay id's secrecy, and the delayed_events table (transitions, purge)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from bot import DISPATCH_KEY
from bot.devtools.synapse_config import delayed_events_config
from bot.failsafe import (
    DelayedRow,
    DelayedState,
    Limits,
    Steer,
    Target,
    after_release,
    arm_lines,
    blocking_purge,
    check_after,
    delayed_content,
    delayed_may,
    delayed_txn_id,
    plan_failsafe,
    steer,
)
from bot.failsafe.plan import PART_STAGGER
from bot.failsafe.secret import DelayId
from bot.ledger import DeliveryKey, Part
from bot.matrix.delayed import (
    CAPABILITY,
    FEATURE,
    DelayedEvents,
    DelayedEventsUnsupported,
    DelayedRequestFailed,
    DelayTooLong,
    SentAtOnce,
    TooManyDelayedEvents,
)
from bot.retry import is_rate_limited, is_transient
from bot.scenario import ScenarioError, load_scenario_text
from bot.scenario.schema import scenario_schema
from bot.store import PlannedDispatch, Store
from bot.store.delayed import DelayedStoreError

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SECRET = "syd_ThisIsTheSecretDelayId"

SCENARIO = """\
version: 1
id: fs
title: FS
start: 2026-12-05T17:00:00Z
{failsafe}cities:
  - id: north
    name: North
    timezone: Europe/Berlin
    rooms: ["!north:example.org"]
stages:
  - id: go
    at: 0m
    text: Go
"""


def k(
    city: str = "north", stage: str = "go", room: str = "!r1:x", part: Part = Part.TEXT
) -> DeliveryKey:
    return DeliveryKey(1, "fs", city, stage, room, part)


# -- the scenario key -----------------------------------------------------------------


def test_failsafe_is_off_by_default_and_reads_server_and_after() -> None:
    off = load_scenario_text(SCENARIO.format(failsafe=""))
    assert off.failsafe.server is False and off.failsafe.after == 2 * MIN
    on = load_scenario_text(SCENARIO.format(failsafe="failsafe: {server: true, after: 90s}\n"))
    assert on.failsafe.server is True and on.failsafe.after == timedelta(seconds=90)
    schema = scenario_schema()
    assert schema["properties"]["failsafe"]["default"] == {"server": False, "after": "2m"}
    assert "failsafe" not in schema["required"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "failsafe: {after: 2h}\n",
            "s.yaml:5:19: failsafe.after: must be between 10s and 1h (not 2h)",
        ),
        (
            "failsafe: {sever: true}\n",
            "s.yaml:5:12: failsafe: unknown key 'sever' (did you mean 'server'?)",
        ),
        ("failsafe: true\n", "s.yaml:5:11: failsafe: expected a mapping of keys"),
    ],
)
def test_failsafe_errors_are_positioned(line: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(SCENARIO.format(failsafe=line), "s.yaml")
    assert [str(d) for d in caught.value.diagnostics] == [expected]


# -- the crew check -------------------------------------------------------------------


def test_after_must_outlast_every_standby_and_the_fanout() -> None:
    grace = timedelta(seconds=20)
    assert check_after(timedelta(seconds=10), crew_size=1, grace=grace) is None
    assert check_after(timedelta(seconds=41), crew_size=3, grace=grace) is None
    assert check_after(timedelta(seconds=40), crew_size=3, grace=grace) == (
        "failsafe.after (40s) must be longer than 2 standby × grace 20s = 40s"
    )
    assert check_after(2 * MIN, crew_size=2, grace=grace, fanout=2 * MIN) == (
        "failsafe.after (2m) must be longer than 1 standby × grace 20s + the fan-out "
        "estimate 2m = 140s"
    )


# -- planning -------------------------------------------------------------------------


def targets(*offsets: timedelta) -> list[Target]:
    return [
        Target(k(stage=f"s{n}", part=part), T0 + off)
        for n, off in enumerate(offsets)
        for part in (Part.TEXT, Part.LOCATION)
    ]


def test_each_delivery_is_due_at_instant_plus_after_and_scheduled_at_arming() -> None:
    plan = plan_failsafe(
        targets(10 * MIN, 20 * MIN), after=2 * MIN, now=T0, limits=Limits(timedelta(hours=24), 100)
    )
    assert plan.problems == () and plan.later == () and plan.uncovered == ()
    assert [(i.key.stage_id, i.key.part, i.due) for i in plan.now] == [
        ("s0", Part.TEXT, T0 + 12 * MIN),
        ("s0", Part.LOCATION, T0 + 12 * MIN + PART_STAGGER),  # the pin after the text
        ("s1", Part.TEXT, T0 + 22 * MIN),
        ("s1", Part.LOCATION, T0 + 22 * MIN + PART_STAGGER),
    ]
    assert all(i.schedule_at == T0 for i in plan.now)
    assert plan.needed == 4 and plan.peak == 4
    # The delay is computed when each request goes out, not at planning.
    assert plan.now[0].delay_ms(T0) == 12 * 60_000
    assert plan.now[0].delay_ms(T0 + timedelta(seconds=5)) == 12 * 60_000 - 5_000


def test_a_delay_over_the_servers_maximum_is_scheduled_later_and_said() -> None:
    limits = Limits(timedelta(hours=1), 100)
    plan = plan_failsafe(
        targets(30 * MIN, timedelta(hours=3)), after=2 * MIN, now=T0, limits=limits
    )
    assert [i.key.stage_id for i in plan.now] == ["s0", "s0"]
    (later, _) = plan.later
    assert later.due == T0 + timedelta(hours=3, minutes=2)
    # As early as the maximum allows, plus a minute's slack; well before the instant.
    assert later.schedule_at == later.due - timedelta(hours=1) + MIN
    assert later.delay_ms(later.schedule_at) < 3_600_000
    # Even with the bot dead (nothing cancelled), the first fires before the second exists.
    assert plan.peak == 2
    ok, lines = arm_lines(plan, limits, existing=0)
    assert ok
    assert (
        lines[0] == "failsafe: needs 4 delayed events (2 at once); this server allows 100 per user"
    )
    assert lines[1].startswith("failsafe: 2 are scheduled later (the server's maximum delay)")


def test_after_longer_than_the_maximum_allows_is_refused() -> None:
    plan = plan_failsafe(targets(MIN * 30), after=50 * MIN, now=T0, limits=Limits(50 * MIN, 100))
    ok, lines = arm_lines(plan, Limits(50 * MIN, 100), existing=0)
    assert not ok
    assert "leaves no time to schedule before the instant" in lines[-1]


def test_deliveries_too_soon_are_left_to_the_bot() -> None:
    plan = plan_failsafe(
        targets(-2 * MIN, 10 * MIN), after=2 * MIN, now=T0, limits=Limits(None, None)
    )
    assert [t.key.stage_id for t in plan.uncovered] == ["s0", "s0"]
    assert plan.needed == 2


def test_arm_counts_against_the_per_user_cap_including_existing_ones() -> None:
    limits = Limits(timedelta(hours=24), 100)
    plan = plan_failsafe(
        [Target(k(room=f"!r{n}:x"), T0 + 10 * MIN) for n in range(24)],
        after=2 * MIN,
        now=T0,
        limits=limits,
    )
    ok, lines = arm_lines(plan, limits, existing=3)
    assert ok
    assert lines == [
        "failsafe: needs 24 delayed events (24 at once); this server allows 100 per user, "
        "3 already scheduled"
    ]
    ok, lines = arm_lines(plan, limits, existing=80)
    assert not ok
    assert lines[-1] == (
        "failsafe refused: 104 delayed events at once is over the cap of 100: raise "
        "experimental_features.msc4140_max_delayed_events_per_user on the homeserver, "
        "or arm without the failsafe"
    )


def test_txn_ids_never_collide_with_the_real_send_and_change_per_generation() -> None:
    key = k()
    first, second = delayed_txn_id(key, 1), delayed_txn_id(key, 2)
    assert first == delayed_txn_id(key, 1)  # deterministic: a retry reuses it
    assert len({key.txn_id(), first, second}) == 3
    assert delayed_txn_id(k(room="!r2:x"), 1) != first


def test_content_carries_the_same_dispatch_tag_as_the_real_send() -> None:
    content = delayed_content({"msgtype": "m.text", "body": "Go"}, k())
    assert content == {"msgtype": "m.text", "body": "Go", DISPATCH_KEY: k().content_tag()}


# -- steering -------------------------------------------------------------------------


def rows() -> list[DelayedRow]:
    def row(city: str, stage: str, state: DelayedState) -> DelayedRow:
        return DelayedRow(k(city, stage), 1, state, T0 + 12 * MIN, T0 + 10 * MIN)

    return [
        row("north", "call", DelayedState.CANCELLED),  # already released
        row("north", "go", DelayedState.SCHEDULED),
        row("south", "go", DelayedState.SCHEDULED),
        row("south", "later", DelayedState.PENDING),
    ]


def test_hold_abort_disarm_cancel_what_may_still_fire_in_their_cities() -> None:
    hold = steer(rows(), Steer.HOLD, cities=["south"])
    assert [(r.key.city_id, r.key.stage_id) for r in hold.cancel] == [
        ("south", "go"),
        ("south", "later"),
    ]
    assert hold.replace == ()
    assert len(steer(rows(), Steer.ABORT).cancel) == 3
    assert len(steer(rows(), Steer.DISARM).cancel) == 3
    assert steer(rows(), Steer.ABORT, cities=["north"], stages=["call"]).cancel == ()


def test_a_city_or_stage_named_reaches_its_pods_and_role_variants() -> None:
    # Dispatch rows of a scenario with pods and roles: lane ``hk/mk``, unit ``spot@front``.
    live = DelayedState.PENDING
    pod_rows = [
        DelayedRow(k(city, stage), 1, live, T0 + 12 * MIN, T0 + 10 * MIN)
        for city, stage in (("hk/mk", "spot@front"), ("hk/cw", "spot@front"), ("hk/cw", "go"))
    ]
    held = steer(pod_rows, Steer.HOLD, cities=["hk"])
    assert len(held.cancel) == 3
    one = steer(pod_rows, Steer.HOLD, cities=["hk/cw"], stages=["spot"])
    assert [(r.key.city_id, r.key.stage_id) for r in one.cancel] == [("hk/cw", "spot@front")]
    assert steer(pod_rows, Steer.ABORT, cities=["hk/st"]).cancel == ()


def test_delay_and_redirect_replace_with_a_new_generation() -> None:
    delayed = steer(rows(), Steer.DELAY, cities=["north"], shift=5 * MIN)
    assert [r.key.stage_id for r in delayed.cancel] == ["go"]
    (moved,) = delayed.replace
    assert moved.generation == 2 and moved.due == T0 + 17 * MIN and moved.instant == T0 + 15 * MIN
    redirected = steer(rows(), Steer.REDIRECT, cities=["south"])
    assert [(r.generation, r.due) for r in redirected.replace] == [(2, T0 + 12 * MIN)] * 2


def test_after_release_and_purge_pick_the_live_rows() -> None:
    assert [r.key.city_id for r in after_release(rows(), k("south", "go"))] == ["south"]
    assert after_release(rows(), k("north", "call")) == ()
    assert len(blocking_purge(rows())) == 3


def test_transitions_never_leave_sent_or_reschedule_without_a_new_generation() -> None:
    assert not any(delayed_may(DelayedState.SENT, s) for s in DelayedState)
    assert not delayed_may(DelayedState.CANCELLED, DelayedState.SCHEDULED)
    assert delayed_may(DelayedState.CANCELLED, DelayedState.PENDING)
    assert delayed_may(DelayedState.SCHEDULING, DelayedState.SENT)  # the server sent it at once


# -- the secret -----------------------------------------------------------------------


def test_a_delay_id_never_shows_in_text_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    delay_id = DelayId(SECRET)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("scheduled %s %r", delay_id, delay_id)
        logging.getLogger("test").info(f"scheduled {delay_id} {[delay_id]}")
    assert SECRET not in caplog.text and "DelayId(<secret>)" in caplog.text
    assert SECRET not in str(delay_id) + repr(delay_id) + f"{delay_id:>40}"
    assert delay_id.reveal() == SECRET and delay_id == DelayId(SECRET)


# -- the table ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "blossom.db")
    try:
        yield s
    finally:
        await s.close()


async def make_run(store: Store) -> int:
    return await store.runs.create(
        scenario_id="fs",
        source_path="/scenarios/fs.yaml",
        source_sha256="0" * 64,
        armed_by="@org:example.org",
        control_room="!control:example.org",
        now=T0,
        dispatches=[PlannedDispatch("north", "go", 0, T0 + 10 * MIN)],
    )


async def test_the_table_walks_a_delayed_event_through_its_life(store: Store) -> None:
    run_id = await make_run(store)
    key = DeliveryKey(run_id, "fs", "north", "go", "!r1:x", Part.TEXT)
    plan = plan_failsafe(
        [Target(key, T0 + 10 * MIN)], after=2 * MIN, now=T0, limits=Limits(None, None)
    )
    table = store.delayed
    assert await table.add(plan.now, T0) == 1
    (due,) = await table.due_to_schedule(T0)
    assert due.row.state is DelayedState.PENDING and due.txn_id == delayed_txn_id(key, 1)
    assert await table.begin_scheduling(key, T0) == due.txn_id
    # A crash mid-request: the same txn id again, so the server's cache answers.
    assert await table.begin_scheduling(key, T0) == due.txn_id
    await table.scheduled(key, DelayId(SECRET), T0)
    assert await table.delay_id(key) == DelayId(SECRET)
    assert await table.live_counts(run_id) == {("north", "go"): 1}
    with pytest.raises(DelayedStoreError) as refused:
        await table.scheduled(key, DelayId(SECRET), T0)
    assert SECRET not in str(refused.value)
    with pytest.raises(DelayedStoreError, match="cancel it first"):
        await table.replace(steer([due.row], Steer.REDIRECT).replace[0], T0, T0)

    await table.mark(key, DelayedState.CANCELLED, T0)
    assert await table.delay_id(key) is None  # forgotten once it cannot fire
    assert await table.known_ids() == set()
    (moved,) = steer([due.row], Steer.DELAY, shift=5 * MIN).replace
    replaced = await table.replace(moved, T0, T0)
    assert replaced.row.generation == 2 and replaced.row.state is DelayedState.PENDING
    assert replaced.txn_id == delayed_txn_id(key, 2) and replaced.row.due == T0 + 17 * MIN


async def test_purge_removes_the_rows_with_their_run(store: Store, tmp_path: Path) -> None:
    run_id = await make_run(store)
    key = DeliveryKey(run_id, "fs", "north", "go", "!r1:x", Part.TEXT)
    plan = plan_failsafe(
        [Target(key, T0 + 10 * MIN)], after=2 * MIN, now=T0, limits=Limits(None, None)
    )
    table = store.delayed
    await table.add(plan.now, T0)
    await table.begin_scheduling(key, T0)
    await table.scheduled(key, DelayId(SECRET), T0)
    assert await table.live_of_scenario("fs") == []  # armed: not purgeable anyway
    await store.runs.end(run_id, "disarmed", T0)
    (left,) = await table.live_of_scenario("fs")  # a cancel that failed: cancel first
    assert left.row.key == key
    await table.mark(key, DelayedState.CANCELLED, T0)
    assert await store.purge("fs") == 1
    assert await table.rows(run_id) == []
    # Nothing of the secret is left in the file or its WAL (purge compacts).
    for path in tmp_path.glob("blossom.db*"):  # noqa: ASYNC240 (a few local files)
        assert SECRET.encode() not in path.read_bytes()


# -- the client's rules, against a scripted homeserver ----------------------------------


class _Reply:
    def __init__(self, status: int, body: object) -> None:
        self.status = status
        self._text = json.dumps(body)

    async def text(self) -> str:
        return self._text

    def release(self) -> None:
        pass


class ScriptedServer:
    """Answers like Synapse would, as the test sets it; records every request."""

    def __init__(self, *, advertised: bool = True, max_delay_ms: int = 3_600_000) -> None:
        self.access_token = "token"
        self.advertised = advertised
        self.max_delay_ms = max_delay_ms
        self.put_reply: tuple[int, object] = (200, {"delay_id": SECRET})
        self.requests: list[tuple[str, str]] = []

    async def send(self, method: str, path: str, data: object, headers: object) -> _Reply:
        self.requests.append((method, path))
        if path.endswith("/versions"):
            return _Reply(200, {"versions": [], "unstable_features": {FEATURE: self.advertised}})
        if path.endswith("/capabilities"):
            limits = {"max_delay_ms": self.max_delay_ms, "max_scheduled": 100}
            return _Reply(200, {"capabilities": {CAPABILITY: limits}})
        return _Reply(*self.put_reply)

    def puts(self) -> int:
        return sum(1 for method, _ in self.requests if method == "PUT")


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def schedule(delayed: DelayedEvents, delay_ms: int = 60_000) -> DelayId:
    return await delayed.schedule(
        "!r:x", "m.room.message", {"body": "Go"}, txn_id="blossom-delayed-1", delay_ms=delay_ms
    )


async def test_the_flag_is_checked_again_once_stale_and_a_withdrawn_one_refuses() -> None:
    server, clock = ScriptedServer(), FakeMonotonic()
    delayed = DelayedEvents(server, fresh_for_s=30, monotonic=clock)  # type: ignore[arg-type]
    assert await schedule(delayed) == DelayId(SECRET)
    assert await schedule(delayed) == DelayId(SECRET)
    assert [p for _, p in server.requests].count("/_matrix/client/versions") == 1  # fresh
    clock.now += 31
    server.advertised = False  # the operator turned it off and restarted Synapse
    with pytest.raises(DelayedEventsUnsupported):
        await schedule(delayed)
    assert server.puts() == 2  # the refused one was never asked for


async def test_a_server_that_sends_at_once_is_caught_and_never_trusted_again() -> None:
    server = ScriptedServer()
    delayed = DelayedEvents(server)  # type: ignore[arg-type]
    server.put_reply = (200, {"event_id": "$sent-now"})
    with pytest.raises(SentAtOnce) as caught:
        await schedule(delayed)
    assert caught.value.event_id == "$sent-now"
    server.put_reply = (200, {"delay_id": SECRET})
    await schedule(delayed)
    versions = [p for _, p in server.requests].count("/_matrix/client/versions")
    assert versions == 2  # asked again before the next scheduling


@pytest.mark.parametrize(
    ("reply", "raised", "retryable"),
    [
        (
            (
                403,
                {"errcode": "M_FORBIDDEN", "error": "Sending delayed events has been disallowed"},
            ),
            DelayedEventsUnsupported,
            False,
        ),
        (
            (
                400,
                {
                    "errcode": "ORG.MATRIX.MSC4140_DELAY_TOO_LARGE",
                    "error": "The requested delay (9ms) exceeds the allowed maximum (5ms)",
                },
            ),
            DelayTooLong,
            False,
        ),
        (
            (
                429,
                {
                    "errcode": "M_LIMIT_EXCEEDED",
                    "error": "The maximum number of delayed events has been reached.",
                    "retry_after_ms": None,
                },
            ),
            TooManyDelayedEvents,
            False,
        ),
        (
            (
                429,
                {
                    "errcode": "M_LIMIT_EXCEEDED",
                    "error": "Too Many Requests",
                    "retry_after_ms": 500,
                },
            ),
            DelayedRequestFailed,
            True,
        ),
        ((502, {}), DelayedRequestFailed, True),
        (
            (404, {"errcode": "M_NOT_FOUND", "error": "Could not find room_version"}),
            DelayedRequestFailed,
            False,
        ),
    ],
)
async def test_answers_map_to_refusals_or_the_retry_policys_terms(
    reply: tuple[int, object], raised: type[Exception], retryable: bool
) -> None:
    server = ScriptedServer()
    server.put_reply = reply
    with pytest.raises(raised) as caught:
        await schedule(DelayedEvents(server))  # type: ignore[arg-type]
    failure = getattr(caught.value, "failure", None)
    assert (
        failure is not None and (is_rate_limited(failure) or is_transient(failure))
    ) is retryable
    if isinstance(caught.value, DelayTooLong):
        assert caught.value.max_delay_ms == 5  # read from the server's words


async def test_a_delay_over_the_advertised_maximum_is_refused_without_asking() -> None:
    server = ScriptedServer(max_delay_ms=60_000)
    with pytest.raises(DelayTooLong):
        await schedule(DelayedEvents(server), delay_ms=60_001)  # type: ignore[arg-type]
    assert server.puts() == 0


# -- docs/crew.md, "The switch" -------------------------------------------------------

DOC = Path(__file__).parent.parent / "docs" / "crew.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_docs_examples_are_what_the_code_reads_and_says() -> None:
    (scenario_block,) = [b for b in _yaml_blocks() if b.startswith("failsafe:")]
    loaded = load_scenario_text(SCENARIO.format(failsafe=scenario_block))
    assert loaded.failsafe.server is True and loaded.failsafe.after == 2 * MIN
    (synapse_block,) = [b for b in _yaml_blocks() if "max_event_delay_duration" in b]
    # The same keys the embedded homeserver's delayed-events tests run with.
    assert yaml.safe_load(synapse_block) == delayed_events_config("24h", 200)
    limits = Limits(timedelta(hours=24), 100)
    plan = plan_failsafe(
        [Target(k(room=f"!r{n}:x"), T0 + 10 * MIN) for n in range(24)],
        after=2 * MIN,
        now=T0,
        limits=limits,
    )
    quoted = arm_lines(plan, limits, existing=0)[1][0].removeprefix("failsafe: ")
    assert f'"{quoted}"' in " ".join(DOC.read_text().split())
