"""SQLite persistence: the schedule's and the ledger's source of truth."""

from bot.store.store import (
    DeliveryRow,
    DispatchRow,
    PlannedDispatch,
    RunRow,
    Store,
    StoreError,
)

__all__ = ["DeliveryRow", "DispatchRow", "PlannedDispatch", "RunRow", "Store", "StoreError"]
