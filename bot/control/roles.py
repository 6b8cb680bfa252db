"""``!role``: a private participant's role (docs/participants.md, "Roles and pods").

- ``!role`` alone lists the scenario's roles with what each involves (``about``)
  and the role the person has now.
- ``!role <id>`` takes a role; ``!role none`` clears it (``none`` is reserved:
  no scenario may name a role so).
- A role may change until the first stage of the person's city whose sending
  depends on it (:func:`bot.control.lanes.role_locked`) has been released in the
  live run (or is due within the run's prepare lead: its texts are decided
  then); after that the answer is a clear refusal, and ``!stop`` still works.

It is answered in a direct chat only (in a room a role comes from the scenario's
room listing, and the bot sends no message per person there). The command is
in ``!help`` only where the person's action offers roles, so the help of an
action without roles reads as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bot.clock import Clock
from bot.control.args import SLUG_ARG, Arg
from bot.control.lanes import role_locked
from bot.control.registry import Args, Context, Reply, Who, command
from bot.control.said import translated
from bot.i18n import Reply as Said
from bot.i18n import Translator
from bot.i18n import messages as say
from bot.runs import RunManager
from bot.scenario import Scenario
from bot.store import Store

log = logging.getLogger(__name__)

LOCK_MARGIN = timedelta(seconds=2)
NO_ROLE = "none"
"""``!role none``: clear one's role (semantics_pods reserves the id)."""


class RoleCommands:
    def __init__(
        self,
        *,
        store: Store,
        runs: RunManager,
        scenario_of: Callable[[str], Scenario | None],
        translator: Callable[[str], Awaitable[Translator]],
        is_direct_chat: Callable[[str], Awaitable[bool]],
        clock: Clock,
        lead: timedelta,
    ) -> None:
        self._store = store
        self._runs = runs
        self._scenario_of = scenario_of
        self._translator = translator
        self._is_direct_chat = is_direct_chat
        self._clock = clock
        # The run's prepare lead and a margin for the timer: from then on the
        # stage's rooms and texts are decided (bot.control.lanes.role_locked).
        self._lead = lead + LOCK_MARGIN

    async def offers_roles(self, room_id: str) -> bool:
        """Whether a participation through this chat is in an action with roles
        (then ``!help`` there lists ``!role``)."""
        for scenario_id, _city, _user in await self._store.participants.direct_of_room(room_id):
            scenario = self._scenario_of(scenario_id)
            if scenario is not None and scenario.roles:
                return True
        return False

    async def locked(self, scenario: Scenario, city_id: str) -> bool:
        """Whether the live run of ``scenario`` has released, for ``city_id``, a
        stage that depends on the role (a drill sends nothing to private chats)."""
        for armed in list(self._runs.armed.values()):
            if armed.scenario_id == scenario.id and armed.drill_room is None:
                rows = await self._store.ledger.dispatches(armed.run.id)
                now = self._clock.now()
                if role_locked(armed.scenario, rows, city_id, now=now, lead=self._lead):
                    return True
        return False

    @command(
        "role",
        say.ROLE_SUMMARY,
        example="!role support",
        args=(Arg("role", SLUG_ARG, optional=True),),
        who=Who.PARTICIPANT,
    )
    async def role(self, ctx: Context, args: Args) -> Reply | None:
        if not await self._is_direct_chat(ctx.room_id):
            return None  # a room's role is the scenario's; no message per person
        t = await self._translator(ctx.room_id)
        mine = [
            (scenario_id, city_id)
            for scenario_id, city_id, user in await self._store.participants.direct_of_room(
                ctx.room_id
            )
            if user == ctx.sender
        ]
        if not mine:
            return translated(say.role_needs_join(t))
        offered = [
            (scenario, city_id)
            for scenario_id, city_id in sorted(mine)
            if (scenario := self._scenario_of(scenario_id)) is not None and scenario.roles
        ]
        if not offered:
            return translated(say.no_roles(t))
        word = args.opt_text("role")
        if word is None:
            return translated(await self._list(t, ctx.sender, *offered[0]))
        scenario = offered[0][0]
        if word != NO_ROLE and word not in scenario.role_ids:
            return translated(say.role_unknown(t, role_id=word, ids=scenario.role_ids))
        chosen = None if word == NO_ROLE else word
        # Every participation of this chat that offers the role (one, nearly always);
        # none changes if any is past the stage that needs it: nothing half-done.
        targets = [(s, c) for s, c in offered if chosen is None or chosen in s.role_ids]
        for s, c in targets:
            if await self.locked(s, c):
                return translated(say.role_locked(t))
        for s, c in targets:
            await self._store.participants.set_role(s.id, c, ctx.sender, chosen)
        log.info("role changed in %d participation(s)", len(targets))  # not which: private
        if chosen is None:
            return translated(say.role_cleared(t))
        name = next(r.name for r in scenario.roles or () if r.id == chosen)
        return translated(say.role_chosen(t, role_name=name))

    async def _list(self, t: Translator, user: str, scenario: Scenario, city_id: str) -> Said:
        member = await self._store.participants.direct_member(scenario.id, city_id, user)
        roles = scenario.roles or ()
        current = member.role_id if member is not None else None
        return say.role_list(
            t,
            roles=[say.RoleLine(r.id, r.name, r.about) for r in roles],
            current=next((r.name for r in roles if r.id == current), None),
            locked=await self.locked(scenario, city_id),
        )
