"""Armed runs: arm, disarm, restore after a restart, fire stages, and steer.

A *run* is one arming of a scenario (or one drill of it), identified by the
event id of the command that armed it (bot.ids). Its dispatches (lane x
unit: city x stage, or pod x role variant; with their instants) are rows in
the store; timers are rebuilt from those rows on every start. The package's
files are named for what they do:

- ``arming``: preview (no side effects), arm, disarm, restore;
- ``instant``: what happens at a stage's instant, one pure function;
- ``release``: the instant's shell (timers, fire, fan-out, reports, abort);
- ``steering``: hold, resume, delay, release now, redirect and its correction;
- ``lanes``: what a row's lane and unit mean, and which rows a target means;
- ``supervisor``: tracked background work; ``options``: ``!arm``'s words.
"""

from bot.ids import ABORT_STAGE
from bot.runs.arming import ArmOutcome
from bot.runs.manager import RunManager
from bot.runs.model import DEFAULT_ABORT_TEXT, ArmedRun, ArmError, ArmPreview, mentions_place
from bot.runs.options import ArmOptions

__all__ = [
    "ABORT_STAGE",
    "DEFAULT_ABORT_TEXT",
    "ArmError",
    "ArmOptions",
    "ArmOutcome",
    "ArmPreview",
    "ArmedRun",
    "RunManager",
    "mentions_place",
]
