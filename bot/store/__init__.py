"""SQLite persistence: the schedule's and the ledger's source of truth.

One database object (:mod:`bot.store.db`: connection, migrations, turns,
``transaction()``) and a module per aggregate: ``runs``, ``ledger`` (dispatches
and deliveries), ``rooms``, ``steering`` (holds, delays, redirects),
``participants`` (check-ins, private participants), ``audit``, ``delayed`` (the
dead-man's switch). :class:`Store` holds them as attributes.
"""

from bot.store.db import Database, StoreConflict, StoreError
from bot.store.ledger import DeliveryRow, DispatchRow, PlannedDispatch
from bot.store.runs import RunRow
from bot.store.store import Store

__all__ = [
    "Database",
    "DeliveryRow",
    "DispatchRow",
    "PlannedDispatch",
    "RunRow",
    "Store",
    "StoreConflict",
    "StoreError",
]
