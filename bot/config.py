"""The bot's configuration file, validated, with secrets from the environment.

A bad config is one :class:`ConfigError` naming the key; the CLI turns it into
one line on stderr and exit code 2. Secrets are ``SecretStr`` so they never
appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from bot.scenario.fields import is_user_id

ENV_PASSWORD = "BLOSSOM_PASSWORD"
ENV_ACCESS_TOKEN = "BLOSSOM_ACCESS_TOKEN"


class ConfigError(Exception):
    """The configuration cannot be used. The message names the key, never a secret."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatrixConfig(_Strict):
    homeserver: str = Field(pattern=r"^https?://[^\s/]+(/.*)?$")
    user_id: str = Field(pattern=r"^@[^:\s]+:[^\s]+$")
    password: SecretStr | None = None
    access_token: SecretStr | None = None
    device_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    device_name: str = "Blossom"


class StorageConfig(_Strict):
    path: Path


class ControlConfig(_Strict):
    rooms: tuple[str, ...] = Field(min_length=1)
    min_power_level: int = 50

    @field_validator("rooms")
    @classmethod
    def _room_ids(cls, rooms: tuple[str, ...]) -> tuple[str, ...]:
        for room in rooms:
            # v12 room ids have no server part (MSC4291): "!" and an opaque id.
            if not (room.startswith("!") and len(room) > 1 and not any(c.isspace() for c in room)):
                raise ValueError(f"{room!r} is not a room id (!id or !id:server)")
        return rooms


class ScenariosConfig(_Strict):
    dir: Path


class DispatchConfig(_Strict):
    """Tuning for the fan-out; the defaults suit a single Synapse."""

    max_in_flight: int = Field(default=16, ge=1, le=512)
    prepare_seconds: float = Field(default=3.0, ge=0, le=300)
    # What the homeserver lets this bot send, for !arm's pre-flight check. The
    # default fits a bot exempted from rate limits on a small Synapse; a bot under
    # Synapse's default rc_message is 0.2 msg/s with a burst of 10.
    expected_msgs_per_second: float = Field(default=30.0, gt=0, le=100_000)
    rate_burst: int = Field(default=0, ge=0, le=100_000)
    # The bot's next /sync waits while a fan-out is sending, at most this long
    # (0: never wait): on one Synapse, syncing during a fan-out costs about as much
    # as the sends. Meanwhile the control rooms are polled every
    # control_poll_seconds (bot/matrix/watch.py), so an !abort typed during a
    # fan-out is read within that, not after the hold; participants' messages
    # (check-ins, !stop) are read when the hold ends.
    sync_hold_seconds: float = Field(default=30.0, ge=0, le=120)
    control_poll_seconds: float = Field(default=0.25, ge=0.05, le=5)


def _member_id(value: str) -> str:
    # The value is not echoed: config errors never quote what was typed.
    if not is_user_id(value):
        raise PydanticCustomError(
            "crew_member", "not a Matrix user id (expected @name:server, like @blossom:example.org)"
        )
    return value


class CrewConfig(_Strict):
    """The crew of bots this one belongs to (docs/crew.md).

    ``members`` is the same list, in the same order, in every member's config:
    the order is the preference (first = on duty, and the speaker in the control
    rooms, while alive), so members that disagree would both act.
    """

    members: tuple[Annotated[str, AfterValidator(_member_id)], ...] = Field(min_length=1)
    # A member is down when its heartbeat is older than three of these.
    heartbeat_seconds: float = Field(default=30.0, ge=1, le=600)

    @field_validator("members")
    @classmethod
    def _unique(cls, members: tuple[str, ...]) -> tuple[str, ...]:
        for index, member in enumerate(members):
            if member in members[:index]:
                raise PydanticCustomError(
                    "crew_duplicate",
                    "{member} is listed twice (a member's place in the list is its rank)",
                    {"member": member},
                )
        return members


class Config(_Strict):
    matrix: MatrixConfig
    storage: StorageConfig
    control: ControlConfig
    scenarios: ScenariosConfig
    dispatch: DispatchConfig = DispatchConfig()
    crew: CrewConfig | None = None

    def effective_crew(self) -> CrewConfig:
        """The crew from the config, or without a ``crew`` section a crew of one:
        this bot alone, which is exactly how Blossom behaved before crews."""
        if self.crew is not None:
            return self.crew
        return CrewConfig(members=(self.matrix.user_id,))


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    # pydantic's message never includes the input value for these types, but
    # we build our own line anyway so a secret can never be echoed.
    return f"{key}: {first['msg']}"


def parse_config(data: Any, *, base_dir: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate config data; relative paths are resolved against ``base_dir``."""
    env = os.environ if environ is None else environ
    if not isinstance(data, dict):
        raise ConfigError("the config file must be a YAML mapping")
    matrix = data.get("matrix")
    if isinstance(matrix, dict):
        matrix = dict(matrix)
        if env.get(ENV_PASSWORD):
            matrix["password"] = env[ENV_PASSWORD]
        if env.get(ENV_ACCESS_TOKEN):
            matrix["access_token"] = env[ENV_ACCESS_TOKEN]
        data = {**data, "matrix": matrix}
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    if config.matrix.password is None and config.matrix.access_token is None:
        raise ConfigError(
            f"matrix.password: set a password or access_token (or {ENV_PASSWORD} / "
            f"{ENV_ACCESS_TOKEN} in the environment)"
        )
    if (
        config.matrix.access_token is not None
        and config.matrix.password is None
        and not config.matrix.device_id
    ):
        # A token belongs to one device; without its id the session cannot be
        # restored. Caught here so it is a config error, not a failure at run time.
        raise ConfigError(
            "matrix.device_id: required with matrix.access_token (the device the token "
            "belongs to); or give a password"
        )
    if config.crew is not None and config.matrix.user_id not in config.crew.members:
        raise ConfigError(
            f"crew.members: must list this bot's own user id {config.matrix.user_id} "
            "(matrix.user_id); every member lists the whole crew, itself included"
        )
    return config.model_copy(
        update={
            "storage": StorageConfig(path=(base_dir / config.storage.path).resolve()),
            "scenarios": ScenariosConfig(dir=(base_dir / config.scenarios.dir).resolve()),
        }
    )


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    return parse_config(data, base_dir=path.parent, environ=environ)
