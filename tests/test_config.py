"""The bot's config: one error naming the key, exit code 2, env overrides, no secrets."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ENV_ACCESS_TOKEN, ENV_PASSWORD, ConfigError, load_config, parse_config
from bot.matrix.session import Credentials

SECRET = "pw-Zq8Kx3-never-shown"
TOKEN = "syt_tok-Jm4Wv9-never-shown"

GOOD: dict[str, Any] = {
    "matrix": {
        "homeserver": "https://matrix.example.org",
        "user_id": "@blossom:example.org",
        "password": SECRET,
        "device_id": "BLOSSOMBOT",
    },
    "storage": {"path": "./data"},
    "control": {"rooms": ["!abcdef:example.org"], "min_power_level": 50},
    "scenarios": {"dir": "./scenarios"},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    """GOOD with one key set (``value`` is ``DELETE`` to remove it)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def parse(data: Any, environ: dict[str, str] | None = None) -> Any:
    return parse_config(data, base_dir=Path("/srv/blossom"), environ=environ or {})


def test_good_config_and_defaults() -> None:
    config = parse(GOOD)
    assert config.matrix.password is not None
    assert config.matrix.password.get_secret_value() == SECRET
    assert config.storage.path == Path("/srv/blossom/data")
    assert config.scenarios.dir == Path("/srv/blossom/scenarios")
    assert config.control.min_power_level == 50
    assert config.dispatch.max_in_flight == 16


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = load_config(example, environ={})
    assert config.control.rooms


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("matrix.homeserver", DELETE, "matrix.homeserver"),
        ("matrix.homeserver", "matrix.example.org", "matrix.homeserver"),
        ("matrix.user_id", "blossom", "matrix.user_id"),
        ("matrix.device_id", "has spaces", "matrix.device_id"),
        ("matrix.pasword", "x", "matrix.pasword"),
        ("storage", DELETE, "storage"),
        ("storage.path", None, "storage.path"),
        ("control.rooms", [], "control.rooms"),
        ("control.rooms", ["#alias:example.org"], "control.rooms"),
        ("control.rooms", "!abc:example.org", "control.rooms"),
        ("control.min_power_level", "high", "control.min_power_level"),
        ("scenarios", {"directory": "x"}, "scenarios"),
        ("dispatch", {"max_in_flight": 0}, "dispatch.max_in_flight"),
        ("dispatch", {"prepare_seconds": -1}, "dispatch.prepare_seconds"),
        ("extra", 1, "extra"),
    ],
)
def test_bad_key_is_one_error_naming_it(path: str, value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_(path, value))
    message = str(info.value)
    assert message.startswith(f"{key}"), message
    assert "\n" not in message
    assert SECRET not in message


def test_no_secret_at_all() -> None:
    data = with_("matrix.password", DELETE)
    with pytest.raises(ConfigError, match=r"^matrix\.password: .*BLOSSOM_PASSWORD"):
        parse(data)


def test_access_token_needs_a_device_id() -> None:
    """A token belongs to a device: without the device id the bot could not restore
    the session, so it is a config error (exit 2), not a failure at run time."""
    data = with_("matrix.password", DELETE)
    data["matrix"]["access_token"] = TOKEN
    del data["matrix"]["device_id"]
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert str(info.value).startswith("matrix.device_id")
    assert TOKEN not in str(info.value)
    data["matrix"]["device_id"] = "DEV"
    assert parse(data).matrix.access_token is not None


def test_not_a_mapping() -> None:
    for data in (None, [], "matrix: x", 42):
        with pytest.raises(ConfigError, match="YAML mapping"):
            parse(data)


@pytest.mark.parametrize("bad", [123, ["a"], {"value": SECRET}, True])
def test_secret_of_the_wrong_type_is_not_echoed(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_("matrix.password", bad))
    assert str(info.value).startswith("matrix.password")
    assert SECRET not in str(info.value)


def test_secret_misplaced_in_another_key_is_not_echoed() -> None:
    """Pasting the password into the wrong field: the error names the field, not it."""
    for path in ("matrix.homeserver", "matrix.user_id", "matrix.device_id"):
        with pytest.raises(ConfigError) as info:
            parse(with_(path, SECRET + " !"))
        assert str(info.value).startswith(path)
        assert SECRET not in str(info.value)


# -- environment ---------------------------------------------------------------------------


def test_env_password_overrides_the_file() -> None:
    config = parse(GOOD, {ENV_PASSWORD: "from-env"})
    assert config.matrix.password is not None
    assert config.matrix.password.get_secret_value() == "from-env"


def test_env_supplies_a_missing_secret() -> None:
    data = with_("matrix.password", DELETE)
    config = parse(data, {ENV_PASSWORD: "from-env"})
    assert config.matrix.password is not None
    config = parse(data, {ENV_ACCESS_TOKEN: TOKEN})
    assert config.matrix.access_token is not None
    assert config.matrix.access_token.get_secret_value() == TOKEN


def test_empty_env_is_ignored() -> None:
    config = parse(GOOD, {ENV_PASSWORD: ""})
    assert config.matrix.password is not None
    assert config.matrix.password.get_secret_value() == SECRET


def test_env_does_not_mutate_the_input() -> None:
    data = copy.deepcopy(GOOD)
    parse(data, {ENV_PASSWORD: "from-env"})
    assert data == GOOD


def test_load_config_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(with_("matrix.password", DELETE)))
    monkeypatch.setenv(ENV_PASSWORD, "from-env")
    config = load_config(path)
    assert config.matrix.password is not None
    assert config.matrix.password.get_secret_value() == "from-env"
    assert config.storage.path == (tmp_path / "data").resolve()


# -- secrets never shown -------------------------------------------------------------------


def test_secrets_not_in_repr_str_or_json(caplog: pytest.LogCaptureFixture) -> None:
    data = copy.deepcopy(GOOD)
    data["matrix"]["access_token"] = TOKEN
    config = parse(data)
    for text in (
        repr(config),
        str(config),
        repr(config.matrix),
        f"{config.matrix}",
        config.model_dump_json(),
        str(config.model_dump()),
    ):
        assert SECRET not in text and TOKEN not in text
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("config %s %r", config, config.matrix)
    assert SECRET not in caplog.text and TOKEN not in caplog.text


def test_stored_credentials_repr_hides_the_token() -> None:
    creds = Credentials("https://m.example.org", "@b:example.org", "DEV", TOKEN)
    assert TOKEN not in repr(creds) and TOKEN not in str(creds)


# -- files and the CLI --------------------------------------------------------------------


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"matrix:\n  password: {SECRET}\n  user_id: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "not valid YAML" in str(info.value)
    assert f"{bad}:" in str(info.value)
    assert SECRET not in str(info.value)


def run_cli(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (with_("control.rooms", ["not-a-room"]), "control.rooms"),
        (with_("matrix.user_id", SECRET), "matrix.user_id"),
        (with_("storage", DELETE), "storage"),
    ],
)
def test_cli_exit_code_2_with_one_line(tmp_path: Path, data: Any, key: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli(path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"blossom: config error: {key}")
    assert SECRET not in proc.stderr + proc.stdout
    assert not (tmp_path / "data").exists()  # nothing was started


def test_cli_missing_file_is_exit_2(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "absent.yaml")
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


def test_cli_runtime_failure_is_exit_1_without_secrets(tmp_path: Path) -> None:
    """A good config whose homeserver cannot be reached: exit 1, the password from
    the environment appears nowhere in the output or the storage directory."""
    data = with_("matrix.password", DELETE)
    data["matrix"]["homeserver"] = "http://127.0.0.1:9"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli(path, **{ENV_PASSWORD: SECRET})
    assert proc.returncode == 1, proc.stderr
    assert "cannot reach" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    for file in (tmp_path / "data").rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file


# -- crew (docs/crew.md) ------------------------------------------------------------------

NORTH = "@blossom:example.org"  # GOOD's own user id
SOUTH = "@blossom:south.example"


def with_crew(crew: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    data["crew"] = crew
    return data


def test_without_crew_the_bot_is_a_crew_of_one() -> None:
    config = parse(GOOD)
    assert config.crew is None
    crew = config.effective_crew()
    assert crew.members == (NORTH,)
    assert crew.heartbeat_seconds == 30


def test_crew_in_the_config_order() -> None:
    config = parse(with_crew({"members": [SOUTH, NORTH], "heartbeat_seconds": 10}))
    assert config.effective_crew().members == (SOUTH, NORTH)
    assert config.effective_crew().heartbeat_seconds == 10
    assert parse(with_crew({"members": [NORTH, SOUTH]})).effective_crew().heartbeat_seconds == 30


@pytest.mark.parametrize(
    ("crew", "start"),
    [
        ({"members": [NORTH, "blossom"]}, "crew.members.1: not a Matrix user id"),
        ({"members": [NORTH, "@blossom"]}, "crew.members.1: not a Matrix user id"),
        ({"members": [NORTH, "@blossom:bad host"]}, "crew.members.1: not a Matrix user id"),
        ({"members": [NORTH, 7]}, "crew.members.1"),
        ({"members": [NORTH, SOUTH, NORTH]}, f"crew.members: {NORTH} is listed twice"),
        ({"members": []}, "crew.members"),
        ({"members": NORTH}, "crew.members"),
        ({}, "crew.members"),
        ({"members": [SOUTH]}, f"crew.members: must list this bot's own user id {NORTH}"),
        ({"members": [NORTH], "heartbeat_seconds": 0}, "crew.heartbeat_seconds"),
        ({"members": [NORTH], "heartbeat_seconds": 601}, "crew.heartbeat_seconds"),
        ({"members": [NORTH], "heartbeat_seconds": "often"}, "crew.heartbeat_seconds"),
        ({"members": [NORTH], "heartbeat": 30}, "crew.heartbeat"),
        ([NORTH, SOUTH], "crew"),
    ],
)
def test_bad_crew_is_one_error_naming_the_key(crew: Any, start: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_crew(crew))
    message = str(info.value)
    assert message.startswith(start), message
    assert "\n" not in message


def test_secret_pasted_into_the_crew_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_crew({"members": [NORTH, SECRET]}))
    assert str(info.value).startswith("crew.members.1")
    assert SECRET not in str(info.value)
