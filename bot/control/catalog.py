"""Every command the bot knows, as declared by its handlers: the control room's
and the participants'. For ``!help``, the docs test and the bad-input corpus;
the bot itself builds the same tables from its live command groups."""

from __future__ import annotations

from bot.control.commands import CoreCommands
from bot.control.crew import CrewCommands
from bot.control.participants import Participants
from bot.control.registry import CommandDef, commands_of
from bot.control.roles import RoleCommands
from bot.control.status import StatusCommands
from bot.control.steering import Steering

CONTROL_COMMANDS: dict[str, CommandDef] = commands_of(CoreCommands, StatusCommands, Steering)
PARTICIPANT_COMMANDS: dict[str, CommandDef] = commands_of(Participants)
ROLE_COMMANDS: dict[str, CommandDef] = commands_of(RoleCommands)
"""Participant commands of actions with roles (``!help`` lists them only there)."""
CREW_COMMANDS: dict[str, CommandDef] = commands_of(CrewCommands)
"""Control-room commands a bot has only when its config has a ``crew``."""
