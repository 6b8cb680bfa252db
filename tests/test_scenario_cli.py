"""`blossom validate` and `blossom schema`: exit codes, output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bot.cli import main

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "scenarios").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stdout, result.stderr


def test_validate_examples_ok() -> None:
    code, out, _ = invoke("validate", *map(str, EXAMPLES))
    assert code == 0
    assert out.splitlines() == [f"{p}: ok" for p in EXAMPLES]


def test_validate_reports_every_invalid_file() -> None:
    good, bad = EXAMPLES[0], ROOT / "tests" / "invalid" / "unknown-timezone.yaml"
    code, out, _ = invoke("validate", str(bad), str(good))
    assert code == 1
    assert out.splitlines() == [
        f"{bad}:9:15: cities[0].timezone: unknown time zone 'America/New_Yrok' "
        "(expected an IANA name like Europe/Berlin)",
        f"{good}: ok",
    ]


def test_validate_missing_file_is_invalid_not_usage(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    code, out, _ = invoke("validate", str(missing), str(EXAMPLES[0]))
    assert code == 1
    assert out.splitlines() == [
        f"{missing}:1:1: cannot read the file: No such file or directory",
        f"{EXAMPLES[0]}: ok",
    ]


@pytest.mark.parametrize("args", [["validate"], ["validate", "--nope", "x"], ["plan"], ["nope"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    code, _, _ = invoke(*args)
    assert code == 2


def test_no_traceback_on_the_whole_corpus() -> None:
    # A real process, so nothing in the test harness can hide a traceback.
    done = subprocess.run(
        [sys.executable, "-m", "bot", "validate", *map(str, INVALID)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == ""
    assert "Traceback" not in done.stdout
    lines = done.stdout.splitlines()
    assert {line.split(":", 1)[0] for line in lines} == {str(p) for p in INVALID}
    assert not any("internal error" in line for line in lines)


def test_schema_is_json_schema() -> None:
    code, out, _ = invoke("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "id", "title", "start", "cities", "stages"}
    place = schema["$defs"]["Place"]
    assert "id" not in place["properties"] and "id" not in place.get("required", [])
    assert "else" in schema["$defs"]["Gate"]["properties"]


def test_examples_match_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    _, out, _ = invoke("schema")
    validator = jsonschema.Draft202012Validator(json.loads(out))
    for path in EXAMPLES:
        # The schema sees what an editor sees: YAML with timestamps as text.
        data = yaml.load(path.read_text(), Loader=_TextTimestampLoader)
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], path


class _TextTimestampLoader(yaml.SafeLoader):
    pass


_TextTimestampLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _TextTimestampLoader.construct_yaml_str
)
