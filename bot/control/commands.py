"""Control-room commands: who may run them, what they do, what they answer.

Every command from a control room is recorded in the audit table (who, when,
what, result), refused ones included. Replies quote ids only; anything a user
typed that is echoed back goes through HTML escaping in ``Notifier.reply``.

Commands that *release* (``!arm``, ``!drill``, ``!release``, ``!resume``) read
more than ``LATE_READ_S`` after they were typed (the bot was down, or the
homeserver slow) are not run: the bot asks for ``<command> confirm``. Commands
that *stop* (``!abort``, ``!hold``, ``!disarm``) run however late they are read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.clock import Clock
from bot.control.confirm import Confirmations, command_key
from bot.control.parse import ArgSpec, Command, CommandSpec, UsageError, parse
from bot.control.targets import DRILL, LIVE, pick_run
from bot.matrix.rooms import RoomRegistry
from bot.notify import Notifier
from bot.runs import ArmedRun, ArmError, RunManager
from bot.store import Store, StoreError
from bot.text import control as text

log = logging.getLogger(__name__)

# A release command read this long after it was typed waits for confirmation.
LATE_READ_S = 60.0
RELEASING = frozenset({"arm", "drill", "release", "resume"})

SCENARIO = ArgSpec("scenario")
WHICH = ArgSpec("run", "which", optional=True)

SPECS: dict[str, CommandSpec] = {
    s.name: s
    for s in (
        CommandSpec("help", (), "List the commands.", "!help"),
        CommandSpec(
            "arm",
            (SCENARIO,),
            "Load, check and schedule a scenario from the scenarios directory.",
            "!arm dc-london-berlin",
            confirmable=True,
        ),
        CommandSpec(
            "disarm",
            (SCENARIO, WHICH),
            "Unschedule an armed scenario (drill or live); nothing more is sent.",
            "!disarm dc-london-berlin",
        ),
    )
}


@dataclass(frozen=True)
class Context:
    """What a handler knows about the message it answers."""

    room_id: str
    sender: str
    event_id: str
    sent_at: datetime | None  # origin_server_ts, when known
    confirmed: bool = False  # typed with ``confirm`` after the bot asked


@dataclass(frozen=True)
class Reply:
    text: str
    table: str | None = None
    result: str = "ok"
    ask: bool = False  # the reply is a question: remember it for ``confirm``


Handler = Callable[[Command, Context], Awaitable[Reply]]


def retype(command: Command, spec: CommandSpec) -> tuple[str, str]:
    """The command as it would be typed for the drill and for the live run."""
    rest: list[str] = []
    for a in spec.args:
        value = command.args.get(a.name)
        if value is None or a.name in ("scenario", "run"):
            continue
        rest.append("…" if a.kind == "text" else value.lower())
    head = f"!{command.name} {command.args['scenario']}"
    tail = "".join(f" {w}" for w in rest)
    return f"{head} {DRILL}{tail}", f"{head} {LIVE}{tail}"


class Controller:
    """Runs control-room commands. ``extra`` handlers (the live-steering layer)
    plug in with their specs without this class knowing them."""

    def __init__(
        self,
        *,
        store: Store,
        runs: RunManager,
        rooms: RoomRegistry,
        notifier: Notifier,
        clock: Clock,
    ) -> None:
        self._store = store
        self._runs = runs
        self._rooms = rooms
        self._notifier = notifier
        self._clock = clock
        self.confirmations = Confirmations(clock)
        self.specs: dict[str, CommandSpec] = dict(SPECS)
        self._handlers: dict[str, Handler] = {
            "help": self._help,
            "arm": self._arm,
            "disarm": self._disarm,
        }

    def register(self, spec: CommandSpec, handler: Handler) -> None:
        self.specs[spec.name] = spec
        self._handlers[spec.name] = handler

    def pick(self, command: Command) -> tuple[ArmedRun, Callable[[str], str]]:
        """The run a command names (drill or live) and how to say it in replies."""
        picked = pick_run(
            self._runs,
            command.args["scenario"],
            command.args.get("run"),
            retype(command, self.specs[command.name]),
        )
        return picked.armed, picked.say

    async def handle(
        self, room_id: str, event_id: str, sender: str, body: str, *, sent_ms: int | None = None
    ) -> None:
        """One message in a control room. Non-commands are ignored silently.
        ``sent_ms`` is the event's origin_server_ts (when the command was typed)."""
        parsed = parse(body, self.specs)
        if parsed is None:
            return
        name = parsed.name if isinstance(parsed, Command) else (parsed.name or "?")
        if not await self._rooms.is_core(sender, room_id):
            await self._audit(room_id, sender, name, "refused: not core group")
            log.info("refused !%s from %s in %s: not core group", name, sender, room_id)
            await self._notifier.reply(room_id, event_id, text.NOT_CORE)
            return
        if isinstance(parsed, UsageError):
            await self._audit(room_id, sender, name, f"usage: {parsed.message}")
            await self._notifier.reply(room_id, event_id, parsed.message)
            return
        sent_at = datetime.fromtimestamp(sent_ms / 1000, UTC) if sent_ms else None
        ctx = Context(room_id, sender, event_id, sent_at, parsed.confirmed)
        reply = await self._run(parsed, ctx)
        await self._audit(room_id, sender, parsed.name, reply.result, parsed)
        await self._notifier.reply(room_id, event_id, reply.text, table=reply.table)

    async def _run(self, command: Command, ctx: Context) -> Reply:
        key = command_key(command.raw)
        window = self.confirmations.window_s
        if command.confirmed and not self.confirmations.take(ctx.room_id, key):
            why = text.nothing_to_confirm(key, window)
            return Reply(why, result=f"refused: {why}")
        if not command.confirmed and command.name in RELEASING and ctx.sent_at is not None:
            read = self._clock.to_wall(self._clock.now())
            if (read - ctx.sent_at).total_seconds() > LATE_READ_S:
                self.confirmations.ask(ctx.room_id, key)
                return Reply(
                    text.read_late(key, ctx.sent_at, read, LATE_READ_S, window),
                    result="asked to confirm: read late",
                )
        try:
            reply = await self._handlers[command.name](command, ctx)
        except ArmError as err:
            return Reply(str(err), result=f"refused: {err}")
        except StoreError as err:
            log.error("!%s failed: %s", command.name, err)
            return Reply(text.database_failed(err), result="error: database")
        if reply.ask:
            self.confirmations.ask(ctx.room_id, key)
        return reply

    async def _audit(
        self, room_id: str, sender: str, name: str, result: str, command: Command | None = None
    ) -> None:
        # The audit keeps the command and its ids, not free text (a redirect's
        # new place name or an abort message is content, kept out of storage).
        # A city word is kept only once the command succeeded: then it was a city
        # (a refused `!abort x go home` must not store "go").
        what = f"!{name}"
        spec = self.specs.get(name)
        if command is not None and spec is not None and spec.audit_ids:
            kinds = {a.name: a.kind for a in spec.args}
            ids = [
                v.lower() if kinds.get(a) in ("city", "which") else v
                for a, v in command.args.items()
                if kinds.get(a) in ("slug", "duration", "number", "which")
                or (kinds.get(a) == "city" and result.startswith("ok"))
            ]
            what = " ".join([what, *ids, *(["confirm"] if command.confirmed else [])])
        try:
            await self._store.audit(
                now=self._clock.now(),
                room_id=room_id,
                sender=sender,
                command=what,
                result=result[:500],
            )
        except StoreError as err:
            log.error("could not record %s in the audit table: %s", what, err)

    async def _help(self, command: Command, ctx: Context) -> Reply:
        lines = ["Commands (core group, in a control room):"]
        lines += [
            f"{s.usage()} — {s.summary} e.g. {s.example}"
            for s in self.specs.values()
            if not s.participant
        ]
        return Reply("\n".join(lines))

    async def _arm(self, command: Command, ctx: Context) -> Reply:
        scenario_id = command.args["scenario"]
        if self._runs.by_scenario(scenario_id) is not None:
            drill_too = self._runs.by_scenario(scenario_id, drill=True) is not None
            raise ArmError(text.already_armed(scenario_id, drill_too))
        body, table = await self._runs.arm(scenario_id, sender=ctx.sender, control_room=ctx.room_id)
        return Reply(body, table)

    async def _disarm(self, command: Command, ctx: Context) -> Reply:
        armed, say = self.pick(command)
        return Reply(say(await disarm(self._runs, self._store, self._clock, armed)))


async def disarm(runs: RunManager, store: Store, clock: Clock, armed: ArmedRun) -> str:
    """Disarm exactly this run (a drill can always be ended on its own).

    ``RunManager.disarm`` takes a scenario id today and picks the live run first;
    it is changing to take the ``ArmedRun``: then this whole function is
    ``return await runs.disarm(armed)``."""
    if runs.get(armed.scenario_id) is armed:
        return await runs.disarm(armed.scenario_id)
    # The drill while the live run is armed too. Its pending rows are cancelled
    # and it leaves the armed set, so a timer that still fires finds no run and
    # sends nothing (RunManager.fire returns when its run is no longer armed).
    for city in armed.scenario.cities:
        await runs.cancel_city(armed, city.id, "disarmed")
    await store.end_run(armed.run.id, "disarmed", clock.now())
    runs.armed.pop(armed.run.id, None)
    return text.disarmed(armed.label(), armed.run.id)
