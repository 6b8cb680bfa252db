"""A fake Matrix for fast tests of the run manager (in the manner of maubot's
testing bot): a homeserver that keeps each room's events and deduplicates
txn ids per device, a room registry with aliases and opt-ins, timers fired by
hand, and the real store (SQLite in tmp), dispatcher, notifier and run
manager on a ManualClock. What only a real server can show stays in the live
tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bot import DISPATCH_KEY
from bot.clock import Clock, ManualClock
from bot.dispatch import Dispatcher
from bot.ledger import is_dispatch_of
from bot.library import ScenarioLibrary
from bot.matrix.sender import SendFailed
from bot.notify import Notifier
from bot.retry import RetryPolicy, SendFailure
from bot.runs import RunManager
from bot.store import Store

BOT = "@bot:fake"
CONTROL = "!control:fake"
T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@dataclass
class FakeEvent:
    event_id: str
    room_id: str
    type: str
    content: dict[str, Any]
    txn_id: str

    @property
    def tag(self) -> dict[str, str] | None:
        tag = self.content.get(DISPATCH_KEY)
        return tag if isinstance(tag, dict) else None


class FakeHomeserver:
    """The bot's sender against fake rooms: one device, so a txn id sent again
    returns the first event (as Synapse does within its window)."""

    def __init__(self) -> None:
        self.events: list[FakeEvent] = []
        self._by_txn: dict[str, str] = {}
        # room -> failures to raise on the next sends there, in order.
        self.fail: dict[str, list[SendFailure]] = {}
        self.searched: list[tuple[str, dict[str, str]]] = []

    async def send(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str:
        await asyncio.sleep(0)
        failures = self.fail.get(room_id)
        if failures:
            raise SendFailed(failures.pop(0))
        if txn_id in self._by_txn:
            return self._by_txn[txn_id]
        event_id = f"$e{len(self.events) + 1}"
        self.events.append(FakeEvent(event_id, room_id, event_type, dict(content), txn_id))
        self._by_txn[txn_id] = event_id
        return event_id

    async def prepare(self, room_id: str) -> None:
        return None

    async def find_dispatch(self, room_id: str, tag: Mapping[str, str]) -> str | None:
        self.searched.append((room_id, dict(tag)))
        for e in reversed(self.events):
            if e.room_id == room_id and is_dispatch_of(e.content, dict(tag)):
                return e.event_id
        return None

    def forget_txn_ids(self) -> None:
        """The homeserver's txn window has passed (or another device resends)."""
        self._by_txn.clear()

    def in_room(self, room_id: str) -> list[FakeEvent]:
        return [e for e in self.events if e.room_id == room_id]

    def stages(self, room_id: str) -> list[tuple[str, str]]:
        """(stage, part) of every dispatch event in a room, in order."""
        return [(t["stage"], t["part"]) for e in self.in_room(room_id) if (t := e.tag)]

    def notices(self) -> list[str]:
        return [str(e.content.get("body", "")) for e in self.in_room(CONTROL)]


class FakeRooms:
    """RoomRegistry's part the run manager uses: aliases, opt-ins, served rooms."""

    def __init__(self, opted_in: Iterable[str] = (), aliases: Mapping[str, str] | None = None):
        self.opted_in = set(opted_in)
        self.aliases = dict(aliases or {})
        # Seconds each alias lookup takes, one per lookup in turn (then 0): later
        # lookups answering first is how the network reorders concurrent work.
        self.lookup_delays: list[float] = []

    async def resolve(self, room: str, *, refresh: bool = False) -> str | None:
        if room.startswith("!"):
            return room
        if refresh and self.lookup_delays:
            await asyncio.sleep(self.lookup_delays.pop(0))
        return self.aliases.get(room)

    async def served_rooms(self, listed: Iterable[str], *, refresh: bool = False) -> list[str]:
        served: list[str] = []
        for room in listed:
            rid = await self.resolve(room, refresh=refresh)
            if rid is not None and rid in self.opted_in and rid not in served:
                served.append(rid)
        return served

    async def missing_rooms(self, listed: Iterable[str]) -> dict[str, str]:
        missing: dict[str, str] = {}
        for room in listed:
            rid = await self.resolve(room)
            if rid is None:
                missing[room] = "alias does not resolve"
            elif rid not in self.opted_in:
                missing[room] = (
                    "the bot is not in this room (invite it from an account with power ≥ 50)"
                )
        return missing

    async def wait_known(self, room_id: str, seconds: float = 15.0) -> None:
        return None


@dataclass
class _Job:
    at: datetime
    clock: Clock
    fn: Callable[[], Awaitable[None]]


class FakeTimers:
    """Timers fired by the test: :meth:`fire_due` starts every job whose time has
    come on its clock, all at once (as APScheduler does after a downtime)."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}

    def set(self, job_id: str, at_wall: datetime, fn: Callable[[], Awaitable[None]]) -> None:
        self.jobs[job_id] = _Job(at_wall, ManualClock(at_wall), fn)

    def set_on(
        self, job_id: str, clock: Clock, at: datetime, fn: Callable[[], Awaitable[None]]
    ) -> None:
        self.jobs[job_id] = _Job(at, clock, fn)

    def cancel(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def cancel_prefix(self, prefix: str) -> None:
        for job_id in [j for j in self.jobs if j.startswith(prefix)]:
            del self.jobs[job_id]

    def job_ids(self) -> list[str]:
        return sorted(self.jobs)

    def due(self) -> list[str]:
        return [j for j, job in self.jobs.items() if job.at <= job.clock.now()]

    async def fire_due(self, order: Callable[[list[str]], list[str]] | None = None) -> None:
        ids = self.due()
        ids = order(ids) if order else sorted(ids)
        fns = [self.jobs.pop(j).fn for j in ids]
        await asyncio.gather(*(fn() for fn in fns))


@dataclass
class Kit:
    dir: Path
    clock: ManualClock
    store: Store
    hs: FakeHomeserver
    rooms: FakeRooms
    timers: FakeTimers
    dispatcher: Dispatcher
    runs: RunManager
    ready: asyncio.Event
    keys: list[str] = field(default_factory=list)
    crew: Any = None

    def write(self, data: dict[str, Any]) -> Path:
        path = self.dir / "scenarios" / f"{data['id']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run_key(self) -> str:
        self.keys.append(f"$arm{len(self.keys) + 1}:fake")
        return self.keys[-1]

    async def arm(self, scenario_id: str, **kw: Any) -> Any:
        return await self.runs.arm(
            scenario_id, sender="@org:fake", control_room=CONTROL, run_key=self.run_key(), **kw
        )

    async def at(self, instant: datetime, **kw: Any) -> None:
        """Move the clock to ``instant`` and let every due timer run to its end."""
        self.clock.set(instant)
        for _ in range(10):
            if not self.timers.due():
                break
            await self.timers.fire_due(**kw)
        await self.idle()

    async def idle(self) -> None:
        for _ in range(5):
            await self.runs.wait_idle(5)
            await asyncio.sleep(0)


def scenario(
    sid: str,
    cities: Mapping[str, Iterable[str]],
    stages: list[dict[str, Any]],
    *,
    start: datetime = T0,
    places: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cities": [
            {
                "id": cid,
                "name": cid.title(),
                "timezone": "Europe/Berlin",
                "rooms": list(rooms),
                **({"places": dict(places)} if places else {}),
            }
            for cid, rooms in cities.items()
        ],
        "stages": stages,
    }


@contextlib.asynccontextmanager
async def kit(
    tmp: Path,
    *,
    opted_in: Iterable[str] = (),
    aliases: Mapping[str, str] | None = None,
    now: datetime = T0 - timedelta(hours=1),
    store: Store | None = None,
    hs: FakeHomeserver | None = None,
    prepare_seconds: float = 1.0,
    rate: float = 1000.0,
    crew: Callable[[FakeHomeserver], Any] | None = None,
    clock: Any = None,
    timers: Any = None,
) -> AsyncIterator[Kit]:
    """A run manager over fakes. Pass the ``store`` and ``hs`` of an earlier kit
    to play a restart (same database, same rooms); ``clock`` and ``timers`` to
    run on real ones (bot.clock.SystemClock, bot.schedule.Timers)."""
    (tmp / "scenarios").mkdir(parents=True, exist_ok=True)
    clock = clock or ManualClock(now)
    own_store = store is None
    db = store or await Store.open(tmp / "blossom.db")
    server = hs or FakeHomeserver()
    rooms = FakeRooms(opted_in, aliases)
    timers = timers or FakeTimers()
    ready = asyncio.Event()
    ready.set()
    policy = RetryPolicy(base_s=0.001, cap_s=0.005)
    dispatcher = Dispatcher(db, server, clock, policy=policy)
    crew_side = crew(server) if crew is not None else None
    runs = RunManager(
        store=db,
        library=ScenarioLibrary(tmp / "scenarios"),
        rooms=rooms,  # type: ignore[arg-type]
        dispatcher=dispatcher,
        sender=server,
        timers=timers,  # type: ignore[arg-type]
        notifier=Notifier(server, clock, [CONTROL]),
        clock=clock,
        ready=ready,
        prepare_seconds=prepare_seconds,
        expected_msgs_per_second=rate,
        crew=crew_side,
    )
    k = Kit(tmp, clock, db, server, rooms, timers, dispatcher, runs, ready, crew=crew_side)
    try:
        yield k
    finally:
        dispatcher.stop()
        await runs.wait_idle(2)
        if own_store:
            await db.close()
