"""``blossom run``: load the config, run the bot until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from bot.app import run_bot
from bot.clock import SystemClock
from bot.config import ConfigError, load_config
from bot.logs import setup_logging
from bot.matrix.session import SessionError
from bot.store import StoreError

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def run_command(config_path: Path, log_level: str = "INFO", log_file: Path | None = None) -> int:
    """Returns the process exit code; prints one clear line on failure."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        print(f"blossom: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(log_level, log_file)
    try:
        asyncio.run(run_bot(config, SystemClock()))
    except SessionError as err:
        print(f"blossom: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except StoreError as err:
        print(f"blossom: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        pass
    log.info("stopped cleanly")
    return 0
