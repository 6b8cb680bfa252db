"""Logging setup. Log lines carry ids (scenario, city, stage, room, event), never
stage content; secrets are never passed to a logger in the first place."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# Third-party loggers that are chatty at INFO/DEBUG (nio logs every event type it
# handles; at DEBUG some libraries log request bodies). Kept at WARNING whatever
# the bot's own level, so DEBUG on the bot never dumps message content.
_QUIET = ("nio", "aiohttp", "apscheduler", "peewee", "aiosqlite", "asyncio")


def setup_logging(level: str = "INFO", file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(file, encoding="utf-8")]
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
