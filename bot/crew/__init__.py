"""A crew of bots covering for each other across homeservers (docs/crew.md).

Pure pieces only, so far: who is a member (:mod:`~bot.crew.members`), who sends
where and when (:mod:`~bot.crew.duty`), heartbeats and their rate
(:mod:`~bot.crew.heartbeat`), what a room already shows (:mod:`~bot.crew.look`)
and one gate decision per city (:mod:`~bot.crew.gate`) are pure. The one shell,
:mod:`~bot.crew.roster`, publishes and reads heartbeats through a port
(``bot.matrix.crew_state``); the bot does not start it or act on a crew yet.
"""

from bot.crew.duty import CrewView, Duty, precedence, redactor
from bot.crew.heartbeat import Heartbeat, parse_heartbeat, sighting
from bot.crew.members import Crew, Member, UnknownMembers, unknown_members

__all__ = [
    "Crew",
    "CrewView",
    "Duty",
    "Heartbeat",
    "Member",
    "UnknownMembers",
    "parse_heartbeat",
    "precedence",
    "redactor",
    "sighting",
    "unknown_members",
]
