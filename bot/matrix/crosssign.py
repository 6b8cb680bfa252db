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
import base64
import binascii
import contextlib
import enum
import json
import logging
import os
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientError
from Crypto.Signature import eddsa
from nio import AsyncClient, KeysUploadResponse

from bot.config import Config

log = logging.getLogger(__name__)

CROSS_SIGNING_FILE = "cross-signing.json"
ENV_RESET = "BLOSSOM_CROSS_SIGNING_RESET"
FILE_VERSION = 1

KEYS_QUERY = "/_matrix/client/v3/keys/query"
DEVICE_SIGNING_UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"
SIGNATURES_UPLOAD = "/_matrix/client/v3/keys/signatures/upload"

# The whole bootstrap is bounded: a homeserver that does not answer delays the start
# by at most this long (the bot then runs uncross-signed until the next start).
TOTAL_TIMEOUT_S = 60.0
ATTEMPTS = 4

_MAX_SAFE_INT = 2**53 - 1


# -- canonical JSON and signatures -------------------------------------------------------


def _check_canonical(value: object, where: str = "$") -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            raise ValueError(f"{where}: integer outside [-(2**53)+1, (2**53)-1]")
        return
    if isinstance(value, float):
        raise ValueError(f"{where}: floats are not allowed in canonical JSON")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_canonical(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings")
            _check_canonical(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def canonical_json(value: object) -> bytes:
    """The Matrix canonical JSON encoding of ``value``: UTF-8, no insignificant
    whitespace, object keys sorted by code point, shortest escapes, integers only
    (within +-(2**53 - 1)). Raises ValueError for anything else."""
    _check_canonical(value)
    text = json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    )
    return text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError (a ValueError)


def signing_bytes(obj: Mapping[str, Any]) -> bytes:
    """What a signature of ``obj`` covers: ``obj`` without ``signatures`` and
    ``unsigned``, as canonical JSON."""
    return canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


def b64encode(data: bytes) -> str:
    """Unpadded standard base64, as Matrix uses for keys and signatures."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """Standard base64 with or without padding; ValueError if it is not base64."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


class SigningKey:
    """An Ed25519 signing key, kept as its 32-byte seed. Its repr shows only the
    public key; the seed never leaves this object except through ``seed_b64``."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = eddsa.import_private_key(seed)
        self._seed = seed
        self.public = b64encode(self._key.public_key().export_key(format="raw"))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(secrets.token_bytes(32))

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public}"

    @property
    def seed_b64(self) -> str:
        return b64encode(self._seed)

    def sign(self, message: bytes) -> str:
        return b64encode(eddsa.new(self._key, "rfc8032").sign(message))

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public!r})"


def sign_json(obj: Mapping[str, Any], signer: str, key: SigningKey) -> dict[str, Any]:
    """A copy of ``obj`` with ``key``'s signature added under ``signatures[signer]``;
    other signatures and ``unsigned`` are kept (and not covered)."""
    signature = key.sign(signing_bytes(obj))
    signed = dict(obj)
    signatures = {k: dict(v) for k, v in (obj.get("signatures") or {}).items()}
    signatures.setdefault(signer, {})[key.key_id] = signature
    signed["signatures"] = signatures
    return signed


def verify_signature(
    obj: Mapping[str, Any], signer: str, public_key: str, *, key_name: str | None = None
) -> bool:
    """Whether ``obj`` carries a valid signature by ``public_key`` (unpadded base64)
    under ``signatures[signer]["ed25519:" + key_name]``. ``key_name`` defaults to the
    public key itself, as for cross-signing keys; a device signs as its device id."""
    try:
        signature = b64decode(obj["signatures"][signer][f"ed25519:{key_name or public_key}"])
        verifier = eddsa.new(eddsa.import_public_key(b64decode(public_key)), "rfc8032")
        verifier.verify(signing_bytes(obj), signature)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def cross_signing_public_key(obj: object) -> str | None:
    """The single Ed25519 public key of a cross-signing key object, or None."""
    if not isinstance(obj, Mapping):
        return None
    keys = obj.get("keys")
    if not isinstance(keys, Mapping) or len(keys) != 1:
        return None
    ((key_id, public),) = keys.items()
    if not isinstance(public, str) or key_id != f"ed25519:{public}":
        return None
    return public


# -- the key set on disk -----------------------------------------------------------------


class CrossSigningFileError(Exception):
    """cross-signing.json cannot be used; the message never contains key material."""


@dataclass(frozen=True)
class CrossSigningKeys:
    user_id: str
    master: SigningKey
    self_signing: SigningKey
    user_signing: SigningKey

    @classmethod
    def generate(cls, user_id: str) -> CrossSigningKeys:
        return cls(user_id, SigningKey.generate(), SigningKey.generate(), SigningKey.generate())

    def _key_object(self, key: SigningKey, usage: str) -> dict[str, Any]:
        return {"user_id": self.user_id, "usage": [usage], "keys": {key.key_id: key.public}}

    def upload_body(self) -> dict[str, Any]:
        """The body of ``/keys/device_signing/upload``: the master key, and the
        self-signing and user-signing keys signed by it. Ed25519 is deterministic, so
        the same keys always give the same body."""
        return {
            "master_key": self._key_object(self.master, "master"),
            "self_signing_key": sign_json(
                self._key_object(self.self_signing, "self_signing"), self.user_id, self.master
            ),
            "user_signing_key": sign_json(
                self._key_object(self.user_signing, "user_signing"), self.user_id, self.master
            ),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FILE_VERSION,
            "user_id": self.user_id,
            "keys": {
                name: {"public": key.public, "seed": key.seed_b64}
                for name, key in (
                    ("master", self.master),
                    ("self_signing", self.self_signing),
                    ("user_signing", self.user_signing),
                )
            },
        }

    @classmethod
    def from_json(cls, data: object) -> CrossSigningKeys:
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
            raise ValueError("unknown format")
        keys = data["keys"]
        loaded: dict[str, SigningKey] = {}
        for name in ("master", "self_signing", "user_signing"):
            key = SigningKey(b64decode(str(keys[name]["seed"])))
            if key.public != keys[name]["public"]:
                raise ValueError(f"{name}: the public key does not match the seed")
            loaded[name] = key
        return cls(str(data["user_id"]), **loaded)

    def __repr__(self) -> str:
        return f"CrossSigningKeys(user_id={self.user_id!r}, master={self.master.public!r})"


def load_keys(path: Path, user_id: str) -> CrossSigningKeys | None:
    """The stored keys, or None if there is no file. Raises CrossSigningFileError if
    the file is unreadable or belongs to another user."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CrossSigningFileError(f"{path}: cannot read: {err.__class__.__name__}") from None
    try:
        keys = CrossSigningKeys.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError):
        raise CrossSigningFileError(f"{path} is damaged; restore it from a backup") from None
    if keys.user_id != user_id:
        raise CrossSigningFileError(
            f"{path} holds the keys of {keys.user_id}, not {user_id}; "
            "use a separate storage.path per bot account"
        )
    return keys


def save_keys(path: Path, keys: CrossSigningKeys) -> None:
    """Write ``keys`` atomically with mode 0600: a temporary file in the same
    directory, fsynced, renamed over ``path``, and the directory fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(keys.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


class _Transient(Exception):
    """Worth another try: network error, 429, 5xx."""


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
        raise _Transient(f"HTTP {status}")
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
                raise _Transient(what.strip())
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
    rng = random.Random()
    why = "error"
    try:
        async with asyncio.timeout(total_timeout):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    outcome = await _attempt(client, path, password, reset)
                except _Transient as err:
                    why = str(err)
                    if attempt == ATTEMPTS:
                        break
                    delay = min(8.0, 2.0 ** (attempt - 1)) * rng.uniform(0.5, 1.0)
                    log.info("cross-signing: %s; trying again in %.1fs", why, delay)
                    await asyncio.sleep(delay)
                    continue
                if outcome in (Outcome.IN_PLACE,):
                    log.info("cross-signing: %s (device %s)", outcome.value, client.device_id)
                elif outcome in (
                    Outcome.CREATED,
                    Outcome.UPLOADED,
                    Outcome.DEVICE_SIGNED,
                    Outcome.RESET,
                ):
                    log.info(
                        "cross-signing: %s (device %s, keys in %s)",
                        outcome.value,
                        client.device_id,
                        path,
                    )
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
