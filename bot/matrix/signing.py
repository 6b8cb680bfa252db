"""The bot's cross-signing keys: canonical JSON, Ed25519 signatures, the key set
and its file (``cross-signing.json``, mode 0600). Pure but for the file; the
homeserver side is bot/matrix/crosssign.py.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Signature import eddsa

CROSS_SIGNING_FILE = "cross-signing.json"
FILE_VERSION = 1
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
