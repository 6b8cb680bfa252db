"""Participants: check-ins, private opt-in by direct message, and leaving.

- ``!here`` in a city room (or a direct chat, or a drill room) checks the sender
  in for that city's latest released stage; a reaction to any part of the bot's
  latest stage (its text or its map pin) does the same. A person counts once per
  city and stage. In a room the bot acknowledges with reactions, never with a
  message: ✅ when the next gate counts the check-in, ⏳ when it will not.
- In a direct chat: ``!join <scenario> <city>`` (cities with ``direct: true``;
  in a city with pods the bot assigns the newcomer a pod: bot.scenario.assign),
  ``!role`` (bot.control.roles), ``!stop`` (forget me now), ``!help``.
- A check-in records the pod and role it counts for: a listed room's (from the
  scenario's listing), or the private participant's own (bot.control.lanes).
- A participant who leaves a direct chat is forgotten at once; nothing more is
  sent there.

Replies are in the participant's language (bot.i18n): in a city room, that
room's city's; in a direct chat with a participation, that city's for every
reply; ``!join`` naming a real city, that city's; otherwise English (a city
without ``language`` reads exactly as before languages existed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta

from bot.clock import Clock
from bot.control.args import CITY_ARG, SCENARIO, TEXT_ARG, Arg
from bot.control.checkins import counted_by_next_gate, latest_released
from bot.control.lanes import NO_LANE, Lane, lane_entries, room_lane
from bot.control.parse import MAX_COMMAND_CHARS, UsageError, parse
from bot.control.registry import Args, CommandDef, Context, Reply, Table, Who, command
from bot.control.roles import RoleCommands
from bot.control.said import Translated, translated
from bot.dispatch import Dispatcher
from bot.i18n import Catalogs, Translator, bidi
from bot.i18n import Reply as Said
from bot.i18n import messages as say
from bot.library import ScenarioLibrary
from bot.matrix.actions import MatrixActions
from bot.matrix.rooms import RoomRegistry
from bot.notify import Notifier
from bot.runs import ArmedRun, RunManager
from bot.runs.pods import assignment_key, pick_pod, stale_pod
from bot.scenario import City, Scenario
from bot.scenario.timeline import lane_id, split_lane, split_unit
from bot.store import Store

log = logging.getLogger(__name__)

# Event ids the bot has put its own acknowledgement on (a reaction to a stage
# message): one is enough, and Synapse refuses a second with the same key.
_ACKED_KEPT = 4096


_reply = translated


def help_entries(defs: Mapping[str, CommandDef]) -> tuple[say.CommandHelp, ...]:
    """!help's lines, from the registry: each command's usage and summary."""
    return tuple(
        say.CommandHelp(
            say.Usage(f"!{d.name}", tuple((a.shown or a.name, a.optional) for a in d.args)),
            d.summary,
        )
        for d in defs.values()
    )


def help_reply(t: Translator, defs: Mapping[str, CommandDef]) -> Said:
    """The participant ``!help``, generated from the registry, in ``t``'s language."""
    return say.help_text(t, help_entries(defs))


def usage_reply(t: Translator, error: UsageError, defs: Mapping[str, CommandDef]) -> Said:
    """A participant's mistyped command, answered in ``t``'s language."""
    spec = defs.get(error.name) if error.name else None
    if error.problem == "too_long":
        return say.command_too_long(t, limit=MAX_COMMAND_CHARS)
    if error.problem == "invisible":
        return say.invisible_characters(t)
    if spec is None or error.problem == "unknown":
        return say.unknown_command(t, typed=error.argument)
    usage = help_entries({spec.name: spec})[0].usage
    arg = next((a for a in spec.args if a.name == error.argument), None)
    # Named as the parser names it: "missing city", "city must be a city id".
    named = None if arg is None else arg.name if error.problem == "missing" else arg.shown
    return say.usage_error(
        t,
        problem=error.problem,
        usage=usage,
        argument=named or (arg.name if arg else None),
        kind=arg.kind if arg else None,
    )


class Participants:
    def __init__(
        self,
        *,
        matrix: MatrixActions,
        store: Store,
        runs: RunManager,
        library: ScenarioLibrary,
        dispatcher: Dispatcher,
        notifier: Notifier,
        clock: Clock,
        catalogs: Catalogs,
        rooms: RoomRegistry | None = None,
        prepare_lead: timedelta = timedelta(seconds=3),
    ) -> None:
        self._matrix = matrix
        self._store = store
        self._runs = runs
        self._library = library
        self._dispatcher = dispatcher
        self._notifier = notifier
        self._clock = clock
        self._catalogs = catalogs
        self._rooms = rooms  # resolves listed aliases and upgrades (None: ids as listed)
        self._acked: dict[str, None] = {}
        self._joining = asyncio.Lock()
        self._resolved_lanes: dict[tuple[int, str, str], Lane] = {}
        self.roles = RoleCommands(
            store=store,
            runs=runs,
            scenario_of=self._scenario,
            translator=self._translator,
            is_direct_chat=self._is_direct_chat,
            clock=clock,
            lead=prepare_lead,
        )
        self.table = Table(Who.PARTICIPANT)
        self.table.add(self)
        self.table.add(self.roles)

    async def _is_direct_chat(self, room_id: str) -> bool:
        members = await self._matrix.members(room_id)
        return members is not None and len(members) <= 2

    async def _react(self, room_id: str, event_id: str, key: str) -> None:
        if event_id in self._acked:
            return
        self._acked[event_id] = None
        if len(self._acked) > _ACKED_KEPT:
            del self._acked[next(iter(self._acked))]
        # A courtesy: MatrixActions.react never raises and is never retried.
        await self._matrix.react(room_id, event_id, key)

    async def _say(self, room_id: str, event_id: str | None, said: Said) -> None:
        await self._notifier.send(room_id, said.content(reply_to=event_id))

    # -- which language ----------------------------------------------------------------

    def _city(self, scenario_id: str, city_id: str) -> City | None:
        """The city as the scenario file says now (what ``!join`` has always read)."""
        for ls in self._library.all_valid():
            if ls.scenario.id == scenario_id:
                return next((c for c in ls.scenario.cities if c.id == city_id), None)
        return None

    def _scenario(self, scenario_id: str) -> Scenario | None:
        """The scenario as the live run sends by (in memory), else its file."""
        armed = [a for a in list(self._runs.armed.values()) if a.scenario_id == scenario_id]
        for a in sorted(armed, key=lambda a: a.drill_room is not None):
            return a.scenario
        for ls in self._library.all_valid():
            if ls.scenario.id == scenario_id:
                return ls.scenario
        return None

    def _speaking(self, scenario_id: str, city_id: str) -> City | None:
        """The city whose language a participation speaks: an armed run's (in memory,
        what the run sends by), else the file's."""
        for armed in list(self._runs.armed.values()):
            if armed.scenario_id == scenario_id:
                return next((c for c in armed.scenario.cities if c.id == city_id), None)
        return self._city(scenario_id, city_id)

    def _of(self, city: City | None) -> Translator:
        return self._catalogs.translator(city.language if city else None)

    async def _translator(self, room_id: str) -> Translator:
        """The language of this room: its participation's city (a direct chat),
        else the city it serves (a city room), else English."""
        for scenario_id, city_id, _user in await self._store.participants.direct_of_room(room_id):
            return self._of(self._speaking(scenario_id, city_id))
        for armed, city_id in await self._runs.runs_of_room(room_id):
            return self._of(armed.scenario.city(city_id))
        for ls in self._library.all_valid():  # a city (or pod) room of a scenario not armed now
            for city in ls.scenario.cities:
                if room_lane(city, room_id) is not None:
                    return self._of(city)
        return self._catalogs.translator(None)

    # -- messages ----------------------------------------------------------------------

    async def on_message(self, room_id: str, event_id: str, sender: str, body: str) -> None:
        # A command copied from a right-to-left reply brings direction marks at its
        # ends; marks inside it are still refused by the parser.
        parsed = parse(bidi.strip_edges(body), self.table.defs)
        if parsed is None:
            return
        if isinstance(parsed, UsageError):
            if await self._is_direct_chat(room_id):
                t = await self._translator(room_id)
                await self._say(room_id, event_id, usage_reply(t, parsed, self.table.defs))
            return  # in a city room, stay quiet: no message per person
        spec = self.table.defs[parsed.name]
        ctx = Context(room_id, sender, event_id)
        reply = await self.table.handlers[parsed.name](ctx, Args(spec, parsed.values, parsed.args))
        if isinstance(reply, Translated) and reply.said is not None:
            await self._say(room_id, event_id, reply.said)
        elif reply is not None:  # every participant reply is translated; kept for safety
            await self._notifier.reply(room_id, event_id, reply.text)

    # Words after !here ("I'm with 3 friends") are allowed and not kept: the
    # sender counts once, as with !here alone.
    @command(
        "here",
        say.HERE_SUMMARY,
        example="!here",
        args=(Arg("words", TEXT_ARG, optional=True),),
        who=Who.PARTICIPANT,
    )
    async def here(self, ctx: Context, args: Args) -> Reply | None:
        await self.check_in(ctx.room_id, ctx.sender, via="here", ack_event=ctx.event_id)
        return None

    @command("help", say.HELP_SUMMARY, example="!help", who=Who.PARTICIPANT)
    async def help(self, ctx: Context, args: Args) -> Reply | None:
        if not await self._is_direct_chat(ctx.room_id):
            return None
        defs = self.table.defs
        if not await self.roles.offers_roles(ctx.room_id):
            # Only where the action has roles: elsewhere !help reads as before.
            defs = {name: d for name, d in defs.items() if name != "role"}
        return _reply(help_reply(await self._translator(ctx.room_id), defs))

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
        the latest released stage of the city (of the pod, in a city with pods).
        Returns how many were new. ``only``: (run, lane, unit) of the stage
        message reacted to (``hk/mongkok``, ``spot@front``: bot.scenario.timeline).

        Each check-in records the pod and role it counts for (:meth:`_lane`).
        A new check-in is acknowledged on ``ack_event``: ✅ if the next gate counts
        it (or no gate is ahead), ⏳ if the next gate counts only check-ins after a
        later stage (bot.control.checkins)."""
        targets: list[tuple[ArmedRun, str, str, Lane]] = []
        if only is not None:
            armed, lane_key, unit = only
            city_id, pod_id = split_lane(lane_key)
            lane = await self._lane(armed, city_id, room_id, sender, pod_id)
            targets = [(armed, city_id, split_unit(unit)[0], lane)]
        else:
            for armed, city_id in await self._runs.runs_of_room(room_id):
                lane = await self._lane(armed, city_id, room_id, sender)
                rows = await self._store.ledger.dispatches(armed.run.id)
                latest = latest_released(armed.scenario, rows, lane_id(city_id, lane.pod_id))
                targets.append((armed, city_id, latest, lane))
        new = 0
        counted = False
        for armed, city_id, stage_id, lane in targets:
            if await self._store.participants.add_checkin(
                armed.run.id,
                city_id,
                stage_id,
                sender,
                now=self._clock.now(),
                via=via,
                pod_id=lane.pod_id,
                role_id=lane.role_id,
            ):
                new += 1
                counted = counted or counted_by_next_gate(armed.scenario, stage_id)
        if new:
            log.info("check-in by %s in %s (%d new)", sender, room_id, new)
            if ack_event is not None:
                mark = say.COUNTED if counted else say.TOO_EARLY
                await self._react(room_id, ack_event, mark)
        return new

    async def _lane(
        self, armed: ArmedRun, city_id: str, room_id: str, sender: str, pod_id: str | None = None
    ) -> Lane:
        """The pod and role a check-in by ``sender`` in ``room_id`` counts for: in
        their own private chat, the pod the bot assigned and the role they chose;
        in a listed room, the room's pod and role from the scenario's listing
        (``pod_id``: the pod of the stage message reacted to, when known)."""
        scenario = armed.scenario
        city = scenario.city(city_id)
        if not (city.pods or scenario.roles):
            return NO_LANE  # as before pods and roles: nothing more to look up
        if armed.drill_room is not None:
            return Lane(pod_id, None)  # one drill room plays every pod: no listing says
        member = await self._store.participants.direct_member(armed.scenario_id, city_id, sender)
        if member is not None and member.room_id == room_id:
            role = member.role_id if member.role_id in scenario.role_ids else None
            return Lane(member.pod_id, role)
        key = (armed.run.id, city_id, room_id)
        listed = room_lane(city, room_id) or self._resolved_lanes.get(key)
        if listed is None and self._rooms is not None:
            # Listed by alias, or upgraded since: the rooms each entry serves now
            # (kept for the run: a flood of check-ins must not repeat the lookups).
            for pod, entry, role in lane_entries(city):
                if room_id in await self._rooms.served_rooms([entry], refresh=False):
                    listed = self._resolved_lanes[key] = Lane(pod, role)
                    break
        if listed is None:
            return Lane(pod_id, None)
        return Lane(pod_id or listed.pod_id, listed.role_id)

    async def on_reaction(self, room_id: str, sender: str, reacts_to: str) -> None:
        """A reaction to any part of the latest stage in this room (its text or its
        map pin) is a check-in.

        The participant sees that it counted: in a direct chat, a short reply (only
        they read it). In a room the bot cannot answer a reaction in a way clients
        show (Element displays no reaction to a reaction, and a reply per person
        floods the room), so the bot adds its own ✅ (or ⏳) to the message that was
        reacted to, once: Element shows it in that message's reaction row, with the
        bot among those who reacted. A reaction to an older message gets nothing."""
        if sender == self._matrix.user_id:
            return
        delivery = await self._store.ledger.delivery_by_event(reacts_to)
        if delivery is None:
            return
        armed = self._runs.armed.get(delivery.key.run_id)
        if armed is None or delivery.key.stage_id.startswith("!"):
            return
        latest = await self._store.ledger.latest_text_delivery(armed.run.id, room_id)
        if latest is None or (latest.key.city_id, latest.key.stage_id) != (
            delivery.key.city_id,
            delivery.key.stage_id,
        ):
            return  # an old message: counting it would credit the wrong stage
        lane, unit = delivery.key.city_id, delivery.key.stage_id
        if not await self.check_in(room_id, sender, via="reaction", only=(armed, lane, unit)):
            return
        counted = counted_by_next_gate(armed.scenario, split_unit(unit)[0])
        if await self._is_direct_chat(room_id):
            t = self._of(armed.scenario.city(split_lane(lane)[0]))
            await self._say(room_id, reacts_to, say.checked_in(t, counted=counted))
        else:
            await self._react(room_id, reacts_to, say.COUNTED if counted else say.TOO_EARLY)

    # -- private opt-in ----------------------------------------------------------------

    @command(
        "join",
        say.JOIN_SUMMARY,
        example="!join demo london",
        args=(SCENARIO, Arg("city", CITY_ARG)),
        who=Who.PARTICIPANT,
    )
    async def join(self, ctx: Context, args: Args) -> Reply | None:
        if not await self._is_direct_chat(ctx.room_id):
            # Said where others read it: in the room's language, not the named city's.
            return _reply(say.join_in_direct_chat(await self._translator(ctx.room_id)))
        room_id, sender = ctx.room_id, ctx.sender
        scenario_id, typed_city = args.text("scenario"), args.text("city")
        city = self._city(scenario_id, typed_city)
        t = self._of(city) if city else await self._translator(room_id)
        if city is None or not city.direct:
            return _reply(say.no_such_city(t, scenario_id=scenario_id, city_id=typed_city))
        current = await self._store.participants.direct_rooms(scenario_id, city.id)
        mine = [s for s in await self._store.participants.direct_of_room(room_id) if s[2] == sender]
        if city.direct_limit is not None and len(current) >= city.direct_limit and not mine:
            return _reply(say.city_full(t, city_name=city.name))
        # Pods as the run sends by (an armed run's), else the file's.
        lanes_city = self._speaking(scenario_id, city.id) or city
        async with self._joining:  # sizes read and the row written as one step
            pod_id = await self._pod_for(scenario_id, lanes_city, sender)
            if lanes_city.pods and pod_id is None:
                return _reply(say.city_full(t, city_name=city.name))
            await self._store.participants.add_direct(
                scenario_id, city.id, sender, room_id, now=self._clock.now(), pod_id=pod_id
            )
            # add_direct keeps a registered person's pod: a stale one is replaced.
            await self._store.participants.set_pod(scenario_id, city.id, sender, pod_id)
        self._dispatcher.remember_room(room_id)
        underway = False
        for armed in list(self._runs.armed.values()):
            if armed.scenario_id == scenario_id and armed.drill_room is None:
                rows = await self._store.ledger.dispatches(armed.run.id)
                underway = underway or bool(latest_released(armed.scenario, rows, city.id))
        return _reply(
            say.joined(t, city_name=city.name, underway=underway, pod=bool(lanes_city.pods))
        )

    async def _pod_for(self, scenario_id: str, city: City, sender: str) -> str | None:
        """The pod ``sender`` is in or joins: the one they have if it is a pod of
        the city (joining again keeps it), else the assignment's (None: every
        pod is full, or no pods): one who joined before the city had pods, or
        whose pod was removed, gets one now (bot/runs/pods.py)."""
        if not city.pods:
            return None
        member = await self._store.participants.direct_member(scenario_id, city.id, sender)
        if member is not None and not stale_pod(city, member.pod_id):
            return member.pod_id
        key = await assignment_key(self._store, scenario_id, now=self._clock.now())
        sizes = await self._store.participants.pod_sizes(scenario_id, city.id)
        pod_id = pick_pod(key, city, sizes)
        if pod_id is not None:
            # Which pod is not logged: who is where stays in the store only.
            log.info("private participant assigned to a pod of %s", city.id)
        return pod_id

    @command(
        "stop",
        say.STOP_SUMMARY,
        example="!stop",
        who=Who.PARTICIPANT,
    )
    async def stop(self, ctx: Context, args: Args) -> Reply | None:
        mine = await self._store.participants.direct_of_room(ctx.room_id)
        if not any(user == ctx.sender for _, _, user in mine):
            if await self._is_direct_chat(ctx.room_id):
                return _reply(say.not_signed_up(await self._translator(ctx.room_id)))
            return None  # in a city room: leaving the room is how one stops
        t = await self._translator(ctx.room_id)  # before the chat's city is forgotten
        await self.forget_room(ctx.room_id)
        return _reply(say.stopped(t))

    async def forget_room(self, room_id: str) -> int:
        """Forget every private participation through this chat, at once."""
        self._dispatcher.forget_room(room_id)
        removed = await self._store.participants.remove_direct_room(room_id)
        if removed:
            log.info("forgot %d private participation(s) in %s", removed, room_id)
        return removed

    async def on_member_left(self, room_id: str, user_id: str) -> None:
        """Someone left a room: if it was a private participant's chat, forget it
        and leave it too."""
        if user_id == self._matrix.user_id:
            return
        if any(
            user == user_id for _, _, user in await self._store.participants.direct_of_room(room_id)
        ):
            await self.forget_room(room_id)
            # Recorded first, so the sync takes the leave for ours, not a removal.
            await self._store.rooms.set(
                room_id, "left", now=self._clock.now(), note="private participant left"
            )
            await self._matrix.leave(room_id)
