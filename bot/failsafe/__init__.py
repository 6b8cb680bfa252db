"""The dead-man's switch (issue 13): the homeserver as the last member of the crew.

Pure planning (:mod:`~bot.failsafe.plan`); the delayed events themselves are
scheduled through :mod:`bot.matrix.delayed` and kept in
:mod:`bot.store.delayed`; the running bot drives it from :mod:`bot.runs.failsafe`
(docs/crew.md, "The switch").
"""

from bot.failsafe.plan import (
    LIVE,
    DelayedItem,
    DelayedRow,
    DelayedState,
    FailsafePlan,
    Limits,
    Steer,
    SteerPlan,
    Target,
    after_release,
    arm_lines,
    blocking_purge,
    check_after,
    delayed_content,
    delayed_may,
    delayed_sources,
    delayed_txn_id,
    peak_scheduled,
    plan_failsafe,
    steer,
)

__all__ = [
    "LIVE",
    "DelayedItem",
    "DelayedRow",
    "DelayedState",
    "FailsafePlan",
    "Limits",
    "Steer",
    "SteerPlan",
    "Target",
    "after_release",
    "arm_lines",
    "blocking_purge",
    "check_after",
    "delayed_content",
    "delayed_may",
    "delayed_sources",
    "delayed_txn_id",
    "peak_scheduled",
    "plan_failsafe",
    "steer",
]
