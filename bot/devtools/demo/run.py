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

With ``--crew`` (docs/crew.md) a second bot runs beside the first, as a crew of
two on the same homeserver: each city's moderator invites the first, which
invites the second. Once the first stage has reached every city, the first bot
stops (a clean stop: its last heartbeat says so), and the second sends the
rest at each instant, gates included; each dispatch still arrives once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot import DISPATCH_KEY
from bot.app import run_bot
from bot.clock import ScaledClock
from bot.config import load_config
from bot.devtools.demo.action import (
    Person,
    Run,
    command,
    first_line,
    listen,
    wait_bot,
    watch,
)
from bot.devtools.demo.clients import DemoClient
from bot.devtools.demo.crew import failover, register_crew, start_crew
from bot.devtools.demo.state import (
    CityState,
    DemoState,
    Summary,
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
# --crew: real seconds a standby waits after an instant before it looks (the
# scenario's failover grace, converted to its clock; at most its 10 minutes).
GRACE_REAL_S = 3.0
# --crew: real seconds between heartbeats (on the scaled clock, 30 s of scenario
# time would be a fraction of a real second: two bots in one process, under
# load, would each count the other down and both send).
HEARTBEAT_REAL_S = 1.0


@dataclass
class DemoOptions:
    speed: float = 30.0
    cities: int = 3
    keep: bool = False
    scenario: Path = DEMO_SCENARIO
    workdir: Path | None = None
    crew: bool = False
    """A crew of two bots; the first stops after the first stage (docs/crew.md)."""
    on_summary: Callable[[Summary], None] | None = None
    """Called with the summary as soon as it is known (before ``keep`` holds on)."""
    on_keep: Callable[[dict[str, str]], None] | None = None
    """Called with the address and logins when ``keep`` holds the homeserver open."""


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


async def run_demo(options: DemoOptions, state: DemoState) -> Summary:
    """Run the demo end to end; always stops what it started."""
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="blossom-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    run = Run(workdir)
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


async def _play(options: DemoOptions, state: DemoState, run: Run) -> Summary:
    started = time.monotonic()
    state.speed = options.speed
    state.started_wall = datetime.now(UTC)
    base = load_base(options.scenario)
    hs = await _start_homeserver(state, run)
    bot_user, organiser = await _register(state, run, hs, city_ids(base, options.cities))
    crew_user = await register_crew(state, hs) if options.crew else None
    bots = [u for u in (bot_user, crew_user) if u is not None]
    control, rooms = await _create_rooms(state, run, organiser, bots)
    # The organisers' file lists the rooms before the rooms opt in (the bot only
    # accepts a moderator's invite to a room some scenario lists). T0 is set for
    # real just before arming.
    clock = ScaledClock(datetime.now(UTC), options.speed)
    scenario_path = run.workdir / "bot" / "scenarios" / "demo.yaml"
    write_yaml(
        scenario_path,
        demo_scenario(base, cities=len(state.cities), rooms=rooms, start=clock.now()),
    )
    config_path = _write_config(options, run, hs, bot_user, control, bots, "bot")
    await _start_bot(state, run, organiser, bot_user, control, config_path, clock)
    if crew_user is not None:

        def write_config(user: RegisteredUser, folder: str) -> Path:
            return _write_config(options, run, hs, user, control, bots, folder)

        await start_crew(write_config, state, run, organiser, bots, control, clock)
    scenario, svg_path = _schedule(options, state, run, base, rooms, scenario_path, clock)
    if crew_user is not None:  # the same file for both members (their digests match)
        shutil.copyfile(scenario_path, run.workdir / "bot2" / "scenarios" / "demo.yaml")

    replies: dict[str, asyncio.Future[str]] = {}
    listen(state, run, organiser, control, [u.user_id for u in bots], replies, scenario)
    for person in run.people:
        person.client.start()
    await asyncio.gather(*(p.client.synced.wait() for p in run.people))

    state.set_phase(f"Organiser: !arm {scenario.id}")
    reply = await command(organiser, control, f"!arm {scenario.id}", replies)
    state.emit("organiser", f"!arm {scenario.id} → {first_line(reply)}")
    if not reply.startswith("Armed"):
        raise RuntimeError(f"the bot did not arm the scenario: {first_line(reply)}")
    if crew_user is not None:
        stopping = asyncio.create_task(failover(state, run, scenario, bot_user, crew_user))
        run.tasks.add(stopping)
        stopping.add_done_callback(run.tasks.discard)

    await watch(state, run, organiser, control, scenario, replies, clock)

    state.set_phase("Counting every dispatch in every city room")
    summary = summarise(
        state,
        await _count_rooms(state, run, [u.user_id for u in bots]),
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


async def _start_homeserver(state: DemoState, run: Run) -> DemoHomeserver:
    state.set_phase("Starting a throwaway Synapse homeserver on 127.0.0.1")
    hs = DemoHomeserver(run.workdir / "homeserver")
    run.hs = hs
    t = time.monotonic()
    await hs.start()
    state.homeserver_url = hs.url
    state.emit("setup", f"Synapse is up at {hs.url} ({time.monotonic() - t:.1f} s)")
    return hs


async def _register(
    state: DemoState, run: Run, hs: DemoHomeserver, cities: list[tuple[str, str]]
) -> tuple[RegisteredUser, Person]:
    """The bot (exempt from rate limits), the organiser, the participants of each city."""
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
    return bot_user, organiser


async def _create_rooms(
    state: DemoState, run: Run, organiser: Person, bots: list[RegisteredUser]
) -> tuple[str, dict[str, str]]:
    """The control room (the bot invited; a crew's members with power 50, for
    their heartbeats) and a room per city, made the real way."""
    state.set_phase("Creating the control room and the city rooms")
    ids = [b.user_id for b in bots]
    control = await organiser.client.create_room(
        "Blossom demo: control room", invite=ids, power=ids if len(ids) > 1 else ()
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
    return control, rooms


def _write_config(
    options: DemoOptions,
    run: Run,
    hs: DemoHomeserver,
    bot_user: RegisteredUser,
    control: str,
    bots: list[RegisteredUser],
    folder: str,
) -> Path:
    config_path = run.workdir / folder / "config.yaml"
    crew = [b.user_id for b in bots] if len(bots) > 1 else None
    write_yaml(
        config_path,
        bot_config(
            homeserver=hs.url,
            user_id=bot_user.user_id,
            password=bot_user.password,
            control_room=control,
            prepare_seconds=min(300.0, PREPARE_REAL_S * options.speed),
            crew=crew,
            heartbeat_seconds=min(600.0, max(30.0, HEARTBEAT_REAL_S * options.speed)),
        ),
        private=True,
    )
    return config_path


async def _start_bot(
    state: DemoState,
    run: Run,
    organiser: Person,
    bot_user: RegisteredUser,
    control: str,
    config_path: Path,
    clock: ScaledClock,
) -> None:
    """The bot on ``blossom run``'s code path; each city's moderator opts its room in."""
    state.set_phase("Starting the bot (blossom run's code path) and opting the rooms in")
    run.bot_task = asyncio.create_task(
        run_bot(load_config(config_path), clock, run.bot_stop), name="bot"
    )
    await wait_bot(run, organiser.client.wait_member(control, bot_user.user_id, what="the bot"))
    state.emit("setup", "the bot joined the control room (invited by the organiser)")
    for city in state.cities:
        moderator = next(p for p in run.people if p.city_id == city.id)
        await moderator.client.invite(city.room_id, bot_user.user_id)
    for city in state.cities:
        moderator = next(p for p in run.people if p.city_id == city.id)
        await wait_bot(
            run,
            moderator.client.wait_member(
                city.room_id, bot_user.user_id, what=f"the bot ({city.name})"
            ),
        )
    state.emit("setup", "every city room opted in: its moderator invited the bot, the bot joined")


def _schedule(
    options: DemoOptions,
    state: DemoState,
    run: Run,
    base: dict[str, Any],
    rooms: dict[str, str],
    scenario_path: Path,
    clock: ScaledClock,
) -> tuple[Scenario, Path]:
    """Set T0 a few real seconds ahead, write the scenario and draw its plan."""
    lead = timedelta(seconds=ARM_LEAD_S * options.speed)
    start = clock.now() - first_offset(load_scenario_file(scenario_path)) + lead
    # On a whole minute of the scenario's clock, so "{time:0m}" reads 17:05, not 17:04:37.
    start = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    grace = timedelta(seconds=min(600.0, GRACE_REAL_S * options.speed)) if options.crew else None
    data = demo_scenario(base, cities=len(state.cities), rooms=rooms, start=start, grace=grace)
    write_yaml(scenario_path, data)
    scenario = load_scenario_file(scenario_path)
    state.scenario_id = scenario.id
    for city in state.cities:
        city.timezone = scenario.city(city.id).timezone
    state.expected = expected_dispatches(scenario, clock.to_wall)
    svg_path = run.workdir / "plan.svg"
    svg_path.write_text(plan_svg(scenario), encoding="utf-8")
    state.emit("setup", f"the plan, drawn: {svg_path}")
    return scenario, svg_path


async def _count_rooms(
    state: DemoState, run: Run, bots: list[str]
) -> dict[str, Counter[tuple[str, str]]]:
    """Each city room's timeline read back, the bots' dispatches counted by their tag."""
    room_counts: dict[str, Counter[tuple[str, str]]] = {}
    for city in state.cities:
        moderator = next(p for p in run.people if p.city_id == city.id)
        events = await moderator.client.timeline(city.room_id)
        room_counts[city.id] = count_room(
            (e.get("content") or {} for e in events if e.get("sender") in bots),
            DISPATCH_KEY,
        )
    return room_counts


async def _person(hs: DemoHomeserver, localpart: str, run: Run) -> Person:
    user = await hs.register(localpart, secrets.token_urlsafe(12))
    client = DemoClient(hs.url, user.user_id, localpart)
    person = Person(user, client)
    run.people.append(person)  # before login: clean-up closes it whatever happens
    await client.login(user.password)
    return person


async def _hold_open(options: DemoOptions, state: DemoState, run: Run) -> None:
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


async def _clean_up(run: Run) -> None:
    """Stop the bot, the clients and the homeserver; each step runs even if one fails."""
    for task in list(run.tasks):
        task.cancel()
    for bot, stop in ((run.bot_task, run.bot_stop), (run.crew_task, run.crew_stop)):
        if bot is None:
            continue
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(bot), 20)
        except (TimeoutError, asyncio.CancelledError):
            bot.cancel()
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
    for name in ("homeserver", "bot/data", "bot/config.yaml", "bot2/data", "bot2/config.yaml"):
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
