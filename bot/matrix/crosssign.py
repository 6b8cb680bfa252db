"""Cross-signing of the bot's own device, which matrix-nio does not do.

Clients following MSC4153 flag (or drop) messages from a device that its owner has
not cross-signed. So on start the bot makes sure that:

* its user has a master, self-signing and user-signing key (Ed25519); they are
  created once, kept in ``cross-signing.json`` (mode 0600) under ``storage.path``
  and uploaded with ``POST /keys/device_signing/upload``;
* its device's keys carry a signature by the self-signing key
  (``POST /keys/signatures/upload``).

The keys are written to disk *before* they are uploaded, so the server never holds
keys the bot has lost. Everything is idempotent: a later start only queries the
server. If the server holds cross-signing keys other than ours, the bot warns and
changes nothing: replacing them would reset the bot's identity for everyone who
trusts it. An operator can ask for that on purpose, for one start, with
``BLOSSOM_CROSS_SIGNING_RESET=1``.

Homeservers that implement MSC3967 (Synapse does) take the first upload without
interactive auth; replacing keys, or a server without MSC3967, needs the account's
password (``m.login.password``). No key, token or password is ever logged.

Failures never stop the bot: it runs without cross-signing and tries again at the
next start.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import ClientError
from nio import AsyncClient, KeysUploadResponse

from bot.config import Config
from bot.matrix.signing import (
    CROSS_SIGNING_FILE,
    CrossSigningFileError,
    CrossSigningKeys,
    SigningKey,
    b64decode,
    b64encode,
    canonical_json,
    cross_signing_public_key,
    load_keys,
    save_keys,
    sign_json,
    signing_bytes,
    verify_signature,
)
from bot.retry import RequestFailed, RetryPolicy, SendFailure, retry_call

# The key material and its file live in bot/matrix/signing.py; re-exported here,
# where the bootstrap that uses them is.
__all__ = [
    "CROSS_SIGNING_FILE",
    "CrossSigningFileError",
    "CrossSigningKeys",
    "Outcome",
    "SigningKey",
    "b64decode",
    "b64encode",
    "canonical_json",
    "cross_signing_public_key",
    "ensure_cross_signing",
    "load_keys",
    "save_keys",
    "sign_json",
    "signing_bytes",
    "verify_signature",
]

log = logging.getLogger(__name__)

ENV_RESET = "BLOSSOM_CROSS_SIGNING_RESET"

KEYS_QUERY = "/_matrix/client/v3/keys/query"
DEVICE_SIGNING_UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"
SIGNATURES_UPLOAD = "/_matrix/client/v3/keys/signatures/upload"

# The whole bootstrap is bounded: a homeserver that does not answer delays the start
# by at most this long (the bot then runs uncross-signed until the next start).
TOTAL_TIMEOUT_S = 60.0
ATTEMPTS = 4
RETRY_POLICY = RetryPolicy(base_s=1.0, cap_s=8.0)


# -- the homeserver ----------------------------------------------------------------------


class Outcome(enum.Enum):
    CREATED = "new keys created and uploaded, device signed"
    UPLOADED = "stored keys uploaded, device signed"
    DEVICE_SIGNED = "device signed with the existing keys"
    IN_PLACE = "keys in place, device already signed"
    RESET = "server keys replaced on request, device signed"
    SERVER_HAS_OTHER_KEYS = "the server holds cross-signing keys the bot does not"
    NEEDS_PASSWORD = "the server wants the password, and none is configured"
    AUTH_FAILED = "the server refused the interactive auth"
    NO_ENCRYPTION = "no encryption keys on this device"
    FAILED = "failed"


class _Transient(RequestFailed):
    """Worth another try: network error, 429, 5xx. ``str()`` is safe to log."""

    def __init__(self, why: str, status: int | None = None) -> None:
        super().__init__(SendFailure(status, message=why))
        self.why = why

    def __str__(self) -> str:
        return self.why


class _Failed(Exception):
    """Not worth another try this start; the message is safe to log."""


@dataclass
class _ServerKeys:
    master: str | None
    self_signing: str | None
    device: dict[str, Any] | None


async def _call(
    client: AsyncClient, method: str, path: str, body: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One raw request with the client's token; (status, JSON object body)."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {client.access_token}",
    }
    try:
        resp = await client.send(method, path, json.dumps(body), headers)
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
        finally:
            resp.release()
    except (ClientError, TimeoutError, ConnectionError) as err:
        raise _Transient(err.__class__.__name__) from None
    status = int(resp.status)
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status}", status)
    return status, data if isinstance(data, dict) else {}


def _error(what: str, status: int, body: Mapping[str, Any]) -> _Failed:
    errcode = body.get("errcode")
    return _Failed(f"{what}: HTTP {status}" + (f" {errcode}" if isinstance(errcode, str) else ""))


async def _query_own(client: AsyncClient) -> _ServerKeys:
    user_id: str = client.user_id
    status, body = await _call(client, "POST", KEYS_QUERY, {"device_keys": {user_id: []}})
    if status != 200:
        raise _error("keys/query", status, body)

    def of(section: str) -> Any:
        part = body.get(section)
        return part.get(user_id) if isinstance(part, dict) else None

    devices = of("device_keys")
    device = devices.get(client.device_id) if isinstance(devices, dict) else None
    return _ServerKeys(
        master=cross_signing_public_key(of("master_keys")),
        self_signing=cross_signing_public_key(of("self_signing_keys")),
        device=device if isinstance(device, dict) else None,
    )


async def _upload_keys(
    client: AsyncClient, keys: CrossSigningKeys, password: str | None
) -> Outcome | None:
    """Upload ``keys``, doing the password stage of interactive auth if the server
    asks for it. None on success, else why not."""
    body = keys.upload_body()
    status, reply = await _call(client, "POST", DEVICE_SIGNING_UPLOAD, body)
    if status == 200:
        return None
    if status != 401 or "flows" not in reply:
        raise _error("keys/device_signing/upload", status, reply)
    flows = reply.get("flows") or []
    stages = [f.get("stages") for f in flows if isinstance(f, dict)]
    if ["m.login.password"] not in stages:
        log.warning(
            "cross-signing: the homeserver asks for %s to upload the keys, which the bot "
            "cannot do; the bot runs without cross-signing",
            " or ".join("+".join(map(str, s or [])) for s in stages) or "an unknown auth",
        )
        return Outcome.AUTH_FAILED
    if password is None:
        log.warning(
            "cross-signing: the homeserver wants the account's password to upload the "
            "bot's cross-signing keys, and only an access token is configured. Give "
            "matrix.password (or BLOSSOM_PASSWORD) for one start; it is needed once. "
            "The bot runs without cross-signing until then"
        )
        return Outcome.NEEDS_PASSWORD
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": client.user_id},
        "password": password,
    }
    if isinstance(reply.get("session"), str):
        auth["session"] = reply["session"]
    status, reply = await _call(client, "POST", DEVICE_SIGNING_UPLOAD, {**body, "auth": auth})
    if status == 200:
        return None
    if status == 401:
        log.warning(
            "cross-signing: the homeserver refused the bot's password (%s); "
            "the bot runs without cross-signing",
            reply.get("errcode") if isinstance(reply.get("errcode"), str) else "HTTP 401",
        )
        return Outcome.AUTH_FAILED
    raise _error("keys/device_signing/upload", status, reply)


def _device_matches_account(client: AsyncClient, device: Mapping[str, Any]) -> bool:
    """Whether the device keys the server returned are this device's own keys, signed
    by it: we cross-sign only what our own olm account vouches for."""
    olm = client.olm
    if olm is None:
        return False
    own = olm.account.identity_keys
    device_id: str = client.device_id
    keys = device.get("keys")
    return (
        device.get("user_id") == client.user_id
        and device.get("device_id") == device_id
        and isinstance(keys, dict)
        and keys.get(f"ed25519:{device_id}") == own["ed25519"]
        and keys.get(f"curve25519:{device_id}") == own["curve25519"]
        and verify_signature(device, client.user_id, own["ed25519"], key_name=device_id)
    )


async def _sign_device(
    client: AsyncClient, keys: CrossSigningKeys, device: Mapping[str, Any]
) -> None:
    unsigned_copy = {k: v for k, v in device.items() if k not in ("signatures", "unsigned")}
    signed = sign_json(unsigned_copy, client.user_id, keys.self_signing)
    body = {client.user_id: {client.device_id: signed}}
    status, reply = await _call(client, "POST", SIGNATURES_UPLOAD, body)
    if status != 200:
        raise _error("keys/signatures/upload", status, reply)
    failures = reply.get("failures")
    if failures:
        # Per-key failures come back with 200; report the error codes only.
        codes = sorted(
            {
                str(f.get("errcode"))
                for per_user in failures.values()
                if isinstance(per_user, dict)
                for f in per_user.values()
                if isinstance(f, dict)
            }
        )
        raise _Failed(f"keys/signatures/upload rejected the device signature: {codes}")


async def _ensure_device_keys_uploaded(client: AsyncClient) -> None:
    if client.should_upload_keys:
        try:
            resp = await client.keys_upload()
        except (ClientError, TimeoutError, ConnectionError) as err:
            raise _Transient(f"keys/upload: {err.__class__.__name__}") from None
        if not isinstance(resp, KeysUploadResponse):
            transport = getattr(resp, "transport_response", None)
            status = getattr(transport, "status", None)
            what = f"keys/upload: HTTP {status} {getattr(resp, 'status_code', None) or ''}"
            if status is None or status == 429 or status >= 500:
                raise _Transient(what.strip(), status)
            # E.g. 400 when the device id already has other keys on the server: the
            # encryption store was lost but credentials.json kept (docs/encryption.md).
            raise _Failed(what.strip())


async def _attempt(client: AsyncClient, path: Path, password: str | None, reset: bool) -> Outcome:
    user_id: str = client.user_id
    device_id: str = client.device_id
    local = load_keys(path, user_id)
    await _ensure_device_keys_uploaded(client)
    server = await _query_own(client)

    created = uploaded = replaced = False
    server_has_keys = server.master is not None
    matches = (
        local is not None
        and server.master == local.master.public
        and server.self_signing in (None, local.self_signing.public)
    )
    if server_has_keys and not matches:
        if not reset:
            log.warning(
                "cross-signing: the homeserver holds cross-signing keys for %s that %s. "
                "Not replacing them: that would reset the bot's identity for everyone who "
                "trusts it. Device %s stays without a cross-signature. Restore the "
                "cross-signing.json that belongs with them (see docs/encryption.md), or "
                "start once with %s=1 to replace them on purpose",
                user_id,
                "are not in " + str(path) if local is None else "differ from " + str(path),
                device_id,
                ENV_RESET,
            )
            return Outcome.SERVER_HAS_OTHER_KEYS
        replaced = True
    elif reset:
        log.info("cross-signing: %s is set, but there is nothing to replace; unset it", ENV_RESET)

    if local is None:
        local = CrossSigningKeys.generate(user_id)
        try:
            save_keys(path, local)  # before the upload: never keys on the server we lack
        except OSError as err:
            raise _Failed(f"cannot write {path}: {err.__class__.__name__}") from None
        created = True
    if replaced or server.master is None or server.self_signing is None:
        refused = await _upload_keys(client, local, password)
        if refused is not None:
            return refused
        uploaded = True
        if replaced:
            log.warning(
                "cross-signing: replaced the homeserver's cross-signing keys for %s with "
                "those in %s, as %s asked; clients that trusted the old identity will warn "
                "about the change",
                user_id,
                path,
                ENV_RESET,
            )
        server = await _query_own(client)

    device = server.device
    if device is None:
        raise _Failed(f"the homeserver has no keys for device {device_id}")
    if not _device_matches_account(client, device):
        raise _Failed(f"the homeserver's keys for device {device_id} are not this device's")
    if verify_signature(device, user_id, local.self_signing.public):
        return Outcome.IN_PLACE if not uploaded else Outcome.UPLOADED
    await _sign_device(client, local, device)
    if replaced:
        return Outcome.RESET
    if created:
        return Outcome.CREATED
    return Outcome.UPLOADED if uploaded else Outcome.DEVICE_SIGNED


def _log_outcome(outcome: Outcome, device_id: str, path: Path) -> None:
    if outcome is Outcome.IN_PLACE:
        log.info("cross-signing: %s (device %s)", outcome.value, device_id)
    elif outcome in (Outcome.CREATED, Outcome.UPLOADED, Outcome.DEVICE_SIGNED, Outcome.RESET):
        log.info("cross-signing: %s (device %s, keys in %s)", outcome.value, device_id, path)


async def ensure_cross_signing(
    client: AsyncClient,
    config: Config,
    *,
    reset: bool | None = None,
    total_timeout: float = TOTAL_TIMEOUT_S,
) -> Outcome:
    """Make the bot's device cross-signed by its user; see the module docstring.

    Call after login. Never raises (except on cancellation): the bot runs without
    cross-signing if this fails. ``reset`` defaults to ``BLOSSOM_CROSS_SIGNING_RESET``
    being ``1`` in the environment.
    """
    if reset is None:
        reset = os.environ.get(ENV_RESET, "") == "1"
    if client.olm is None:
        log.warning("cross-signing: encryption is not enabled on this device; skipped")
        return Outcome.NO_ENCRYPTION
    path = config.storage.path / CROSS_SIGNING_FILE
    password = (
        config.matrix.password.get_secret_value() if config.matrix.password is not None else None
    )
    why = "error"

    def retrying(failure: SendFailure, delay: timedelta, attempt: int) -> None:
        nonlocal why
        why = failure.message
        log.info("cross-signing: %s; trying again in %.1fs", why, delay.total_seconds())

    try:
        async with asyncio.timeout(total_timeout):
            try:
                outcome = await retry_call(
                    lambda: _attempt(client, path, password, reset),
                    policy=RETRY_POLICY,
                    sleep=lambda d: asyncio.sleep(d.total_seconds()),
                    now=lambda: datetime.now(UTC),
                    max_attempts=ATTEMPTS,
                    on_retry=retrying,
                )
            except _Transient as err:
                why = str(err)
            else:
                _log_outcome(outcome, client.device_id, path)
                return outcome
    except TimeoutError:
        why = f"gave up after {total_timeout:g}s" + ("" if why == "error" else f"; last: {why}")
    except (_Failed, CrossSigningFileError) as err:
        why = str(err)
    except Exception as err:  # a bug here must not stop the bot; no content is logged
        why = f"unexpected {err.__class__.__name__}"
        log.debug("cross-signing failed", exc_info=True)
    log.warning(
        "cross-signing not set up (%s); the bot runs without it and tries again at the next start",
        why,
    )
    return Outcome.FAILED
