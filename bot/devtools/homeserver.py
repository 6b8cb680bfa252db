"""A throwaway Synapse on loopback, for the tests, the benchmarks and ``blossom demo``.

Synapse is only ever run as a child process (``python -m synapse.app.homeserver``), so
this module imports without Synapse installed; only starting a server needs it. The
child never outlives us (:mod:`bot.devtools.process`). Two that federate:
:mod:`bot.devtools.federation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import yaml

from bot.devtools.loopback import free_loopback_port
from bot.devtools.process import ChildProcess
from bot.devtools.synapse_config import (
    RateLimits,
    delayed_events_config,
    log_config,
    merge,
    rate_limit_config,
)

__all__ = [
    "EmbeddedHomeserver",
    "HomeserverError",
    "RateLimits",
    "RegisteredUser",
    "free_loopback_port",
    "rate_limit_config",
]

CONFIG_FILE = "homeserver.yaml"
LOG_CONFIG_FILE = "log.yaml"
LOG_FILE = "homeserver.log"

# Localpart of the admin user that admin_token() creates on demand.
ADMIN_LOCALPART = "blossom-admin"

# How long stop() waits after SIGTERM before SIGKILL. Synapse on SQLite stops in well
# under a second; a few seconds leaves room for a slow disk.
_STOP_GRACE_S = 5.0

# Poll interval while waiting for the server to answer or to exit.
_POLL_S = 0.05


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    localpart: str
    password: str


class HomeserverError(RuntimeError):
    """The homeserver did not start, or an admin call failed."""


class EmbeddedHomeserver:
    """One Synapse with SQLite in ``workdir``, listening on 127.0.0.1 only.

    The first start writes the config and secrets; later starts (``restart``, or a new
    object on the same ``workdir``) keep the secrets, the port and the database, and
    rewrite the rest of the config from the constructor's arguments.

    ``extra_config`` is merged over the generated config (a ``None`` value deletes
    a key's effect, as Synapse reads ``null`` as unset) and ``extra_listeners``
    follow the client listener (federation uses both).

    ``enable_delayed_events`` turns on MSC4140 with ``max_event_delay`` (a Synapse
    duration) as the longest delay and, if given, ``max_delayed_events_per_user`` as
    the per-user cap (Synapse's default: 100).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        server_name: str = "localhost",
        port: int | None = None,
        rate_limits: RateLimits = "relaxed",
        enable_delayed_events: bool = False,
        max_event_delay: str = "24h",
        max_delayed_events_per_user: int | None = None,
        log_level: str = "WARNING",
        extra_config: Mapping[str, Any] | None = None,
        extra_listeners: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.server_name = server_name
        self.rate_limits: RateLimits = rate_limits
        self.enable_delayed_events = enable_delayed_events
        self.max_event_delay = max_event_delay
        self.max_delayed_events_per_user = max_delayed_events_per_user
        self.log_level = log_level
        self.extra_config = dict(extra_config or {})
        self.extra_listeners = [dict(listener) for listener in extra_listeners]
        self.config_path = self.workdir / CONFIG_FILE
        self.log_path = self.workdir / LOG_FILE
        self._requested_port = port
        self._port: int | None = port
        self._secrets: dict[str, str] = {}
        self._child = ChildProcess()
        self._admin_token: str | None = None

    # -- addresses ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            self._load_or_create_settings()
        assert self._port is not None
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # -- config ------------------------------------------------------------------

    def _load_or_create_settings(self) -> None:
        """Secrets and port: from an existing config, else new ones."""
        existing: dict[str, Any] = {}
        if self.config_path.exists():
            loaded = yaml.safe_load(self.config_path.read_text())
            if isinstance(loaded, dict):
                existing = loaded
        for name in ("registration_shared_secret", "macaroon_secret_key", "form_secret"):
            value = existing.get(name)
            self._secrets[name] = value if isinstance(value, str) else secrets.token_urlsafe(32)
        if self._port is None:
            listeners = existing.get("listeners") or [{}]
            old_port = listeners[0].get("port")
            self._port = old_port if isinstance(old_port, int) else free_loopback_port()

    def _config(self) -> dict[str, Any]:
        work = self.workdir
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(work / "homeserver.pid"),
            # Loopback, IPv4 only (the machine may lack ::1), client API only: the admin
            # API is served under the "client" resource, and nothing federates here.
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                },
                *self.extra_listeners,
            ],
            # Otherwise https://<server_name>/, which URLs Synapse hands out would point at.
            "public_baseurl": f"{self.url}/",
            "database": {"name": "sqlite3", "args": {"database": str(work / "homeserver.db")}},
            "log_config": str(work / LOG_CONFIG_FILE),
            "media_store_path": str(work / "media_store"),
            "signing_key_path": str(work / f"{self.server_name}.signing.key"),
            **self._secrets,
            "report_stats": False,
            "enable_registration": False,
            # Password hashing dominates registration and login; 4 rounds is the minimum.
            "bcrypt_rounds": 4,
            # No outbound network: no notary key server, no federation with anyone.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "url_preview_enabled": False,
            "enable_metrics": False,
            # Presence costs a timer per user and traffic in every sync; tests don't read it.
            "presence": {"enabled": False},
            **rate_limit_config(self.rate_limits),
        }
        if self.enable_delayed_events:
            merge(
                config,
                delayed_events_config(self.max_event_delay, self.max_delayed_events_per_user),
            )
        merge(config, self.extra_config)
        return config

    def write_config(self) -> Path:
        """Write (or rewrite) the config files; returns the main config's path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._load_or_create_settings()
        (self.workdir / LOG_CONFIG_FILE).write_text(yaml.safe_dump(log_config(self.log_level)))
        # 0600: the file holds the registration secret, which grants admin accounts.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(self._config(), out, sort_keys=False)
        return self.config_path

    # -- lifecycle ---------------------------------------------------------------

    # A timeout argument rather than asyncio.timeout(): on expiry the caller gets the
    # homeserver's log in the error, which a bare TimeoutError could not carry.
    async def start(self, timeout: float = 60) -> None:  # noqa: ASYNC109
        """Start Synapse and return once its client API answers.

        Raises :class:`HomeserverError` with the tail of the log if the process exits
        or does not answer within ``timeout`` seconds.
        """
        if self.running:
            raise HomeserverError(f"homeserver already running (pid {self.pid})")
        # A port we picked ourselves may be taken between picking and binding; then pick
        # again. A port the caller chose, or one an earlier start used, is kept.
        attempts = 3 if self._requested_port is None and not self.config_path.exists() else 1
        for attempt in range(attempts):
            try:
                await self._start_once(timeout)
                return
            except _PortInUseError:
                if attempt == attempts - 1:
                    raise
                self._port = free_loopback_port()

    async def _start_once(self, timeout: float) -> None:  # noqa: ASYNC109
        self.write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = ["-m", "synapse.app.homeserver", "--config-path", str(self.config_path)]
        self._child.spawn(argv, cwd=self.workdir, log_path=self.log_path)
        try:
            await self._wait_until_ready(timeout, log_offset)
        except BaseException:
            await self.kill()
            raise

    async def _wait_until_ready(self, timeout: float, log_offset: int) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        versions = f"{self.url}/_matrix/client/versions"
        client_timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=client_timeout) as http:
            while True:
                code = self._child.poll()
                if code is not None:
                    tail = self.log_tail(since=log_offset)
                    if "Address already in use" in tail:
                        raise _PortInUseError(self.port)
                    raise HomeserverError(
                        f"homeserver exited with code {code} while starting; "
                        f"log {self.log_path}:\n{tail}"
                    )
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(versions) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise HomeserverError(
                        f"homeserver did not answer {versions} within {timeout:g} s; "
                        f"log {self.log_path}:\n{self.log_tail(since=log_offset)}"
                    )
                await asyncio.sleep(_POLL_S)

    def log_tail(self, lines: int = 40, *, since: int = 0) -> str:
        """The last ``lines`` lines of the log, from byte offset ``since`` on."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        """SIGTERM, wait up to a few seconds, then SIGKILL. No-op if not running."""
        await self._child.signal_and_reap(signal.SIGTERM, _STOP_GRACE_S)

    async def kill(self) -> None:
        """SIGKILL at once, as a crash would (for fault tests)."""
        await self._child.signal_and_reap(signal.SIGKILL, 0)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- admin API -----------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # One short-lived session per call: cheap on loopback, and it ties nothing to an
        # event loop, so the same server object serves any loop (pytest's, the demo's).
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.request(method, self.url + path, json=json_body, headers=headers) as resp,
        ):
            text = await resp.text()
        try:
            body = json.loads(text) if text else {}
        except json.JSONDecodeError:
            body = {"raw": text}
        return resp.status, body if isinstance(body, dict) else {"body": body}

    async def _checked(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        status, body = await self._request(method, path, json_body=json_body, token=token)
        if status != 200:
            raise HomeserverError(f"{method} {path} -> {status}: {body}")
        return body

    async def _register_raw(
        self, localpart: str, password: str, *, admin: bool
    ) -> tuple[int, dict[str, Any]]:
        if not self._secrets:
            self._load_or_create_settings()
        path = "/_synapse/admin/v1/register"
        nonce = (await self._checked("GET", path))["nonce"]
        mac = hmac.new(self._secrets["registration_shared_secret"].encode(), digestmod=hashlib.sha1)
        for part in (nonce, localpart, password):
            mac.update(part.encode())
            mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        return await self._request(
            "POST",
            path,
            json_body={
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )

    async def register(
        self, localpart: str, password: str | None = None, *, admin: bool = False
    ) -> RegisteredUser:
        """Create a user with the shared-secret admin API (no registration flow)."""
        password = password if password is not None else secrets.token_urlsafe(16)
        status, body = await self._register_raw(localpart, password, admin=admin)
        if status != 200:
            raise HomeserverError(f"registering {localpart!r} failed ({status}): {body}")
        return RegisteredUser(user_id=body["user_id"], localpart=localpart, password=password)

    async def login(self, user: RegisteredUser, *, device_id: str | None = None) -> str:
        """Log ``user`` in with its password; returns the access token."""
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.localpart},
            "password": user.password,
        }
        if device_id is not None:
            body["device_id"] = device_id
        reply = await self._checked("POST", "/_matrix/client/v3/login", json_body=body)
        token: str = reply["access_token"]
        return token

    def _admin_password(self) -> str:
        # Derived from the registration secret, so a new object on the same workdir (the
        # demo run twice) can log the existing admin in instead of failing to register it.
        secret = self._secrets["registration_shared_secret"].encode()
        return hmac.new(secret, b"blossom-admin-password", hashlib.sha256).hexdigest()

    async def admin_token(self) -> str:
        """An access token of a server admin; the admin is created on first use."""
        if self._admin_token is None:
            if not self._secrets:
                self._load_or_create_settings()
            admin = RegisteredUser(
                self.user_id(ADMIN_LOCALPART), ADMIN_LOCALPART, self._admin_password()
            )
            status, body = await self._register_raw(admin.localpart, admin.password, admin=True)
            if status != 200 and body.get("errcode") != "M_USER_IN_USE":
                raise HomeserverError(f"registering the admin failed ({status}): {body}")
            self._admin_token = await self.login(admin)
        return self._admin_token

    async def exempt_from_rate_limits(self, user_id: str) -> None:
        """Lift every per-user rate limit for ``user_id``, as an operator would for a bot.

        Synapse's override with ``messages_per_second: 0`` disables rc_message and also
        the joins, invites and room-creation limiters for that user, and (for requests
        with its token) rc_delayed_event_mgmt, which the dead-man's switch's cancels
        meet (tests/test_failsafe_bot_live.py checks it).
        """
        await self._checked(
            "POST",
            f"/_synapse/admin/v1/users/{quote(user_id, safe='')}/override_ratelimit",
            json_body={"messages_per_second": 0, "burst_count": 0},
            token=await self.admin_token(),
        )


class _PortInUseError(HomeserverError):
    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} on 127.0.0.1 is already in use")
