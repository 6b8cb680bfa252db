"""Ending child tasks without swallowing one's own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` is the common way
to end a helper task, and it is wrong: if the *caller* is cancelled while it
waits there (a shutdown arriving at that moment), the suppress swallows the
caller's cancellation too and it carries on. That kept the sync loop alive
after SIGTERM (issue 17, defect 4). ``asyncio.wait`` never raises the awaited
tasks' errors or cancellations, only the caller's own.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

F = TypeVar("F", bound=asyncio.Future[Any])


async def cancel_and_wait(*tasks: F | None, within_s: float | None = None) -> set[F]:
    """Cancel ``tasks`` (None entries are skipped) and wait for them to end, at
    most ``within_s`` seconds. Returns the ones still running. Their outcomes are
    read, so no "exception was never retrieved" is logged; the caller's own
    cancellation propagates."""
    pending = {t for t in tasks if t is not None}
    for task in pending:
        task.cancel()  # a no-op for a finished task
    if not pending:
        return set()
    await asyncio.wait(pending, timeout=within_s)
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()
    return {t for t in pending if not t.done()}
