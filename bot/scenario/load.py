"""Loading a scenario: bytes → YAML with positions → model → cross-checks.

The only entry points for untrusted files. Whatever the input, they return a
checked :class:`Scenario` or raise :class:`ScenarioError` listing every problem
as ``FILE:LINE:COL: message``; nothing else escapes for bad input.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from bot.scenario import semantics
from bot.scenario.diagnostics import Diagnostic, ScenarioError
from bot.scenario.fields import ERROR_TYPE
from bot.scenario.model import (
    City,
    Failover,
    Failsafe,
    Gate,
    LatePolicy,
    Place,
    Pod,
    Role,
    RoomEntry,
    Scenario,
    Stage,
)
from bot.scenario.source import Document, SourceError, compose
from bot.scenario.source import Path as DataPath

MAX_FILE_BYTES = 262_144
"""Largest scenario file accepted (256 KiB); real ones are a few kilobytes. With
``source.MAX_WRITTEN`` this bounds a load to about 3 s and 40 MiB (pure-Python YAML)."""


def load_scenario_file(path: Path) -> Scenario:
    """Load and check the scenario at ``path``. Raises :class:`ScenarioError`."""
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _single(name, 1, 1, _too_large(size))
        with path.open("rb") as handle:
            # Read one byte past the limit: the size may have changed since stat.
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _single(name, 1, 1, f"cannot read the file: {reason}") from None
    return load_scenario_text(data, name)


def load_scenario_text(text: str | bytes, filename: str = "<string>") -> Scenario:
    """Load and check a scenario from its text. Raises :class:`ScenarioError`."""
    try:
        return _load(text, filename)
    except ScenarioError:
        raise
    except Exception as exc:
        # A bug, not bad input; still no traceback for the person at the
        # terminal, and no exception text either (it could quote the file).
        raise _single(
            filename,
            1,
            1,
            f"internal error while checking this file ({type(exc).__name__}); please report it",
        ) from exc


def _single(filename: str, line: int, col: int, message: str) -> ScenarioError:
    return ScenarioError([Diagnostic(filename, line, col, message)])


def _too_large(size: int) -> str:
    return f"the file is too large ({size} bytes; at most {MAX_FILE_BYTES})"


def _decode(data: bytes, filename: str) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise _single(filename, 1, 1, _too_large(len(data)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise _single(
            filename, line, col, f"the file is not UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None
    return text


def _load(text: str | bytes, filename: str) -> Scenario:
    if isinstance(text, bytes):
        text = _decode(text, filename)
    elif len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise _single(filename, 1, 1, _too_large(len(text.encode("utf-8", "surrogatepass"))))
    text = text.removeprefix("\ufeff")
    try:
        document = compose(text)
    except SourceError as exc:
        raise _single(filename, exc.line, exc.col, exc.message) from None
    if not isinstance(document.data, dict):
        kind = "a list" if isinstance(document.data, list) else "a single value"
        raise _single(filename, 1, 1, f"the top level must be a mapping of keys, not {kind}")

    diagnostics = [Diagnostic(filename, line, col, msg) for line, col, msg in document.problems]
    try:
        scenario = Scenario.model_validate(document.data)
    except ValidationError as exc:
        # A value the YAML layer already refused (and replaced with null) also
        # fails the model; one message per place is enough.
        refused = {(d.line, d.col) for d in diagnostics}
        diagnostics += [
            d for d in _shape_diagnostics(exc, document, filename) if (d.line, d.col) not in refused
        ]
        raise ScenarioError(sorted(set(diagnostics))) from None
    if diagnostics:
        raise ScenarioError(sorted(set(diagnostics)))
    # Cross-checks need a well-shaped model, so they only run once the shape is right.
    for problem in semantics.check(scenario):
        line, col = document.position(problem.path, key=problem.key)
        diagnostics.append(Diagnostic(filename, line, col, _where(problem.path, problem.message)))
    if diagnostics:
        raise ScenarioError(sorted(set(diagnostics)))
    return scenario


# --- pydantic errors → diagnostics ------------------------------------------


def _shape_diagnostics(exc: ValidationError, document: Document, filename: str) -> list[Diagnostic]:
    errors = exc.errors(include_url=False, include_input=False)
    result = []
    for error in errors:
        if _is_consequence(error, errors):
            continue
        path, at_key = _data_path(error["loc"], document.data)
        message = _message(error, path)
        if error["type"] == "extra_forbidden":
            at_key = True
        line, col = document.position(path, key=at_key)
        result.append(Diagnostic(filename, line, col, message))
    return result


def _is_consequence(error: ErrorDetails, errors: list[ErrorDetails]) -> bool:
    # A list whose items failed also reports "too short" because nothing was
    # left after validation; the item errors already say what is wrong.
    if error["type"] != "too_short":
        return False
    loc = error["loc"]
    return any(len(e["loc"]) > len(loc) and e["loc"][: len(loc)] == loc for e in errors)


def _data_path(loc: tuple[int | str, ...], data: Any) -> tuple[DataPath, bool]:
    """Map a pydantic location onto the YAML data: (path, point at the key?).

    Segments that name nothing in the data (union tags, a missing key) are
    skipped, so the path ends at the closest node that exists.
    """
    node = data
    path: list[str | int] = []
    for segment in loc:
        if segment == "[key]":
            return tuple(path), True
        in_dict = isinstance(node, dict) and isinstance(segment, str) and segment in node
        in_list = isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node)
        if in_dict or in_list:
            node = node[segment]
            path.append(segment)
    return tuple(path), False


def _where(path: DataPath, message: str) -> str:
    if not path:
        return message
    text = ""
    for segment in path:
        text += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if text else segment)
    return f"{text}: {message}"


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed in the mapping where the unknown key ``loc[-1]`` was found."""
    model: type[BaseModel] = Scenario
    segments = iter(loc[:-1])
    for segment in segments:
        if model is Scenario and segment == "cities":
            model = City
        elif model is Scenario and segment == "stages":
            model = Stage
        elif model is Scenario and segment == "failover":
            model = Failover
        elif model is Scenario and segment == "failsafe":
            model = Failsafe
        elif model is Scenario and segment == "roles":
            model = Role
        elif model is City and segment == "pods":
            model = Pod
        elif model in (City, Pod) and segment == "rooms":
            model = RoomEntry
        elif model in (City, Pod) and segment == "places":
            model = Place
            next(segments, None)  # the place's own key
        elif model is Stage and segment == "require":
            model = Gate
        elif model is Stage and segment == "late":
            model = LatePolicy
    return [
        field.alias or name
        for name, field in model.model_fields.items()
        if not (model is Place and name == "id")
    ]


def _message(error: ErrorDetails, path: DataPath) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = error["loc"]
    last = str(loc[-1]) if loc else ""
    if kind == ERROR_TYPE:
        message = str(ctx.get("detail", error["msg"]))
    elif kind == "missing":
        return _where(path, f"missing required key '{last}'")
    elif kind == "extra_forbidden":
        message = f"unknown key '{last}'"
        close = difflib.get_close_matches(last, _known_keys(loc), n=1)
        if close:
            message += f" (did you mean '{close[0]}'?)"
        return _where(path[:-1], message)
    elif kind == "string_type":
        message = "expected a string"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = "expected a whole number"
    elif kind == "bool_type":
        message = "expected true or false"
    elif kind in ("tuple_type", "list_type"):
        message = "expected a list"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = "expected a mapping of keys"
    elif kind == "too_short":
        count = ctx.get("min_length", 1)
        message = f"needs at least {count} item{'s' if count != 1 else ''}"
    elif kind == "greater_than_equal":
        message = f"must be at least {ctx.get('ge')}"
    elif kind == "literal_error":
        message = f"expected one of {ctx.get('expected')}"
    else:
        message = error["msg"]
    return _where(path, message)
