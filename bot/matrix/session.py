"""Log in once, then restore: one device for the bot's whole life.

The access token and device id are kept in ``credentials.json`` (mode 0600)
under ``storage.path``, next to nio's encryption store. A restart restores the
session instead of logging in again, so no new device is created and the
homeserver's transaction-id dedup (scoped to the device) keeps working.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig, LoginError, LoginResponse

from bot.config import Config
from bot.matrix.sanitize import SanitizingClient

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"


class SessionError(Exception):
    """Login failed; the message never contains the password or token."""


@dataclass(frozen=True)
class Credentials:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str

    def __repr__(self) -> str:  # keep the token out of any accidental repr
        return f"Credentials(user_id={self.user_id!r}, device_id={self.device_id!r})"


def client_config() -> AsyncClientConfig:
    # Retries are ours (bot.retry): nio must hand back 429s and network errors
    # at once instead of sleeping inside a request where we cannot see it.
    return AsyncClientConfig(
        max_limit_exceeded=0,
        max_timeouts=0,
        store_sync_tokens=True,
        encryption_enabled=True,
        request_timeout=30,
    )


def store_dir(config: Config) -> Path:
    return config.storage.path / "nio-store"


def _read_credentials(path: Path, config: Config) -> Credentials | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        creds = Credentials(
            homeserver=str(data["homeserver"]),
            user_id=str(data["user_id"]),
            device_id=str(data["device_id"]),
            access_token=str(data["access_token"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise SessionError(f"{path} is unreadable; move it away to log in afresh") from None
    if creds.user_id != config.matrix.user_id or creds.homeserver != config.matrix.homeserver:
        raise SessionError(
            f"{path} belongs to {creds.user_id} on another configuration; "
            "use a separate storage.path per bot account"
        )
    return creds


def _write_credentials(path: Path, creds: Credentials) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(
            {
                "homeserver": creds.homeserver,
                "user_id": creds.user_id,
                "device_id": creds.device_id,
                "access_token": creds.access_token,
            },
            f,
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def open_session(config: Config) -> AsyncClient:
    """A logged-in client with its encryption store loaded."""
    config.storage.path.mkdir(parents=True, exist_ok=True)
    store = store_dir(config)
    store.mkdir(parents=True, exist_ok=True)
    # The store holds the device's private keys (nio protects them with a fixed
    # passphrase): readable by this user only.
    os.chmod(config.storage.path, 0o700)
    os.chmod(store, 0o700)
    cred_path = config.storage.path / CREDENTIALS_FILE
    creds = _read_credentials(cred_path, config)
    if creds is not None and not (store / f"{creds.user_id}_{creds.device_id}.db").exists():
        # The encryption store of this device is gone: its keys cannot be
        # recreated (the homeserver rejects new one-time keys under the old ids
        # and clients distrust changed keys), so start a new device instead.
        aside = cred_path.with_name(f"{CREDENTIALS_FILE}.orphaned")
        os.replace(cred_path, aside)
        log.warning(
            "the encryption store of device %s is missing; logging in as a new device "
            "(old credentials moved to %s)", creds.device_id, aside.name,
        )
        creds = None
    client = SanitizingClient(
        config.matrix.homeserver,
        config.matrix.user_id,
        device_id=creds.device_id if creds else (config.matrix.device_id or ""),
        store_path=str(store),
        config=client_config(),
    )
    if creds is not None:
        client.restore_login(creds.user_id, creds.device_id, creds.access_token)
        log.info("restored session for device %s", creds.device_id)
        return client
    if config.matrix.access_token is not None and config.matrix.device_id:
        token = config.matrix.access_token.get_secret_value()
        client.restore_login(config.matrix.user_id, config.matrix.device_id, token)
        _write_credentials(
            cred_path,
            Credentials(
                config.matrix.homeserver, config.matrix.user_id, config.matrix.device_id, token
            ),
        )
        return client
    if config.matrix.password is None:
        await client.close()
        raise SessionError(
            "matrix.access_token needs matrix.device_id (the device the token belongs to); "
            "or give a password"
        )
    try:
        resp = await client.login(
            password=config.matrix.password.get_secret_value(),
            device_name=config.matrix.device_name,
        )
    except Exception as err:  # network errors: say which kind, never the request
        await client.close()
        raise SessionError(
            f"cannot reach {config.matrix.homeserver}: {err.__class__.__name__}"
        ) from None
    if isinstance(resp, LoginError) or not isinstance(resp, LoginResponse):
        await client.close()
        code = getattr(resp, "status_code", None) or "error"
        raise SessionError(f"login as {config.matrix.user_id} failed: {code}")
    _write_credentials(
        cred_path,
        Credentials(config.matrix.homeserver, resp.user_id, resp.device_id, resp.access_token),
    )
    log.info("logged in as %s, new device %s", resp.user_id, resp.device_id)
    return client
