"""The docs do not drift: every command and example in README.md and docs/*.md runs.

Each fenced block is taken from the Markdown and checked by kind:

- ``yaml``: a scenario loads (and equals the file of the same id in
  ``scenarios/``), a bot config parses, anything else is at least YAML;
- ``sh``: run with bash in a scratch directory, with the ``blossom`` of this
  checkout. Commands that need the homeserver (``blossom run``, ``curl`` to the
  admin API, ``register_new_matrix_user``, the backup of a bot's data) run in
  :func:`test_operator_commands_against_a_homeserver` against a real Synapse, with
  the docs' example names (``matrix.example.org``, ``/var/lib/blossom``, ...)
  replaced by the test's. Commands that need root or a service manager
  (``sudo``, ``systemctl``, ``make``, ``pip``, ...) cannot run here; they are
  checked for what can be checked (the make target exists, the unit name matches
  the unit file, the paths agree). ``blossom demo`` is run by tests/test_demo.py;
  here its options are checked;
- ``ini``: the systemd unit parses, its ExecStart is a valid ``blossom run``
  command line, and ``systemd-analyze verify`` accepts it where that exists;
- ``text``: every line that starts with ``!`` is a chat command that parses
  without a usage error; ``NAME=value`` lines name an environment variable the
  bot reads;
- ``json``: parses.

And every command of the control room and of participants is documented.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from matrix_helpers import ClientPool, collect_messages, content_of, create_room, send_text

from bot.cli import main
from bot.config import ENV_ACCESS_TOKEN, ENV_PASSWORD, parse_config
from bot.control.catalog import (
    CONTROL_COMMANDS,
    CREW_COMMANDS,
    PARTICIPANT_COMMANDS,
    ROLE_COMMANDS,
)
from bot.control.parse import Command, parse
from bot.control.registry import CommandDef
from bot.devtools.homeserver import EmbeddedHomeserver
from bot.scenario import load_scenario_file, load_scenario_text

ROOT = Path(__file__).resolve().parent.parent
# The user-facing docs. (docs/architecture.md is for developers and shows no commands.)
DOCS = [
    ROOT / "README.md",
    *(ROOT / "docs" / f for f in ("organisers.md", "operators.md", "participants.md")),
]
VENV_BIN = Path(sys.executable).parent

# !crew exists only in a crew, but is documented like every command.
CONTROL: dict[str, CommandDef] = {**CONTROL_COMMANDS, **CREW_COMMANDS}
# !role is a participant command where an action has roles (shown in !help there).
PARTICIPANT_SPECS: dict[str, CommandDef] = {**PARTICIPANT_COMMANDS, **ROLE_COMMANDS}
EVERY_COMMAND: dict[str, CommandDef] = {**PARTICIPANT_SPECS, **CONTROL}

# Commands that cannot run in a test (root, a service manager, a network install,
# this very suite). Each is still checked in _check_static.
STATIC = {"sudo", "systemctl", "journalctl", "make", "python3", "pip", "git", "useradd"}
# Blocks with these need the homeserver (and run in the homeserver test).
NEEDS_HOMESERVER = ("blossom run", "curl ", "register_new_matrix_user", "tar -C /var/lib/blossom")

# The docs' example names, and where they point in the scratch directory.
OFFLINE_NAMES = {
    "/opt/blossom/.venv/bin/": f"{VENV_BIN}/",
    ".venv/bin/": f"{VENV_BIN}/",
}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line} ({self.lang})"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block, also inside list items (indentation removed)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = len(opening.group(1)), opening.group(2)
        body: list[str] = []
        j = i + 1
        while not re.match(r"^\s*```\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in fenced_blocks(doc)]


def blocks_of(lang: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.lang == lang]


def command_lines(text: str) -> list[str]:
    """Shell lines with continuations joined and trailing comments dropped."""
    joined = text.replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        result.append(re.sub(r"\s+#\s.*$", "", stripped))
    return result


def first_word(line: str) -> str:
    word = line.split()[0]
    return word.rsplit("/", 1)[-1]


def substitute(text: str, names: Mapping[str, str]) -> str:
    """Replace every key of ``names`` in one pass (longest first, no double replacing)."""
    if not names:
        return text
    pattern = "|".join(re.escape(k) for k in sorted(names, key=len, reverse=True))
    return re.sub(pattern, lambda m: names[m.group(0)], text)


def check_command_line(args: list[str]) -> None:
    """Parse ``blossom ARGS`` the way click would, without running it."""
    command = main.commands[args[0]]
    command.make_context(args[0], list(args[1:]))  # raises click.UsageError if wrong


def is_demo(line: str) -> bool:
    return first_word(line) == "blossom" and line.split()[1:2] == ["demo"]


def is_synopsis(line: str) -> bool:
    return first_word(line) == "blossom" and "[" in line


def runnable_script(block: Block) -> str:
    """The block as a bash script: static lines, demos and synopses become no-ops."""
    out = []
    for line in command_lines(block.text):
        if first_word(line) in STATIC or is_demo(line) or is_synopsis(line):
            out.append(":")
        else:
            out.append(line)
    return "set -euo pipefail\n" + "\n".join(out) + "\n"


def bash(
    script: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sandbox(tmp_path: Path) -> Path:
    """A scratch checkout: the example scenarios and the example config."""
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios")
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.example.yaml")
    return tmp_path


# -- yaml, json, ini, text -------------------------------------------------------------


def _yaml_id(block: Block) -> str:
    return str(block)


@pytest.mark.parametrize("block", blocks_of("yaml"), ids=_yaml_id)
def test_yaml_blocks(block: Block) -> None:
    data = yaml.safe_load(block.text)
    assert data is not None, f"{block}: empty"
    if isinstance(data, dict) and "version" in data and "stages" in data:
        scenario = load_scenario_text(block.text, filename=str(block))
        for path in (ROOT / "scenarios").glob("*.yaml"):
            if (yaml.safe_load(path.read_text()) or {}).get("id") == scenario.id:
                # A documented example must be the file of the same id, to the letter.
                assert load_scenario_file(path) == scenario, f"{block} differs from {path.name}"
    elif isinstance(data, dict) and "matrix" in data:
        parse_config(data, base_dir=ROOT, environ={ENV_PASSWORD: "from-the-environment"})


def test_documented_scenarios_are_the_example_files() -> None:
    documented = {
        load_scenario_text(b.text).id
        for b in blocks_of("yaml")
        if "stages" in (yaml.safe_load(b.text) or {})
    }
    assert {"silent-disco-quorum", "lantern-walk"} <= documented


@pytest.mark.parametrize("block", blocks_of("json"), ids=str)
def test_json_blocks(block: Block) -> None:
    json.loads(block.text)


def _unit_blocks() -> list[Block]:
    return [b for b in blocks_of("ini") if "[Service]" in b.text]


def test_systemd_unit(tmp_path: Path) -> None:
    (block,) = _unit_blocks()
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(block.text)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/blossom/.venv/bin/blossom"
    check_command_line(argv[1:])
    assert argv[1:3] == ["run", "--config"]
    config_path = argv[3]
    ops = (ROOT / "docs" / "operators.md").read_text()
    assert f"`{config_path}`" in ops, "the unit's config is the one the guide shows"
    assert int(service["RestartPreventExitStatus"]) == 2  # `blossom run`: bad config
    assert service["KillSignal"] == "SIGTERM"
    env_file = service["EnvironmentFile"]
    assert f"`{env_file}`" in ops
    assert "`/etc/systemd/system/blossom.service`" in ops
    # Where systemd exists, let it check the unit (with this checkout's blossom).
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        path = tmp_path / "blossom.service"
        path.write_text(block.text.replace(argv[0], str(VENV_BIN / "blossom")))
        result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
        problems = [
            ln for ln in result.stderr.splitlines() if "blossom.service" in ln and "Unknown" in ln
        ]
        assert result.returncode == 0 and not problems, result.stderr


@pytest.mark.parametrize("block", blocks_of("text"), ids=str)
def test_text_blocks_are_chat_commands_or_environment(block: Block) -> None:
    for line in block.text.splitlines():
        line = line.strip()
        if line.startswith("!"):
            parsed = parse(line, EVERY_COMMAND)
            assert isinstance(parsed, Command), f"{block}: {line!r}: {parsed}"
        elif re.match(r"^[A-Z_]+=", line):
            assert line.split("=", 1)[0] in (ENV_PASSWORD, ENV_ACCESS_TOKEN), line


def test_inline_commands_exist() -> None:
    for doc in DOCS:
        for name in re.findall(r"`!([a-z]+)`?", doc.read_text()):
            if name == "id":  # the README's room ids: `!id:server`, `!id`
                continue
            assert name in EVERY_COMMAND, f"{doc.name}: !{name} is not a command"


def test_every_command_is_documented() -> None:
    organisers = (ROOT / "docs" / "organisers.md").read_text()
    for name in CONTROL:
        assert f"`!{name}" in organisers, f"!{name} is missing from docs/organisers.md"
    participants = (ROOT / "docs" / "participants.md").read_text()
    for name in PARTICIPANT_SPECS:
        assert f"!{name}" in participants, f"!{name} is missing from docs/participants.md"


# -- shell ---------------------------------------------------------------------------------


def _sh_blocks(*, homeserver: bool) -> list[Block]:
    return [b for b in blocks_of("sh") if any(k in b.text for k in NEEDS_HOMESERVER) == homeserver]


def test_there_are_shell_examples() -> None:
    assert len(_sh_blocks(homeserver=False)) >= 8
    assert len(_sh_blocks(homeserver=True)) >= 5


@pytest.mark.parametrize("block", _sh_blocks(homeserver=False), ids=str)
def test_shell_blocks_run(block: Block, tmp_path: Path) -> None:
    cwd = sandbox(tmp_path)
    script = substitute(runnable_script(block), OFFLINE_NAMES)
    script = re.sub(r"\bFILE\b", "scenarios/demo.yaml", script)
    result = bash(script, cwd)
    assert result.returncode == 0, f"{block}\n{script}\n{result.stdout}\n{result.stderr}"
    for out in re.findall(r"--(?:svg|html) (\S+)", script):
        assert (cwd / out).stat().st_size > 0


@pytest.mark.parametrize("block", blocks_of("sh"), ids=str)
def test_static_lines_check_out(block: Block) -> None:
    makefile = (ROOT / "Makefile").read_text()
    ops = (ROOT / "docs" / "operators.md").read_text()
    for line in command_lines(block.text):
        words = line.split()
        if words[0] == "sudo":
            words = words[1:]
        word = words[0].rsplit("/", 1)[-1]
        if is_demo(line) or is_synopsis(line):
            # The demo itself runs in tests/test_demo.py; a synopsis is not a command.
            command = main.commands[words[1]]
            names = {o for p in command.params for o in getattr(p, "opts", [])}
            for option in re.findall(r"--[a-z][a-z-]*", line):
                assert option in names, f"{block}: {option} is not an option of {words[1]}"
            if is_demo(line):
                check_command_line(words[1:])
        elif word == "make":
            assert re.search(rf"^{words[1]}:", makefile, re.M), f"no make target {words[1]}"
        elif word in ("systemctl", "journalctl"):
            unit = words[-1] if word == "systemctl" else words[words.index("-u") + 1]
            if unit not in ("daemon-reload",):
                assert f"/etc/systemd/system/{unit}.service" in ops, line
        elif word in ("pip", "python3"):
            target = line.split("install", 1)[1].split()[-1] if "install" in line else ""
            if target:
                source = ROOT if target in (".", "/opt/blossom") else Path(target)
                assert (source / "pyproject.toml").exists(), line
        elif word == "git":
            assert "/opt/blossom" in line
        elif word == "useradd":
            assert "/var/lib/blossom" in line
        elif word == "install":
            assert "/var/lib/blossom/scenarios" in line
        elif word in STATIC:
            raise AssertionError(f"{block}: no static check for {line!r}")


# -- against a homeserver -------------------------------------------------------------------


def _block_with(doc: str, needle: str) -> Block:
    found = [b for b in blocks_of("sh") if b.doc.name == doc and needle in b.text]
    assert len(found) == 1, (doc, needle, found)
    return found[0]


def _start(script: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _terminate(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the bot itself, as systemd would (bash waits for it and exits with
    its status); SIGKILL the lot if it does not stop."""
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in children or [str(proc.pid)]:  # bash may have exec'ed the bot itself
        os.kill(int(pid), signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _run_bot_block(
    block: Block,
    names: Mapping[str, str],
    cwd: Path,
    control: str,
    pool: ClientPool,
    log: Path,
    bot_id: str,
) -> None:
    """Run a block ending in `blossom run`; once the bot has synced, the organiser
    says `!help` in the control room and the bot must answer. Then SIGTERM, as
    systemd would: it must exit 0, having logged no password."""
    proc = await asyncio.to_thread(_start, substitute(runnable_script(block), names), cwd, log)
    try:
        for _ in range(150):
            text = await asyncio.to_thread(log.read_text)
            # Invited, not yet joined, at its first sync: it joins the control room
            # just after, and a !help sent before that join is history it ignores
            # (a run under load: !help sent within 0.2 s of the first sync, the join
            # 0.17 s after it, no answer).
            if "first sync done" in text and (
                f"joined {control}" in text or "first sync done; 0 rooms" not in text
            ):
                break
            assert proc.poll() is None, text
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the bot did not sync: {text}")
        organiser = pool.clients[0]
        asked = await send_text(organiser, control, "!help")
        replies = await collect_messages(
            organiser,
            control,
            until=lambda ms: any(m.sender == bot_id and _replies_to(m, asked) for m in ms),
            timeout=20,
        )
        answer = next(m for m in replies if m.sender == bot_id and _replies_to(m, asked))
        assert "!arm" in content_of(answer)["body"]
    finally:
        code = await asyncio.to_thread(_terminate, proc)
    text = await asyncio.to_thread(log.read_text)
    assert code == 0, text
    assert names["change-me"] not in text  # the password is never logged


def _replies_to(event: Any, event_id: str) -> bool:
    relation = content_of(event).get("m.relates_to") or {}
    return bool((relation.get("m.in_reply_to") or {}).get("event_id") == event_id)


@pytest.mark.homeserver
async def test_operator_commands_against_a_homeserver(
    fresh_homeserver: Any, tmp_path: Path
) -> None:
    hs: EmbeddedHomeserver = await fresh_homeserver()
    password = "docs-test-password-7"
    work = sandbox(tmp_path / "work")
    names = {
        "https://matrix.example.org": hs.url,
        "http://localhost:8008": hs.url,
        "/etc/matrix-synapse/homeserver.yaml": str(hs.config_path),
        "@blossom:example.org": hs.user_id("blossom"),
        "change-me": password,
        "/opt/blossom/.venv/bin/": f"{VENV_BIN}/",
        ".venv/bin/": f"{VENV_BIN}/",
        "/var/lib/blossom": str(tmp_path / "var-lib-blossom"),
        "/var/backups/blossom": str(tmp_path / "backups"),
        "/etc/blossom": str(tmp_path / "etc-blossom"),
    }
    env = {ENV_PASSWORD: password}

    # The bot's account (operators.md), by shared secret.
    register = _block_with("operators.md", "register_new_matrix_user")
    result = bash(substitute(runnable_script(register), names), work, env)
    assert result.returncode == 0, result.stdout + result.stderr

    # The rate-limit exemption and its check.
    names["$ADMIN_TOKEN"] = await hs.admin_token()
    post = _block_with("operators.md", "-X POST")
    result = bash(substitute(runnable_script(post), names), work)
    assert result.returncode == 0, result.stdout + result.stderr
    get = next(
        b for b in blocks_of("sh") if "override_ratelimit" in b.text and "-X POST" not in b.text
    )
    result = bash(substitute(runnable_script(get), names), work)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"messages_per_second": 0, "burst_count": 0}

    async with ClientPool(hs, tmp_path / "stores") as pool:
        organiser = await pool.participant(await hs.register("organiser"))
        control = await create_room(organiser, name="control", invite=[hs.user_id("blossom")])
        names["!abcdef:example.org"] = control

        # operators.md: the config, then `blossom run` in the foreground.
        (config_block,) = [
            b for b in blocks_of("yaml") if b.doc.name == "operators.md" and "matrix:" in b.text
        ]
        etc = tmp_path / "etc-blossom"
        etc.mkdir()
        (etc / "config.yaml").write_text(substitute(config_block.text, names))
        (tmp_path / "var-lib-blossom" / "scenarios").mkdir(parents=True)
        await _run_bot_block(
            _block_with("operators.md", "blossom run"),
            names,
            work,
            control,
            pool,
            tmp_path / "ops-run.log",
            hs.user_id("blossom"),
        )
        data = tmp_path / "var-lib-blossom" / "data"
        assert (data / "blossom.db").exists() and (data / "credentials.json").exists()
        assert oct((data / "credentials.json").stat().st_mode & 0o777) == "0o600"

        # operators.md: the backup of the data directory.
        backup = _block_with("operators.md", "tar -C /var/lib/blossom")
        result = bash(substitute(runnable_script(backup), names), work)
        assert result.returncode == 0, result.stdout + result.stderr
        (archive,) = (tmp_path / "backups").glob("*.tar.gz")
        assert oct(archive.stat().st_mode & 0o777) == "0o600"
        with tarfile.open(archive) as tar:
            members = set(tar.getnames())
        assert {"data/blossom.db", "data/credentials.json", "scenarios"} <= members
        assert any(m.startswith("data/nio-store/") for m in members)

        # README quick start: copy the example config, set the three keys, run.
        copy = _block_with("README.md", "cp config.example.yaml config.yaml")
        result = bash(substitute(runnable_script(copy), names), work)
        assert result.returncode == 0, result.stderr
        config = yaml.safe_load((work / "config.yaml").read_text())
        config["matrix"].update(homeserver=hs.url, user_id=hs.user_id("blossom"))
        config["matrix"].pop("password")
        # A second device for the same account: this checkout's bot already holds
        # BLOSSOMBOT (from the operators' run above) with its own keys.
        config["matrix"]["device_id"] = "BLOSSOMREADME"
        config["control"]["rooms"] = [control]
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        (work / "scenarios").mkdir(exist_ok=True)
        await _run_bot_block(
            _block_with("README.md", "blossom run"),
            names,
            work,
            control,
            pool,
            tmp_path / "readme-run.log",
            hs.user_id("blossom"),
        )
