"""Control-room commands: who may run them, what they do, what they answer.

Every command from a control room is recorded in the audit table (who, when,
what, result), refused ones included. Replies quote ids only; anything a user
typed that is echoed back goes through HTML escaping in ``Notifier.reply``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.clock import Clock
from bot.control.parse import ArgSpec, Command, CommandSpec, UsageError, parse
from bot.matrix.rooms import RoomRegistry
from bot.notify import Notifier
from bot.runs import ArmError, RunManager
from bot.store import Store, StoreError

log = logging.getLogger(__name__)

SCENARIO = ArgSpec("scenario")

SPECS: dict[str, CommandSpec] = {
    s.name: s
    for s in (
        CommandSpec("help", (), "List the commands.", "!help"),
        CommandSpec(
            "arm",
            (SCENARIO,),
            "Load, check and schedule a scenario from the scenarios directory.",
            "!arm dc-london-berlin",
        ),
        CommandSpec(
            "disarm",
            (SCENARIO,),
            "Unschedule an armed scenario; nothing more is sent.",
            "!disarm dc-london-berlin",
        ),
    )
}


@dataclass(frozen=True)
class Reply:
    text: str
    table: str | None = None
    result: str = "ok"


Handler = Callable[[Command, str, str], Awaitable[Reply]]


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
        self.specs: dict[str, CommandSpec] = dict(SPECS)
        self._handlers: dict[str, Handler] = {
            "help": self._help,
            "arm": self._arm,
            "disarm": self._disarm,
        }

    def register(self, spec: CommandSpec, handler: Handler) -> None:
        self.specs[spec.name] = spec
        self._handlers[spec.name] = handler

    async def handle(self, room_id: str, event_id: str, sender: str, body: str) -> None:
        """One message in a control room. Non-commands are ignored silently."""
        parsed = parse(body, self.specs)
        if parsed is None:
            return
        name = parsed.name if isinstance(parsed, Command) else (parsed.name or "?")
        if not await self._rooms.is_core(sender, room_id):
            await self._audit(room_id, sender, name, "refused: not core group")
            log.info("refused !%s from %s in %s: not core group", name, sender, room_id)
            await self._notifier.reply(
                room_id,
                event_id,
                "Only the core group (power ≥ the configured level here) can give commands.",
            )
            return
        if isinstance(parsed, UsageError):
            await self._audit(room_id, sender, name, f"usage: {parsed.message}")
            await self._notifier.reply(room_id, event_id, parsed.message)
            return
        try:
            reply = await self._handlers[parsed.name](parsed, sender, room_id)
        except ArmError as err:
            reply = Reply(str(err), result=f"refused: {err}")
        except StoreError as err:
            log.error("!%s failed: %s", parsed.name, err)
            reply = Reply(
                f"The bot's database failed ({err}); nothing was changed.", result="error: database"
            )
        await self._audit(room_id, sender, parsed.name, reply.result, parsed)
        await self._notifier.reply(room_id, event_id, reply.text, table=reply.table)

    async def _audit(
        self, room_id: str, sender: str, name: str, result: str, command: Command | None = None
    ) -> None:
        # The audit keeps the command and its ids, not free text (a redirect's
        # new place name or an abort message is content, kept out of storage).
        what = f"!{name}"
        spec_of = self.specs.get(name)
        if command is not None and (spec_of is None or spec_of.audit_ids):
            spec = self.specs.get(command.name)
            ids = [
                v
                for a, v in command.args.items()
                if spec is None
                or next((s.kind for s in spec.args if s.name == a), "text")
                in ("slug", "duration", "number")
            ]
            what = " ".join([what, *ids])
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

    async def _help(self, command: Command, sender: str, room_id: str) -> Reply:
        lines = ["Commands (core group, in a control room):"]
        lines += [
            f"{s.usage()} — {s.summary} e.g. {s.example}"
            for s in self.specs.values()
            if not s.participant
        ]
        return Reply("\n".join(lines))

    async def _arm(self, command: Command, sender: str, room_id: str) -> Reply:
        text, table = await self._runs.arm(
            command.args["scenario"], sender=sender, control_room=room_id
        )
        return Reply(text, table)

    async def _disarm(self, command: Command, sender: str, room_id: str) -> Reply:
        return Reply(await self._runs.disarm(command.args["scenario"]))
