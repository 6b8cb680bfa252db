"""Delayed events (MSC4140) on the homeserver: the one place that schedules, lists,
cancels or fires them. Not in matrix-nio, so these are raw requests over nio's HTTP
session (``AsyncClient.send``) with the bot's access token.

**Never early.** A homeserver without the feature ignores the delay parameter and
sends the event at once. So :meth:`DelayedEvents.schedule` itself refuses unless this
connection saw ``unstable_features["org.matrix.msc4140"]`` true in ``/versions``, and a
non-zero limit in ``/capabilities``, within the last :data:`FRESH_FOR` (it checks
again when older), and it refuses a delay over the server's maximum before asking.
An answer carrying an ``event_id`` instead of a ``delay_id`` means the server sent
the event now: :class:`SentAtOnce`, which the caller must treat as a release.

**The delay id is a secret**: Synapse lets anyone holding it cancel or send the
event without logging in. It travels only inside
:class:`~bot.failsafe.secret.DelayId`, which hides it from ``str`` and ``repr``.
No exception raised here carries it, nor any content.

Failures are told apart in the project's terms (:mod:`bot.retry`):
:class:`DelayedRequestFailed` carries a :class:`~bot.retry.SendFailure` for the
retry policy; :class:`DelayedEventsRefused` and its kinds are answers to give the
organiser (not retried): the feature missing or disabled, a delay over the maximum,
the per-user cap reached.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import ClientError
from nio import AsyncClient, LocalProtocolError

from bot import DISPATCH_KEY
from bot.failsafe.secret import DelayId
from bot.retry import RequestFailed, SendFailure

FEATURE = "org.matrix.msc4140"
CAPABILITY = "org.matrix.msc4140.delayed_events"
DELAY_PARAM = "org.matrix.msc4140.delay"
DELAYED_EVENTS_PATH = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
VERSIONS_PATH = "/_matrix/client/versions"
CAPABILITIES_PATH = "/_matrix/client/v3/capabilities"

# How long a positive /versions answer counts. Short: an operator who turns the
# feature off restarts Synapse, and an event scheduled after that would go out now.
FRESH_FOR_S = 30.0
REQUEST_TIMEOUT_S = 10.0

_TOO_LARGE = "ORG.MATRIX.MSC4140_DELAY_TOO_LARGE"
_MAX_IN_MESSAGE = re.compile(r"maximum \((\d+)ms\)")


@dataclass(frozen=True)
class Support:
    """What one probe of the homeserver found."""

    advertised: bool  # /versions unstable_features["org.matrix.msc4140"]
    max_delay_ms: int | None  # /capabilities; None: not said (0 would mean disabled)
    max_scheduled: int | None  # the per-user cap; None: not said
    checked_at: float  # monotonic seconds

    @property
    def usable(self) -> bool:
        return self.advertised and self.max_delay_ms != 0 and self.max_scheduled != 0

    def why_not(self) -> str:
        if not self.advertised:
            return (
                "the homeserver does not advertise delayed events (MSC4140) in /versions; "
                "without them it would send a delayed event at once"
            )
        if self.max_delay_ms == 0:
            return "the homeserver has delayed events disabled (max_event_delay_duration unset)"
        if self.max_scheduled == 0:
            return "the homeserver allows no delayed events per user"
        return ""


@dataclass(frozen=True)
class ScheduledEvent:
    """One of this user's delayed events as the server lists it. ``tag`` is the
    dispatch tag when the content is readable (unencrypted); the content itself is
    not kept (it is the stage's text)."""

    delay_id: DelayId
    room_id: str
    event_type: str
    delay_ms: int
    since_ms: int
    tag: Mapping[str, Any] | None = field(default=None)

    @property
    def due_ms(self) -> int:
        return self.since_ms + self.delay_ms


class DelayedEventsError(Exception):
    """Anything that went wrong here; the message names no delay id and no content."""


class DelayedRequestFailed(DelayedEventsError, RequestFailed):
    """A request failed in a way the retry policy judges (``failure``); a
    :class:`~bot.retry.RequestFailed`, so :func:`bot.retry.retry_call` retries it."""

    def __init__(self, what: str, failure: SendFailure) -> None:
        RequestFailed.__init__(self, failure)
        self.args = (f"{what}: {failure.describe()}",)


class DelayedEventsRefused(DelayedEventsError):
    """The server will not take this delayed event: tell the organiser, don't retry."""


class DelayedEventsUnsupported(DelayedEventsRefused):
    """The feature is missing or disabled on this homeserver."""


class DelayTooLong(DelayedEventsRefused):
    def __init__(self, delay_ms: int, max_delay_ms: int | None) -> None:
        limit = f"{max_delay_ms} ms" if max_delay_ms is not None else "its maximum"
        super().__init__(f"a delay of {delay_ms} ms is over the homeserver's maximum ({limit})")
        self.delay_ms = delay_ms
        self.max_delay_ms = max_delay_ms


class TooManyDelayedEvents(DelayedEventsRefused):
    def __init__(self, max_scheduled: int | None) -> None:
        limit = f" ({max_scheduled})" if max_scheduled is not None else ""
        super().__init__(
            f"the homeserver's limit of delayed events per user{limit} is reached "
            "(experimental_features.msc4140_max_delayed_events_per_user)"
        )
        self.max_scheduled = max_scheduled


class SentAtOnce(DelayedEventsError):
    """The server answered a delayed send with an event id: it sent the event now.
    The caller must record it as sent (early) and tell the organiser."""

    def __init__(self, event_id: str) -> None:
        super().__init__(
            f"the homeserver sent the event at once ({event_id}) instead of delaying it"
        )
        self.event_id = event_id


class DelayedEvents:
    """MSC4140 requests through ``client`` (the bot's own logged-in session)."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        fresh_for_s: float = FRESH_FOR_S,
        timeout_s: float = REQUEST_TIMEOUT_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._fresh_for_s = fresh_for_s
        self._timeout_s = timeout_s
        self._monotonic = monotonic
        self._support: Support | None = None

    # -- support -------------------------------------------------------------------

    async def probe(self) -> Support:
        """Ask the homeserver now (``/versions`` with the token, so no cache answers
        for it, then ``/capabilities`` for the limits) and remember the answer."""
        status, versions = await self._request("GET", VERSIONS_PATH, what="/versions")
        if status != 200:
            raise DelayedRequestFailed("/versions", _failure(status, versions))
        features = versions.get("unstable_features")
        advertised = isinstance(features, dict) and features.get(FEATURE) is True
        max_delay_ms: int | None = None
        max_scheduled: int | None = None
        if advertised:
            status, caps = await self._request("GET", CAPABILITIES_PATH, what="/capabilities")
            if status != 200:
                raise DelayedRequestFailed("/capabilities", _failure(status, caps))
            limits = (caps.get("capabilities") or {}).get(CAPABILITY)
            if isinstance(limits, dict):
                max_delay_ms = _non_negative_int(limits.get("max_delay_ms"))
                max_scheduled = _non_negative_int(limits.get("max_scheduled"))
        self._support = Support(advertised, max_delay_ms, max_scheduled, self._monotonic())
        return self._support

    async def supports_delayed_events(self) -> bool:
        """Whether the homeserver takes delayed events (asks now)."""
        return (await self.probe()).usable

    async def ensure_supported(self) -> Support:
        """The last probe if it is fresh and positive, else a new probe; raises
        :class:`DelayedEventsUnsupported` when the feature is missing or disabled."""
        support = self._support
        if support is None or self._monotonic() - support.checked_at > self._fresh_for_s:
            support = await self.probe()
        if not support.usable:
            raise DelayedEventsUnsupported(support.why_not())
        return support

    # -- scheduling ------------------------------------------------------------------

    async def schedule(
        self,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        txn_id: str,
        delay_ms: int,
    ) -> DelayId:
        """Schedule ``content`` to be sent by the server ``delay_ms`` from now.

        ``txn_id`` must never be the txn id of a real send (Synapse keys its
        transaction cache on the path without the query, so a real send with the
        same id would get this answer back and send nothing), and a replacement
        needs a new one (within the cache's 30-60 min, the same id returns the old,
        possibly cancelled, delay id).
        """
        if delay_ms <= 0:
            raise ValueError("a delayed event needs a positive delay")
        support = await self.ensure_supported()
        if support.max_delay_ms is not None and delay_ms > support.max_delay_ms:
            raise DelayTooLong(delay_ms, support.max_delay_ms)
        path = (
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/"
            f"{quote(event_type, safe='')}/{quote(txn_id, safe='')}?{DELAY_PARAM}={delay_ms}"
        )
        status, body = await self._request("PUT", path, body=content, what="scheduling")
        if status == 200:
            delay_id = body.get("delay_id")
            if isinstance(delay_id, str) and delay_id:
                return DelayId(delay_id)
            event_id = body.get("event_id")
            if isinstance(event_id, str):
                self._support = None  # never trust the last probe again
                raise SentAtOnce(event_id)
            # Unknown whether it was scheduled; a retry with the same txn id is
            # answered from the server's cache.
            raise DelayedRequestFailed(
                "scheduling", SendFailure(None, message="answer without a delay id")
            )
        raise self._scheduling_error(status, body, delay_ms, support)

    def _scheduling_error(
        self, status: int, body: Mapping[str, Any], delay_ms: int, support: Support
    ) -> DelayedEventsError:
        errcode = body.get("errcode")
        error = str(body.get("error", ""))
        if status == 403 and errcode == "M_FORBIDDEN" and "delayed events" in error:
            self._support = None
            return DelayedEventsUnsupported(
                "the homeserver refuses delayed events (403): max_event_delay_duration is not set"
            )
        if status == 400 and errcode == _TOO_LARGE:
            found = _MAX_IN_MESSAGE.search(error)
            return DelayTooLong(delay_ms, int(found.group(1)) if found else support.max_delay_ms)
        if status == 429 and "maximum number of delayed events" in error:
            return TooManyDelayedEvents(support.max_scheduled)
        return DelayedRequestFailed("scheduling", _failure(status, body))

    async def scheduled(self) -> list[ScheduledEvent]:
        """This user's delayed events that have not fired, soonest first (every
        device's; the per-user cap counts them all)."""
        status, body = await self._request("GET", DELAYED_EVENTS_PATH, what="listing")
        if status != 200:
            raise DelayedRequestFailed("listing delayed events", _failure(status, body))
        found: list[ScheduledEvent] = []
        entries = body.get("delayed_events")
        for entry in entries if isinstance(entries, list) else []:
            parsed = _scheduled_event(entry)
            if parsed is not None:
                found.append(parsed)
        return sorted(found, key=lambda e: e.due_ms)

    # -- acting on one ---------------------------------------------------------------

    async def cancel(self, delay_id: DelayId) -> bool:
        """Cancel it. False when the server no longer has it (sent, cancelled, or
        never scheduled): the caller must look in the room to know which."""
        return await self._update(delay_id, "cancel")

    async def restart(self, delay_id: DelayId) -> bool:
        """Reset its timer to now + its original delay (a keep-alive, not a time)."""
        return await self._update(delay_id, "restart")

    async def send_now(self, delay_id: DelayId) -> bool:
        """Have the server send it now. False when it no longer has it."""
        return await self._update(delay_id, "send")

    async def _update(self, delay_id: DelayId, action: str) -> bool:
        path = f"{DELAYED_EVENTS_PATH}/{quote(delay_id.reveal(), safe='')}"
        status, body = await self._request("POST", path, body={"action": action}, what=action)
        if status == 200:
            return True
        if status == 404:
            return False
        failure = _failure(status, body)
        # The server's words are kept only if they do not repeat the id.
        if delay_id.reveal() in failure.message:
            failure = SendFailure(failure.http_status, failure.errcode, failure.retry_after_ms)
        raise DelayedRequestFailed(f"{action} of a delayed event", failure)

    # -- transport -------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        what: str,
    ) -> tuple[int, dict[str, Any]]:
        """One request with the bot's token: (status, JSON object body). Network
        errors become :class:`DelayedRequestFailed` with the error's class name only:
        aiohttp's messages carry the URL, which may hold a delay id."""
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self._client.access_token}",
        }
        data = json.dumps(body) if body is not None else None
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._client.send(method, path, data, headers)
                try:
                    text = await resp.text()
                finally:
                    resp.release()
        except TimeoutError:
            raise DelayedRequestFailed(what, SendFailure(None, message="timed out")) from None
        except (ClientError, ConnectionError, LocalProtocolError) as err:
            raise DelayedRequestFailed(
                what, SendFailure(None, message=err.__class__.__name__)
            ) from None
        try:
            parsed = json.loads(text) if text else {}
        except ValueError:
            parsed = {}
        return int(resp.status), parsed if isinstance(parsed, dict) else {}


def _failure(status: int, body: Mapping[str, Any]) -> SendFailure:
    errcode = body.get("errcode")
    retry = body.get("retry_after_ms")
    return SendFailure(
        http_status=status,
        errcode=errcode if isinstance(errcode, str) else None,
        retry_after_ms=retry if isinstance(retry, int) and not isinstance(retry, bool) else None,
        message=str(body.get("error", ""))[:200],
    )


def _non_negative_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _scheduled_event(entry: Any) -> ScheduledEvent | None:
    """One entry of the server's list, or None if malformed. Synapse 1.163 names
    the fields ``delay_ms`` / ``delayed_since_ts`` (older: ``delay`` /
    ``running_since``)."""
    if not isinstance(entry, dict):
        return None
    delay_id, room_id, event_type = entry.get("delay_id"), entry.get("room_id"), entry.get("type")
    delay = _non_negative_int(entry.get("delay_ms", entry.get("delay")))
    since = _non_negative_int(entry.get("delayed_since_ts", entry.get("running_since")))
    if not (isinstance(delay_id, str) and isinstance(room_id, str) and isinstance(event_type, str)):
        return None
    if delay is None or since is None:
        return None
    content = entry.get("content")
    tag = content.get(DISPATCH_KEY) if isinstance(content, dict) else None
    return ScheduledEvent(
        DelayId(delay_id), room_id, event_type, delay, since, tag if isinstance(tag, dict) else None
    )


async def encrypt_for_room(
    client: AsyncClient,
    room_id: str,
    event_type: str,
    content: Mapping[str, Any],
    *,
    keys_lock: asyncio.Lock | None = None,
) -> tuple[str, dict[str, Any]]:
    """The ``(type, content)`` to schedule in ``room_id``: as given in a plain room;
    in an encrypted room ``m.room.encrypted`` with the megolm ciphertext, after
    sharing the room key with every member's devices known now (the server stores
    what it is given and cannot encrypt when it fires). Members whose devices join
    later may be unable to decrypt it. Does what ``AsyncClient.room_send`` does
    before it encrypts; ``keys_lock`` serialises key queries and claims with the
    bot's sender (``MatrixSender`` holds one)."""
    room = client.rooms.get(room_id)
    if room is None:
        raise DelayedEventsError(f"the bot does not know room {room_id} (not joined or not synced)")
    if not room.encrypted:
        return event_type, dict(content)
    lock = keys_lock or asyncio.Lock()
    async with lock:
        if not room.members_synced:
            await client.joined_members(room_id)
        if client.should_query_keys:
            await client.keys_query()
        olm = client.olm
        if olm is None:
            raise DelayedEventsError(f"room {room_id} is encrypted and the bot has no encryption")
        if olm.should_share_group_session(room_id):
            await client.share_group_session(room_id, ignore_unverified_devices=True)
    sealed_type, sealed = client.encrypt(room_id, event_type, dict(content))
    return sealed_type, dict(sealed)
