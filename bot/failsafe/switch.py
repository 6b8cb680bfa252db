"""The switch's shell: the request sequences arming, releasing and steering call.
Each walks the table's states around one request, so a crash at any point leaves
a row the next call can finish (docs/crew.md, "The switch").

- :func:`schedule_due` asks the homeserver for every row whose time has come
  (at arming, later for deferred ones, and again after a restart);
- :func:`cancel` cancels rows first thing in a steering command, and after a
  dispatch is in the room (:func:`bot.failsafe.plan.after_release`);
- :func:`cancel_orphans`, at start only, cancels delayed events of this account
  that the table does not know (scheduled by a request whose answer was lost).

Outcomes are counts and ids of deliveries, never delay ids or content.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.failsafe.plan import DelayedRow, DelayedState
from bot.ledger import DeliveryKey
from bot.matrix.delayed import (
    DelayedEvents,
    DelayedEventsError,
    DelayedEventsRefused,
    DelayedRequestFailed,
    SentAtOnce,
)
from bot.retry import is_rate_limited, is_transient
from bot.store.delayed import DelayedStore, DelayedStoreError

log = logging.getLogger(__name__)

# (event type, content) to schedule for a delivery: the real send's content with
# its tag (plan.delayed_content), encrypted for an encrypted room
# (bot.matrix.delayed.encrypt_for_room).
ContentFor = Callable[[DeliveryKey], Awaitable[tuple[str, dict[str, Any]]]]


@dataclass
class Outcome:
    """What a batch did. ``refused``: the reason the server gave (a refusal stops
    the batch, e.g. the feature gone; the rows left are still PENDING: cancel them
    to drop the failsafe); ``sent_at_once``: rows the server sent immediately
    (record them as released, tell the organiser); ``retry``: rows left for the
    next call (rate limits, outages); ``failed``: rows the server will never take."""

    done: list[DeliveryKey] = field(default_factory=list)
    retry: list[DeliveryKey] = field(default_factory=list)
    failed: list[DeliveryKey] = field(default_factory=list)
    gone: list[DeliveryKey] = field(default_factory=list)
    sent_at_once: list[tuple[DeliveryKey, str]] = field(default_factory=list)
    refused: str | None = None

    def trouble(self) -> str:
        """What went wrong, in counts (never ids or content), each part starting
        "; failsafe: "; empty if nothing did."""
        said: list[str] = []
        if self.sent_at_once:
            said.append(
                f"the homeserver sent {len(self.sent_at_once)} delayed events AT ONCE "
                "instead of delaying them; the failsafe is off for this server"
            )
        if self.refused:
            said.append(f"the homeserver refused the failsafe ({self.refused})")
        if self.retry:
            said.append(
                f"{len(self.retry)} delayed event requests failed and are retried"
                " (until then the server may still send those)"
            )
        if self.failed:
            said.append(f"{len(self.failed)} delayed events could not be scheduled")
        return "".join(f"; failsafe: {s}" for s in said)


async def schedule_due(
    table: DelayedStore,
    server: DelayedEvents,
    content_for: ContentFor,
    now: Callable[[], datetime],
) -> Outcome:
    """Schedule every row that is due to be (PENDING and its time has come, or
    SCHEDULING after a crash), soonest due first. ``now`` is read before each
    request (wall clock), so a long batch does not shift the due times. Never
    two at once on one table (a row in flight is retried by the other, which
    then cancels it as if steering had); nor two :func:`cancel` batches naming
    one row. bot/runs/failsafe.py serialises each."""
    outcome = Outcome()
    for stored in await table.due_to_schedule(now()):
        key, row = stored.row.key, stored.row
        txn_id = await table.begin_scheduling(key, now())
        delay_ms = int((row.due - now()).total_seconds() * 1000)
        if delay_ms <= 0:
            # Too late to be a failsafe: the bot sends it itself, if alive.
            await table.mark(key, DelayedState.FAILED, now(), note="due before it was scheduled")
            outcome.failed.append(key)
            continue
        try:
            event_type, content = await content_for(key)
            delay_id = await server.schedule(
                key.room_id, event_type, content, txn_id=txn_id, delay_ms=delay_ms
            )
        except SentAtOnce as err:
            await table.mark(key, DelayedState.SENT, now(), note="sent at once by the homeserver")
            outcome.sent_at_once.append((key, err.event_id))
            outcome.refused = str(err)
            break
        except DelayedEventsRefused as err:
            await table.mark(key, DelayedState.FAILED, now(), note=str(err))
            outcome.failed.append(key)
            outcome.refused = str(err)
            break
        except DelayedRequestFailed as err:
            if is_rate_limited(err.failure) or is_transient(err.failure):
                # Maybe scheduled: stays SCHEDULING, retried with the same txn id.
                log.warning("delayed event for %s not scheduled yet: %s", _ids(key), err)
                outcome.retry.append(key)
                continue
            await table.mark(key, DelayedState.FAILED, now(), note=str(err))
            outcome.failed.append(key)
            continue
        except DelayedEventsError as err:  # e.g. the room unknown, so not encrypted
            await table.mark(key, DelayedState.FAILED, now(), note=str(err))
            outcome.failed.append(key)
            continue
        try:
            await table.scheduled(key, delay_id, now())
        except DelayedStoreError:
            # Cancelled by steering while the request was in flight: the id would
            # be lost, and the event would fire. Cancel it now.
            try:
                await server.cancel(delay_id)
            except DelayedRequestFailed as err:
                # Left to cancel_orphans (an id the table does not know).
                log.error("delayed event for %s may still fire: %s", _ids(key), err)
            outcome.gone.append(key)
            continue
        outcome.done.append(key)
    return outcome


async def cancel(
    table: DelayedStore,
    server: DelayedEvents,
    rows: Iterable[DelayedRow],
    now: Callable[[], datetime],
) -> Outcome:
    """Cancel these rows (steering's first step, or a dispatch now in the room).
    A row the server no longer has is ``gone``: sent already or never made — the
    caller looks in the room. A failed request is ``retry``: the event may fire."""
    outcome = Outcome()
    for row in rows:
        key = row.key
        stored = await table.get(key)
        if stored is None or stored.row.state not in {
            DelayedState.PENDING,
            DelayedState.SCHEDULING,
            DelayedState.SCHEDULED,
        }:
            continue
        delay_id = await table.delay_id(key)
        if delay_id is None:
            # Never asked for (PENDING), or asked without an answer (SCHEDULING:
            # cancel_orphans at the next start finds it if it was made).
            await table.mark(key, DelayedState.CANCELLED, now())
            outcome.done.append(key)
            continue
        try:
            existed = await server.cancel(delay_id)
        except DelayedRequestFailed as err:
            log.warning("delayed event for %s not cancelled yet: %s", _ids(key), err)
            outcome.retry.append(key)
            continue
        if existed:
            await table.mark(key, DelayedState.CANCELLED, now())
            outcome.done.append(key)
        else:
            await table.mark(key, DelayedState.SENT, now(), note="gone when cancelled")
            outcome.gone.append(key)
    return outcome


async def cancel_orphans(table: DelayedStore, server: DelayedEvents) -> int:
    """At start, before any scheduling: cancel this account's delayed events the
    table has no id for. Resolve SCHEDULING rows first (:func:`schedule_due`),
    or an event whose answer is about to be recovered would be cancelled."""
    known = await table.known_ids()
    cancelled = 0
    for event in await server.scheduled():
        if event.delay_id not in known and await server.cancel(event.delay_id):
            cancelled += 1
    return cancelled


def _ids(key: DeliveryKey) -> str:
    return f"run {key.run_id} {key.city_id}/{key.stage_id} {key.room_id} {key.part}"
