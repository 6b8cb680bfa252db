"""`blossom demo`: the whole staged release, for real, on a throwaway homeserver.

1. A Synapse starts on a free loopback port in a temporary directory (SQLite,
   registration by shared secret). Message rate limits stay at Synapse's
   defaults; the bot is exempted through the admin API, as an operator would.
2. The bot, an organiser and two participants per city are registered. The
   organiser creates the control room and invites the bot; in each city the
   first participant creates the city room, invites the second, and opts the
   room in by inviting the bot (a room moderator's invite).
3. The real bot runs in this process through :func:`bot.app.run_bot`, the code
   path of `blossom run`, with a config file written for it. Only its clock is
   scaled (:class:`bot.clock.ScaledClock`): ``--speed 30`` plays the scenario's
   half hour in a minute.
4. A copy of ``scenarios/demo.yaml`` with the real room ids and T0 a short time
   ahead goes into the bot's scenarios directory; the organiser sends ``!arm``.
5. Participants' clients receive the stages; at the staging point they check in
   with ``!here``, which opens the quorum gate. Should a gate stay shut (too few
   check-ins in time), the organiser releases it with ``!release`` after a short
   wait, as on a real day.
6. Every city room's timeline is read back and each dispatch counted by its
   ``org.blossom.dispatch`` tag: all must be there exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot import DISPATCH_KEY
from bot.app import run_bot
from bot.clock import ScaledClock
from bot.config import load_config
from bot.devtools.demo.clients import DemoClient
from bot.devtools.demo.state import (
    TEXT,
    CityState,
    DemoState,
    Receipt,
    Summary,
    checkin_stages,
    count_room,
    expected_dispatches,
    summarise,
)
from bot.devtools.demo.world import (
    BOT_LOCALPART,
    DEMO_SCENARIO,
    ORGANISER_LOCALPART,
    PEOPLE,
    DemoHomeserver,
    bot_config,
    city_ids,
    demo_scenario,
    first_offset,
    load_base,
    write_yaml,
)
from bot.devtools.homeserver import RegisteredUser
from bot.scenario import Scenario, load_scenario_file
from bot.scenario.svg import plan_svg

log = logging.getLogger(__name__)

# Real seconds from `!arm` to the first stage: enough for the bot to arm and
# prepare, short enough that nobody waits.
ARM_LEAD_S = 4.0
# Real seconds before each instant at which the bot prepares (renders, creates
# ledger rows); converted to the scaled clock for the config.
PREPARE_REAL_S = 1.5
# A gated stage not seen this many real seconds after its instant is released by
# the organiser with !release.
GATE_GRACE_S = 3.0
# After the last instant, how long to wait for stragglers before giving up.
FINISH_GRACE_S = 30.0
# Participants "arrive" at the staging point this long (real seconds) after its message.
ARRIVAL_S = (0.3, 1.0)


@dataclass
class DemoOptions:
    speed: float = 30.0
    cities: int = 3
    keep: bool = False
    scenario: Path = DEMO_SCENARIO
    workdir: Path | None = None
    on_summary: Callable[[Summary], None] | None = None
    """Called with the summary as soon as it is known (before ``keep`` holds on)."""
    on_keep: Callable[[dict[str, str]], None] | None = None
    """Called with the address and logins when ``keep`` holds the homeserver open."""


@dataclass
class _Person:
    user: RegisteredUser
    client: DemoClient
    city_id: str = ""
    here_event: str | None = None


@dataclass
class _Run:
    """Everything the demo started, so clean-up can stop exactly that."""

    workdir: Path
    hs: DemoHomeserver | None = None
    people: list[_Person] = field(default_factory=list)
    bot_task: asyncio.Task[None] | None = None
    bot_stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send every log record (the bot's, nio's, ours) to ``path``, nothing to the
    terminal, for the duration; then restore the logging setup."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    quiet = ("nio", "aiohttp", "apscheduler", "peewee", "aiosqlite", "asyncio")
    saved_quiet = {name: logging.getLogger(name).level for name in quiet}
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers = saved[1]
        root.setLevel(saved[0])
        for name, level in saved_quiet.items():
            logging.getLogger(name).setLevel(level)
        handler.close()


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def run_demo(options: DemoOptions, state: DemoState) -> Summary:
    """Run the demo end to end; always stops what it started."""
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="blossom-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    run = _Run(workdir)
    state.workdir = str(workdir)
    state.emit("setup", f"working directory {workdir} (logs go to {logs})")
    with _log_to(logs / "demo.log"):
        try:
            summary = await _play(options, state, run)
            if options.on_summary is not None:
                options.on_summary(summary)
            if options.keep:
                await _hold_open(options, state, run)
            return summary
        finally:
            await _clean_up(run)
            _prune(workdir)


async def _play(options: DemoOptions, state: DemoState, run: _Run) -> Summary:
    started = time.monotonic()
    state.speed = options.speed
    state.started_wall = datetime.now(UTC)
    base = load_base(options.scenario)
    cities = city_ids(base, options.cities)

    # -- the homeserver ------------------------------------------------------------
    state.set_phase("Starting a throwaway Synapse homeserver on 127.0.0.1")
    hs = DemoHomeserver(run.workdir / "homeserver")
    run.hs = hs
    t = time.monotonic()
    await hs.start()
    state.homeserver_url = hs.url
    state.emit("setup", f"Synapse is up at {hs.url} ({time.monotonic() - t:.1f} s)")

    # -- accounts ----------------------------------------------------------------------
    state.set_phase("Registering the bot, the organiser and the participants")
    bot_user = await hs.register(BOT_LOCALPART)
    await hs.exempt_from_rate_limits(bot_user.user_id)
    state.emit(
        "setup",
        f"{bot_user.user_id}: registered, message rate limit lifted "
        "(admin API override_ratelimit, as an operator would)",
    )
    organiser = await _person(hs, ORGANISER_LOCALPART, run)
    for (city_id, city_name), names in zip(cities, PEOPLE, strict=False):
        city = CityState(city_id, city_name, "")
        for name in names:
            person = await _person(hs, f"{name}-{city_id}", run)
            person.city_id = city_id
            city.participants.append(person.user.localpart)
        state.cities.append(city)
    state.emit(
        "setup",
        f"{organiser.user.user_id} and {sum(len(c.participants) for c in state.cities)} "
        f"participants in {len(state.cities)} cities registered and logged in",
    )

    # -- rooms, made the real way ---------------------------------------------------
    state.set_phase("Creating the control room and the city rooms")
    control = await organiser.client.create_room(
        "Blossom demo: control room", invite=[bot_user.user_id]
    )
    rooms: dict[str, str] = {}
    for city in state.cities:
        moderator, *others = [p for p in run.people if p.city_id == city.id]
        room = await moderator.client.create_room(
            f"Blossom demo: {city.name}", invite=[p.user.user_id for p in others]
        )
        for other in others:
            await other.client.join(room)
        rooms[city.id] = city.room_id = room
    state.emit("setup", f"control room {control}; city rooms " + ", ".join(rooms.values()))

    # The organisers' file lists the rooms before the rooms opt in (the bot only
    # accepts a moderator's invite to a room some scenario lists). T0 is set for
    # real just before arming.
    bot_dir = run.workdir / "bot"
    scenario_path = bot_dir / "scenarios" / "demo.yaml"
    clock = ScaledClock(datetime.now(UTC), options.speed)
    write_yaml(
        scenario_path,
        demo_scenario(base, cities=len(state.cities), rooms=rooms, start=clock.now()),
    )
    config_path = bot_dir / "config.yaml"
    write_yaml(
        config_path,
        bot_config(
            homeserver=hs.url,
            user_id=bot_user.user_id,
            password=bot_user.password,
            control_room=control,
            prepare_seconds=min(300.0, PREPARE_REAL_S * options.speed),
        ),
        private=True,
    )

    # -- the bot -------------------------------------------------------------------------
    state.set_phase("Starting the bot (blossom run's code path) and opting the rooms in")
    run.bot_task = asyncio.create_task(
        run_bot(load_config(config_path), clock, run.bot_stop), name="bot"
    )
    await _wait_bot(run, organiser.client.wait_member(control, bot_user.user_id, what="the bot"))
    state.emit("setup", "the bot joined the control room (invited by the organiser)")
    for city in state.cities:
        moderator = next(p for p in run.people if p.city_id == city.id)
        await moderator.client.invite(city.room_id, bot_user.user_id)
    for city in state.cities:
        moderator = next(p for p in run.people if p.city_id == city.id)
        await _wait_bot(
            run,
            moderator.client.wait_member(
                city.room_id, bot_user.user_id, what=f"the bot ({city.name})"
            ),
        )
    state.emit("setup", "every city room opted in: its moderator invited the bot, the bot joined")

    # -- arm -------------------------------------------------------------------------------
    lead = timedelta(seconds=ARM_LEAD_S * options.speed)
    start = clock.now() - first_offset(load_scenario_file(scenario_path)) + lead
    # On a whole minute of the scenario's clock, so "{time:0m}" reads 17:05, not 17:04:37.
    start = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    data = demo_scenario(base, cities=len(state.cities), rooms=rooms, start=start)
    write_yaml(scenario_path, data)
    scenario = load_scenario_file(scenario_path)
    state.scenario_id = scenario.id
    for city in state.cities:
        city.timezone = scenario.city(city.id).timezone
    state.expected = expected_dispatches(scenario, clock.to_wall)
    svg_path = run.workdir / "plan.svg"
    svg_path.write_text(plan_svg(scenario), encoding="utf-8")
    state.emit("setup", f"the plan, drawn: {svg_path}")

    replies: dict[str, asyncio.Future[str]] = {}
    _listen(state, run, organiser, control, bot_user.user_id, replies, scenario)
    for person in run.people:
        person.client.start()
    await asyncio.gather(*(p.client.synced.wait() for p in run.people))

    state.set_phase(f"Organiser: !arm {scenario.id}")
    reply = await _command(organiser, control, f"!arm {scenario.id}", replies)
    state.emit("organiser", f"!arm {scenario.id} → {_first_line(reply)}")
    if not reply.startswith("Armed"):
        raise RuntimeError(f"the bot did not arm the scenario: {_first_line(reply)}")

    # -- the action ------------------------------------------------------------------------
    await _watch(state, run, organiser, control, scenario, replies, clock)

    # -- the check -------------------------------------------------------------------------
    state.set_phase("Counting every dispatch in every city room")
    room_counts: dict[str, Counter[tuple[str, str]]] = {}
    for city in state.cities:
        moderator = next(p for p in run.people if p.city_id == city.id)
        events = await moderator.client.timeline(city.room_id)
        room_counts[city.id] = count_room(
            (e.get("content") or {} for e in events if e.get("sender") == bot_user.user_id),
            DISPATCH_KEY,
        )
    summary = summarise(
        state,
        room_counts,
        elapsed_s=time.monotonic() - started,
        workdir=str(run.workdir),
        logs={
            "demo and bot": str(run.workdir / "logs" / "demo.log"),
            "homeserver": str(run.workdir / "logs" / "homeserver.log"),
        },
        plan_svg=str(svg_path),
    )
    (run.workdir / "summary.json").write_text(json.dumps(summary.as_json(), indent=2) + "\n")
    state.set_phase("Done" if summary.ok else "Done, with problems")
    return summary


async def _person(hs: DemoHomeserver, localpart: str, run: _Run) -> _Person:
    user = await hs.register(localpart, secrets.token_urlsafe(12))
    client = DemoClient(hs.url, user.user_id, localpart)
    person = _Person(user, client)
    run.people.append(person)  # before login: clean-up closes it whatever happens
    await client.login(user.password)
    return person


async def _wait_bot(run: _Run, waiting: Any) -> None:
    """Wait for something the bot should do; fail at once if the bot died."""
    assert run.bot_task is not None
    task = asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait({task, run.bot_task}, return_when=asyncio.FIRST_COMPLETED)
    if run.bot_task in done and task not in done:
        task.cancel()
        exc = run.bot_task.exception()
        raise RuntimeError(f"the bot stopped: {exc!r}") from exc
    task.result()


def _listen(
    state: DemoState,
    run: _Run,
    organiser: _Person,
    control: str,
    bot_id: str,
    replies: dict[str, asyncio.Future[str]],
    scenario: Scenario,
) -> None:
    """Wire every client's sync to the state: stage receipts, check-ins, notices."""
    check_in_after = checkin_stages(scenario)

    def organiser_event(room_id: str, event: dict[str, Any]) -> None:
        if room_id != control or event.get("sender") != bot_id:
            return
        content = event.get("content") or {}
        body = str(content.get("body", ""))
        if event.get("type") != "m.room.message" or not body:
            return
        relates = (content.get("m.relates_to") or {}).get("m.in_reply_to") or {}
        future = replies.get(str(relates.get("event_id", "")))
        if future is not None and not future.done():
            future.set_result(body)
            return
        line = _first_line(body)
        state.notices.append(line)
        state.emit("notice", line)

    organiser.client.on_event = organiser_event

    for person in run.people:
        if not person.city_id:
            continue
        city = state.city(person.city_id)

        def participant_event(
            room_id: str, event: dict[str, Any], person: _Person = person, city: CityState = city
        ) -> None:
            if room_id != city.room_id or event.get("sender") != bot_id:
                return
            content = event.get("content") or {}
            if event.get("type") == "m.reaction":
                rel = content.get("m.relates_to") or {}
                if person.here_event and rel.get("event_id") == person.here_event:
                    city.checkins[person.user.localpart] = "acknowledged"
                    state.emit(
                        "checkin", f"{city.id}: the bot acknowledged {person.user.localpart}"
                    )
                return
            tag = content.get(DISPATCH_KEY)
            if event.get("type") != "m.room.message" or not isinstance(tag, dict):
                return
            stage_id, part = str(tag.get("stage")), str(tag.get("part"))
            expected = state.expected_for(city.id, stage_id)
            arrived = datetime.now(UTC)
            lateness = (arrived - expected.due_wall).total_seconds() if expected else 0.0
            receipt = Receipt(
                city.id,
                person.user.localpart,
                stage_id,
                part,
                str(content.get("body", "")),
                arrived,
                lateness,
            )
            if state.record(receipt):
                state.emit(
                    "receipt",
                    f"{city.id:<10} {person.user.localpart:<16} {stage_id}/{part:<8} "
                    f"{lateness:+.2f}s  {_first_line(receipt.body, 90)}",
                )
            if part == TEXT and stage_id in check_in_after and person.here_event is None:
                person.here_event = ""  # once
                task = asyncio.create_task(_check_in(state, person, city))
                run.tasks.add(task)
                task.add_done_callback(run.tasks.discard)

        person.client.on_event = participant_event


async def _check_in(state: DemoState, person: _Person, city: CityState) -> None:
    await asyncio.sleep(random.uniform(*ARRIVAL_S))  # walking to the staging point
    person.here_event = await person.client.send_text(city.room_id, "!here")
    city.checkins.setdefault(person.user.localpart, "sent")
    state.emit("checkin", f"{city.id}: {person.user.localpart} checked in with !here")


async def _command(
    person: _Person,
    room_id: str,
    text: str,
    replies: dict[str, asyncio.Future[str]],
    within_s: float = 30,
) -> str:
    """Send a control-room command; return the bot's reply to it."""
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    event_id = await person.client.send_text(room_id, text)
    replies[event_id] = future
    try:
        return await asyncio.wait_for(future, within_s)
    finally:
        replies.pop(event_id, None)


async def _watch(
    state: DemoState,
    run: _Run,
    organiser: _Person,
    control: str,
    scenario: Scenario,
    replies: dict[str, asyncio.Future[str]],
    clock: ScaledClock,
) -> None:
    """Follow the action until every participant has every stage (or time is up);
    release a gate that stays shut, as the organiser would."""
    last_due = max(e.due_wall for e in state.expected)
    deadline = last_due.timestamp() + FINISH_GRACE_S
    nudged: set[tuple[str, str]] = set()
    while not state.all_received():
        now = datetime.now(UTC)
        if now.timestamp() > deadline:
            state.emit("problem", "time is up: some stages never arrived (see the summary)")
            return
        upcoming = [e for e in state.expected if e.due_wall > now]
        if upcoming:
            nxt = min(upcoming, key=lambda e: e.due_wall)
            wait = (nxt.due_wall - now).total_seconds()
            state.phase = (
                f"Scenario clock {clock.now():%H:%M:%S}Z (×{state.speed:g}) · "
                f"next: {nxt.stage_id} in {wait:.0f} s"
            )
        else:
            state.phase = f"Scenario clock {clock.now():%H:%M:%S}Z · waiting for the last messages"
        for e in state.expected:
            key = (e.city_id, e.stage_id)
            if not e.gated or key in nudged or state.received(e.city_id, e.stage_id):
                continue
            if (now - e.due_wall).total_seconds() > GATE_GRACE_S:
                nudged.add(key)
                text = f"!release {scenario.id} {e.stage_id} {e.city_id}"
                state.emit("organiser", f"{e.city_id}: gate still shut; {text}")
                state.city(e.city_id).released_by_organiser.add(e.stage_id)
                reply = await _command(organiser, control, text, replies)
                state.emit("organiser", f"{text} → {_first_line(reply)}")
        await asyncio.sleep(0.2)
    # The bot's last report (stage summary, "complete") follows the last send.
    await asyncio.sleep(1.0)


async def _hold_open(options: DemoOptions, state: DemoState, run: _Run) -> None:
    """``--keep``: leave the homeserver (and the bot) up until Ctrl-C."""
    assert run.hs is not None
    organiser = next(p for p in run.people if p.user.localpart == ORGANISER_LOCALPART)
    participant = next(p for p in run.people if p.city_id)
    info = {
        "homeserver": run.hs.url,
        "organiser": organiser.user.user_id,
        "organiser_password": organiser.user.password,
        "participant": participant.user.user_id,
        "participant_password": participant.user.password,
    }
    state.set_phase("Kept running: press Ctrl-C to stop the bot and the homeserver")
    if options.on_keep is not None:
        options.on_keep(info)
    await asyncio.Event().wait()  # until cancelled (Ctrl-C, SIGTERM)


async def _clean_up(run: _Run) -> None:
    """Stop the bot, the clients and the homeserver; each step runs even if one fails."""
    for task in list(run.tasks):
        task.cancel()
    if run.bot_task is not None:
        run.bot_stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(run.bot_task), 20)
        except (TimeoutError, asyncio.CancelledError):
            run.bot_task.cancel()
        except Exception as err:
            log.error("the bot failed: %r", err)
    for person in run.people:
        with contextlib.suppress(Exception):
            await person.client.close()
    if run.hs is not None:
        await run.hs.stop()
        with contextlib.suppress(OSError):
            shutil.copyfile(run.hs.log_path, run.workdir / "logs" / "homeserver.log")


def _prune(workdir: Path) -> None:
    """Keep the logs, the plan picture, the summary and the scenario copy; remove the
    databases, the encryption store and the files holding the throwaway passwords."""
    for name in ("homeserver", "bot/data", "bot/config.yaml"):
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
