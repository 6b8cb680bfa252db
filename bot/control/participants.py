"""Participants: check-ins, private opt-in by direct message, and leaving.

- ``!here`` in a city room (or a direct chat, or a drill room) checks the sender
  in for that city's latest released stage; a reaction to the bot's latest stage
  message does the same. A person counts once per city and stage; the bot
  acknowledges a new ``!here`` with a reaction, never with a message.
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
from bot.control.parse import ArgSpec, Command, CommandSpec, UsageError, parse
from bot.dispatch import Dispatcher
from bot.ledger import DispatchState, Part
from bot.library import ScenarioLibrary
from bot.notify import Notifier
from bot.runs import ArmedRun, RunManager
from bot.store import Store

log = logging.getLogger(__name__)

ACK = "✅"

PARTICIPANT_SPECS = {
    s.name: s
    for s in (
        CommandSpec("here", (), "Check in for your city's current stage.", "!here", True),
        CommandSpec(
            "join",
            (ArgSpec("scenario"), ArgSpec("city")),
            "Get a city's stages privately in this direct chat.",
            "!join demo london",
            True,
        ),
        CommandSpec("stop", (), "Stop getting stages here; the bot forgets you.", "!stop", True),
        CommandSpec("help", (), "What you can say to the bot.", "!help", True),
    )
}

HELP = (
    "Blossom: you get each stage of the action here when it is released.\n"
    "!join <scenario> <city> — get a city's stages privately in this chat\n"
    "!here — check in (or react to the latest stage message)\n"
    "!stop — stop at once; the bot forgets you"
)


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

    async def _is_direct_chat(self, room_id: str) -> bool:
        resp = await self._client.joined_members(room_id)
        if not isinstance(resp, JoinedMembersResponse):
            return False
        return len(resp.members) <= 2

    async def _react(self, room_id: str, event_id: str) -> None:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": ACK}}
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
        parsed = parse(body, PARTICIPANT_SPECS)
        if parsed is None:
            return
        if isinstance(parsed, UsageError):
            if await self._is_direct_chat(room_id):
                await self._say(room_id, event_id, parsed.message)
            return  # in a city room, stay quiet: no message per person
        if parsed.name == "here":
            await self.check_in(room_id, sender, via="here", ack_event=event_id)
        elif parsed.name == "join":
            await self._join(room_id, event_id, sender, parsed)
        elif parsed.name == "stop":
            await self._stop(room_id, event_id, sender)
        elif parsed.name == "help" and await self._is_direct_chat(room_id):
            await self._say(room_id, event_id, HELP)

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
        that city's latest released stage. Returns how many were new."""
        targets: list[tuple[ArmedRun, str, str]] = []
        if only is not None:
            targets = [only]
        else:
            for armed, city_id in await self._runs.runs_of_room(room_id):
                targets.append((armed, city_id, await self._latest_stage(armed, city_id)))
        new = 0
        for armed, city_id, stage_id in targets:
            if await self._store.add_checkin(
                armed.run.id, city_id, stage_id, sender, now=self._clock.now(), via=via
            ):
                new += 1
        if new:
            log.info("check-in by %s in %s (%d new)", sender, room_id, new)
            if ack_event is not None:
                await self._react(room_id, ack_event)
        return new

    async def _latest_stage(self, armed: ArmedRun, city_id: str) -> str:
        order = {s.id: i for i, s in enumerate(armed.scenario.stages)}
        released = [
            d.stage_id
            for d in await self._store.dispatches(armed.run.id)
            if d.city_id == city_id
            and d.stage_id in order
            and d.state in (DispatchState.RELEASED, DispatchState.RELEASING)
        ]
        return max(released, key=order.__getitem__) if released else ""

    async def on_reaction(self, room_id: str, sender: str, reacts_to: str) -> None:
        """A reaction to the bot's latest stage message in this room is a check-in."""
        if sender == self._client.user_id:
            return
        delivery = await self._store.delivery_by_event(reacts_to)
        if delivery is None or delivery.key.part is not Part.TEXT:
            return
        armed = self._runs.armed.get(delivery.key.run_id)
        if armed is None or delivery.key.stage_id.startswith("!"):
            return
        latest = await self._store.latest_text_delivery(armed.run.id, room_id)
        if latest is None or latest.event_id != reacts_to:
            return  # an old message: counting it would credit the wrong stage
        await self.check_in(
            room_id,
            sender,
            via="reaction",
            only=(armed, delivery.key.city_id, delivery.key.stage_id),
        )

    # -- private opt-in ----------------------------------------------------------------

    async def _join(self, room_id: str, event_id: str, sender: str, command: Command) -> None:
        if not await self._is_direct_chat(room_id):
            await self._say(room_id, event_id, "Send !join in a direct chat with the bot.")
            return
        scenario_id, city_id = command.args["scenario"], command.args["city"]
        found = next(
            (ls.scenario for ls in self._library.all_valid() if ls.scenario.id == scenario_id),
            None,
        )
        city = next((c for c in found.cities if c.id == city_id), None) if found else None
        if found is None or city is None or not city.direct:
            await self._say(
                room_id,
                event_id,
                f"There is no city {city_id} open for private joining in {scenario_id}.",
            )
            return
        current = await self._store.direct_rooms(scenario_id, city_id)
        mine = [s for s in await self._store.direct_of_room(room_id) if s[2] == sender]
        if city.direct_limit is not None and len(current) >= city.direct_limit and not mine:
            await self._say(room_id, event_id, f"{city.name} is full for private participants.")
            return
        await self._store.add_direct(scenario_id, city_id, sender, room_id, now=self._clock.now())
        self._dispatcher.remember_room(room_id)
        await self._say(
            room_id,
            event_id,
            f"You're in for {city.name}. Each stage will come to this chat when it is "
            "released. Say !here to check in, !stop to leave at once.",
        )

    async def _stop(self, room_id: str, event_id: str, sender: str) -> None:
        if not any(user == sender for _, _, user in await self._store.direct_of_room(room_id)):
            if await self._is_direct_chat(room_id):
                await self._say(room_id, event_id, "You are not signed up in this chat.")
            return  # in a city room: leaving the room is how one stops
        await self.forget_room(room_id)
        await self._say(room_id, event_id, "Stopped. You will get nothing more from Blossom here.")

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
