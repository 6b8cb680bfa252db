"""Control-room commands: who may run them, what they do, what they answer.

The :class:`Controller` takes a control-room message through the same steps for
every command declared with :func:`bot.control.registry.command`: parse and
convert its arguments, check the core group, the confirmation flow, run the
handler, audit, reply. Every command from a control room is recorded in the
audit table (who, when, what, result), refused ones included; the audit keeps
ids, never free text. Replies quote ids only; anything a user typed that is
echoed back goes through HTML escaping in ``Notifier.reply``.

Commands that *release* (``releases=True``: ``!arm``, ``!drill``, ``!release``,
``!resume``) read more than ``LATE_READ_S`` after they were typed (the bot was
down, or the homeserver slow) are not run: the bot asks for ``<command>
confirm``. Commands that *stop* (``!abort``, ``!hold``, ``!disarm``) run however
late they are read.

In a crew (``crew``, docs/crew.md) every member acts on every command and audits
it, and only the speaker's reply reaches the room (``Notifier``); ``!arm`` goes
through the crew's roll call (:meth:`bot.control.crew.CrewControl.arm`), and
``!drill`` is left to the speaker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from bot.clock import Clock
from bot.control.args import RUN, SCENARIO, TEXT_ARG, Arg
from bot.control.confirm import Asked, Confirmations, command_key
from bot.control.crew import SPEAKER_ONLY, CrewCommands, CrewControl
from bot.control.parse import Command, UsageError, parse
from bot.control.registry import Args, CommandDef, Context, Reply, Table, command
from bot.control.targets import DRILL, LIVE, pick_run
from bot.matrix.rooms import RoomRegistry
from bot.notify import Notifier
from bot.runs import ArmedRun, ArmError, RunManager
from bot.store import Store, StoreError
from bot.text import control as text
from bot.text import crew as text_crew

log = logging.getLogger(__name__)

# A release command read this long after it was typed waits for confirmation.
LATE_READ_S = 60.0

__all__ = ["LATE_READ_S", "Context", "Controller", "CoreCommands", "Reply"]


class Controller:
    """Runs control-room commands. Command groups (this module's
    :class:`CoreCommands`, the steering layer) are added with :meth:`add`."""

    def __init__(
        self,
        *,
        store: Store,
        runs: RunManager,
        rooms: RoomRegistry,
        notifier: Notifier,
        clock: Clock,
        crew: CrewControl | None = None,
    ) -> None:
        self._store = store
        self._runs = runs
        self._rooms = rooms
        self._notifier = notifier
        self._clock = clock
        self.crew = crew
        self.confirmations = Confirmations(clock)
        self.table = Table()
        self.add(CoreCommands(self, runs, store, clock))
        if crew is not None:
            self.add(CrewCommands(crew))

    @property
    def specs(self) -> dict[str, CommandDef]:
        return self.table.defs

    def add(self, group: object) -> None:
        self.table.add(group)

    def pick(self, args: Args) -> tuple[ArmedRun, Callable[[str], str]]:
        """The run a command names (drill or live) and how to say it in replies."""
        picked = pick_run(
            self._runs,
            args.text("scenario"),
            args.opt_text("run"),
            (args.retype(DRILL), args.retype(LIVE)),
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
        if self.crew is not None:
            if self.crew.is_member(sender):
                return  # another bot of the crew: never a command, whatever its power
            self.crew.command_read()  # the roll call: beat at once
        name = parsed.name if isinstance(parsed, Command) else (parsed.name or "?")
        if not await self._rooms.is_core(sender, room_id):
            await self._audit(room_id, sender, name, "refused: not core group")
            log.info("refused !%s from %s in %s: not core group", name, sender, room_id)
            await self._reply(room_id, event_id, text.NOT_CORE)
            return
        if isinstance(parsed, UsageError):
            await self._audit(room_id, sender, name, f"usage: {parsed.message}")
            await self._reply(room_id, event_id, parsed.message)
            return
        sent_at = datetime.fromtimestamp(sent_ms / 1000, UTC) if sent_ms else None
        ctx = Context(room_id, sender, event_id, sent_at, parsed.confirmed)
        reply = await self._run(parsed, ctx)
        await self._audit(room_id, sender, parsed.name, reply.result, parsed)
        await self._reply(room_id, event_id, reply.text, table=reply.table)

    async def _reply(
        self, room_id: str, event_id: str, body: str, *, table: str | None = None
    ) -> None:
        if self.crew is not None:
            await self.crew.decide()  # who answers: only the speaker's reply goes out
        await self._notifier.reply(room_id, event_id, body, table=table)

    async def _run(self, command: Command, ctx: Context) -> Reply:
        spec = self.specs[command.name]
        key = command_key(command.raw)
        window = self.confirmations.window_s
        if command.confirmed:
            answered = self.confirmations.take(ctx.room_id, key)
            if answered is None:
                why = text.nothing_to_confirm(key, window)
                return Reply(why, result=f"refused: {why}")
            # Only a confirmation of the handler's own question counts as one for
            # it: confirming a late read must still show !arm's warnings.
            ctx = replace(ctx, confirmed=answered is Asked.HANDLER)
        elif spec.releases and ctx.sent_at is not None:
            read = self._clock.to_wall(self._clock.now())
            if (read - ctx.sent_at).total_seconds() > LATE_READ_S:
                self.confirmations.ask(ctx.room_id, key, Asked.READ_LATE)
                return Reply(
                    text.read_late(key, ctx.sent_at, read, LATE_READ_S, window),
                    result="asked to confirm: read late",
                )
        if self.crew is not None and spec.name in SPEAKER_ONLY:
            speaker = await self.crew.decide()
            if speaker != self.crew.me:
                return Reply(text_crew.left_to_speaker(spec.name, speaker),
                             result="ok: left to the speaker")
        try:
            handler = self.table.handlers[command.name]
            reply = await handler(ctx, Args(spec, command.values, command.args))
        except ArmError as err:
            return Reply(str(err), result=f"refused: {err}")
        except StoreError as err:
            log.error("!%s failed: %s", command.name, err)
            return Reply(text.database_failed(err), result="error: database")
        assert reply is not None, f"!{command.name} gave no reply"
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
            ids = [
                str(command.values[a.name])
                for a in spec.args
                if a.name in command.values
                and (a.type.audit or (a.kind == "city" and result.startswith("ok")))
            ]
            what = " ".join([what, *ids, *(["confirm"] if command.confirmed else [])])
        try:
            await self._store.audit.record(
                now=self._clock.now(),
                room_id=room_id,
                sender=sender,
                command=what,
                result=result[:500],
            )
        except StoreError as err:
            log.error("could not record %s in the audit table: %s", what, err)


class CoreCommands:
    """!help, !arm, !disarm."""

    def __init__(
        self, controller: Controller, runs: RunManager, store: Store, clock: Clock
    ) -> None:
        self._controller = controller
        self._runs = runs
        self._store = store
        self._clock = clock

    @command("help", "List the commands.", example="!help")
    async def help(self, ctx: Context, args: Args) -> Reply:
        return Reply(self._controller.table.help(text.CONTROL_HELP))

    @command(
        "arm",
        "Load, check and schedule a scenario (at <instant>: a new start; resend: past "
        "stages sent before go again); problems are shown first and wait for confirm.",
        example="!arm dc-london-berlin",
        args=(SCENARIO, Arg("options", TEXT_ARG, optional=True, shown="at <instant>|resend")),
        releases=True,
    )
    async def arm(self, ctx: Context, args: Args) -> Reply:
        scenario_id = args.text("scenario")
        typed = args.opt_text("options") or ""
        crew = self._controller.crew
        if crew is None:
            return await self._arm(ctx, scenario_id, typed, ctx.confirmed)
        return await crew.arm(
            ctx, scenario_id, lambda confirmed: self._arm(ctx, scenario_id, typed, confirmed)
        )

    async def _arm(self, ctx: Context, scenario_id: str, typed: str, confirmed: bool) -> Reply:
        if self._runs.by_scenario(scenario_id) is not None:
            drill_too = self._runs.by_scenario(scenario_id, drill=True) is not None
            raise ArmError(text.already_armed(scenario_id, drill_too))
        options = self._runs.arm_options(scenario_id, typed)
        out = await self._runs.arm(
            scenario_id,
            sender=ctx.sender,
            control_room=ctx.room_id,
            run_key=ctx.event_id,
            start_at=options.start_at,
            resend_past=options.resend,
            confirmed=confirmed,
        )
        if out.needs_confirm:
            again = f"!arm {scenario_id} {typed}".strip()
            window = self._controller.confirmations.window_s
            return Reply(
                f"{out.text}\n{text.arm_confirm(again, window)}",
                out.table,
                result=out.result,
                ask=True,
            )
        return Reply(out.text, out.table, result=out.result)

    @command(
        "disarm",
        "Unschedule an armed scenario (drill or live); nothing more is sent.",
        example="!disarm dc-london-berlin",
        args=(SCENARIO, RUN),
    )
    async def disarm(self, ctx: Context, args: Args) -> Reply:
        armed, say = self._controller.pick(args)
        return Reply(say(await self._runs.disarm(armed)))
