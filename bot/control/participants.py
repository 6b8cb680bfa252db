"""Participants: check-ins, private opt-in by direct message, and leaving.

- ``!here`` in a city room (or a direct chat, or a drill room) checks the sender
  in for that city's latest released stage; a reaction to any part of the bot's
  latest stage (its text or its map pin) does the same. A person counts once per
  city and stage. In a room the bot acknowledges with reactions, never with a
  message: ✅ when the next gate counts the check-in, ⏳ when it will not.
- In a direct chat: ``!join <scenario> <city>`` (cities with ``direct: true``),
  ``!stop`` (forget me now), ``!help``.
- A participant who leaves a direct chat is forgotten at once; nothing more is
  sent there.
"""

from __future__ import annotations

import logging
import uuid

from nio import AsyncClient, JoinedMembersResponse

from bot.clock import Clock
from bot.control.args import CITY_ARG, SCENARIO, TEXT_ARG, Arg
from bot.control.checkins import counted_by_next_gate, latest_released
from bot.control.parse import UsageError, parse
from bot.control.registry import Args, Context, Reply, Table, Who, command
from bot.dispatch import Dispatcher
from bot.library import ScenarioLibrary
from bot.notify import Notifier
from bot.runs import ArmedRun, RunManager
from bot.store import Store
from bot.text import participants as say

log = logging.getLogger(__name__)

# Event ids the bot has put its own acknowledgement on (a reaction to a stage
# message): one is enough, and Synapse refuses a second with the same key.
_ACKED_KEPT = 4096


class Participants:
    def __init__(
        self,
        *,
        client: AsyncClient,
        store: Store,
        runs: RunManager,
        library: ScenarioLibrary,
        dispatcher: Dispatcher,
        notifier: Notifier,
        clock: Clock,
    ) -> None:
        self._client = client
        self._store = store
        self._runs = runs
        self._library = library
        self._dispatcher = dispatcher
        self._notifier = notifier
        self._clock = clock
        self._acked: dict[str, None] = {}
        self.table = Table(Who.PARTICIPANT)
        self.table.add(self)

    async def _is_direct_chat(self, room_id: str) -> bool:
        resp = await self._client.joined_members(room_id)
        if not isinstance(resp, JoinedMembersResponse):
            return False
        return len(resp.members) <= 2

    async def _react(self, room_id: str, event_id: str, key: str) -> None:
        if event_id in self._acked:
            return
        self._acked[event_id] = None
        if len(self._acked) > _ACKED_KEPT:
            del self._acked[next(iter(self._acked))]
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        try:
            await self._client.room_send(
                room_id,
                "m.reaction",
                content,
                tx_id=f"blossom-ack-{uuid.uuid4().hex}",
                ignore_unverified_devices=True,
            )
        except Exception as err:  # an acknowledgement is a courtesy, never fatal
            log.info("could not acknowledge in %s: %s", room_id, err.__class__.__name__)

    async def _say(self, room_id: str, event_id: str | None, text: str) -> None:
        await self._notifier.reply(room_id, event_id, text)

    # -- messages ----------------------------------------------------------------------

    async def on_message(self, room_id: str, event_id: str, sender: str, body: str) -> None:
        parsed = parse(body, self.table.defs)
        if parsed is None:
            return
        if isinstance(parsed, UsageError):
            if await self._is_direct_chat(room_id):
                await self._say(room_id, event_id, parsed.message)
            return  # in a city room, stay quiet: no message per person
        spec = self.table.defs[parsed.name]
        ctx = Context(room_id, sender, event_id)
        reply = await self.table.handlers[parsed.name](ctx, Args(spec, parsed.values, parsed.args))
        if reply is not None:
            await self._say(room_id, event_id, reply.text)

    # Words after !here ("I'm with 3 friends") are allowed and not kept: the
    # sender counts once, as with !here alone.
    @command(
        "here",
        "Check in for your city's current stage.",
        example="!here",
        args=(Arg("words", TEXT_ARG, optional=True),),
        who=Who.PARTICIPANT,
    )
    async def here(self, ctx: Context, args: Args) -> Reply | None:
        await self.check_in(ctx.room_id, ctx.sender, via="here", ack_event=ctx.event_id)
        return None

    @command("help", "What you can say to the bot.", example="!help", who=Who.PARTICIPANT)
    async def help(self, ctx: Context, args: Args) -> Reply | None:
        if not await self._is_direct_chat(ctx.room_id):
            return None
        lines = [f"{d.usage()} — {d.summary}" for d in self.table.defs.values()]
        return Reply("\n".join([say.HELP_HEADING, *lines]))

    async def check_in(
        self,
        room_id: str,
        sender: str,
        *,
        via: str,
        ack_event: str | None = None,
        only: tuple[ArmedRun, str, str] | None = None,
    ) -> int:
        """Check ``sender`` in for every armed (run, city) this room serves, against
        that city's latest released stage. Returns how many were new.

        A new check-in is acknowledged on ``ack_event``: ✅ if the next gate counts
        it (or no gate is ahead), ⏳ if the next gate counts only check-ins after a
        later stage (bot.control.checkins)."""
        targets: list[tuple[ArmedRun, str, str]] = []
        if only is not None:
            targets = [only]
        else:
            for armed, city_id in await self._runs.runs_of_room(room_id):
                rows = await self._store.dispatches(armed.run.id)
                targets.append((armed, city_id, latest_released(armed.scenario, rows, city_id)))
        new = 0
        counted = False
        for armed, city_id, stage_id in targets:
            if await self._store.add_checkin(
                armed.run.id, city_id, stage_id, sender, now=self._clock.now(), via=via
            ):
                new += 1
                counted = counted or counted_by_next_gate(armed.scenario, stage_id)
        if new:
            log.info("check-in by %s in %s (%d new)", sender, room_id, new)
            if ack_event is not None:
                await self._react(room_id, ack_event, say.COUNTED if counted else say.TOO_EARLY)
        return new

    async def on_reaction(self, room_id: str, sender: str, reacts_to: str) -> None:
        """A reaction to any part of the latest stage in this room (its text or its
        map pin) is a check-in.

        The participant sees that it counted: in a direct chat, a short reply (only
        they read it). In a room the bot cannot answer a reaction in a way clients
        show (Element displays no reaction to a reaction, and a reply per person
        floods the room), so the bot adds its own ✅ (or ⏳) to the message that was
        reacted to, once: Element shows it in that message's reaction row, with the
        bot among those who reacted. A reaction to an older message gets nothing."""
        if sender == self._client.user_id:
            return
        delivery = await self._store.delivery_by_event(reacts_to)
        if delivery is None:
            return
        armed = self._runs.armed.get(delivery.key.run_id)
        if armed is None or delivery.key.stage_id.startswith("!"):
            return
        latest = await self._store.latest_text_delivery(armed.run.id, room_id)
        if latest is None or (latest.key.city_id, latest.key.stage_id) != (
            delivery.key.city_id,
            delivery.key.stage_id,
        ):
            return  # an old message: counting it would credit the wrong stage
        stage_id = delivery.key.stage_id
        if not await self.check_in(
            room_id, sender, via="reaction", only=(armed, delivery.key.city_id, stage_id)
        ):
            return
        counted = counted_by_next_gate(armed.scenario, stage_id)
        if await self._is_direct_chat(room_id):
            await self._say(room_id, reacts_to, say.checked_in(counted))
        else:
            await self._react(room_id, reacts_to, say.COUNTED if counted else say.TOO_EARLY)

    # -- private opt-in ----------------------------------------------------------------

    @command(
        "join",
        "Get a city's stages privately in this direct chat.",
        example="!join demo london",
        args=(SCENARIO, Arg("city", CITY_ARG)),
        who=Who.PARTICIPANT,
    )
    async def join(self, ctx: Context, args: Args) -> Reply | None:
        if not await self._is_direct_chat(ctx.room_id):
            return Reply(say.JOIN_IN_DIRECT_CHAT)
        room_id, sender = ctx.room_id, ctx.sender
        scenario_id, typed_city = args.text("scenario"), args.text("city")
        found = next(
            (ls.scenario for ls in self._library.all_valid() if ls.scenario.id == scenario_id),
            None,
        )
        city = next((c for c in found.cities if c.id == typed_city), None) if found else None
        if found is None or city is None or not city.direct:
            return Reply(say.no_direct_city(scenario_id, typed_city))
        current = await self._store.direct_rooms(scenario_id, city.id)
        mine = [s for s in await self._store.direct_of_room(room_id) if s[2] == sender]
        if city.direct_limit is not None and len(current) >= city.direct_limit and not mine:
            return Reply(say.city_full(city.name))
        await self._store.add_direct(scenario_id, city.id, sender, room_id, now=self._clock.now())
        self._dispatcher.remember_room(room_id)
        underway = False
        for armed in list(self._runs.armed.values()):
            if armed.scenario_id == scenario_id and armed.drill_room is None:
                rows = await self._store.dispatches(armed.run.id)
                underway = underway or bool(latest_released(armed.scenario, rows, city.id))
        return Reply(say.joined(city.name, underway))

    @command(
        "stop",
        "Stop getting stages here; the bot forgets you.",
        example="!stop",
        who=Who.PARTICIPANT,
    )
    async def stop(self, ctx: Context, args: Args) -> Reply | None:
        mine = await self._store.direct_of_room(ctx.room_id)
        if not any(user == ctx.sender for _, _, user in mine):
            if await self._is_direct_chat(ctx.room_id):
                return Reply(say.NOT_SIGNED_UP)
            return None  # in a city room: leaving the room is how one stops
        await self.forget_room(ctx.room_id)
        return Reply(say.STOPPED)

    async def forget_room(self, room_id: str) -> int:
        """Forget every private participation through this chat, at once."""
        self._dispatcher.forget_room(room_id)
        removed = await self._store.remove_direct_room(room_id)
        if removed:
            log.info("forgot %d private participation(s) in %s", removed, room_id)
        return removed

    async def on_member_left(self, room_id: str, user_id: str) -> None:
        """Someone left a room: if it was a private participant's chat, forget it
        and leave it too."""
        if user_id == self._client.user_id:
            return
        if any(user == user_id for _, _, user in await self._store.direct_of_room(room_id)):
            await self.forget_room(room_id)
            # Recorded first, so the sync takes the leave for ours, not a removal.
            await self._store.set_room(
                room_id, "left", now=self._clock.now(), note="private participant left"
            )
            await self._client.room_leave(room_id)
