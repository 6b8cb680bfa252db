"""The `blossom demo` command: pick a view, run the demo, print the summary.

Exit status: 0 every dispatch arrived exactly once; 1 a problem (the summary
lists it) or the demo could not run; 2 the homeserver extra (or the demo
scenario) is missing; 130 interrupted before the end (everything is stopped all
the same).
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
from pathlib import Path

import click
from rich.console import Console

from bot.devtools.demo.run import DemoOptions, run_demo
from bot.devtools.demo.state import DemoState, Summary
from bot.devtools.demo.view import LiveView, PlainView, keep_text, summary_text
from bot.devtools.demo.world import DEMO_SCENARIO
from bot.devtools.homeserver import HomeserverError

EXIT_PROBLEM = 1
EXIT_MISSING = 2
EXIT_INTERRUPTED = 130


def _missing() -> str | None:
    """Why the demo cannot run here, or ``None``."""
    if importlib.util.find_spec("synapse") is None:
        return "blossom demo needs a homeserver: pip install -e '.[homeserver]' (make demo does it)"
    if not DEMO_SCENARIO.is_file():
        return (
            f"blossom demo plays {DEMO_SCENARIO}, which is not there: run it from the "
            "project's source tree (make demo installs it editable)."
        )
    return None


def _play(
    options: DemoOptions, state: DemoState, view: LiveView | PlainView
) -> tuple[bool, str | None]:
    """Run the demo under ``view``; returns (interrupted, failure)."""

    async def main() -> None:
        # SIGTERM (a CI timeout, `kill`) stops as cleanly as Ctrl-C does.
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await run_demo(options, state)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    with view:
        try:
            asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            return True, None
        except HomeserverError as err:
            return False, f"the homeserver failed: {err}"
        except Exception as err:  # the summary of a demo is its exit status
            return False, f"{err.__class__.__name__}: {err}"
    return False, None


def demo_command(
    *,
    speed: float,
    cities: int,
    keep: bool,
    workdir: Path | None = None,
    plain: bool = False,
    crew: bool = False,
) -> int:
    missing = _missing()
    if missing is not None:
        click.echo(missing, err=True)
        return EXIT_MISSING
    console = Console()
    live = console.is_terminal and not plain
    state = DemoState(speed=speed)
    results: list[Summary] = []
    view: LiveView | PlainView = LiveView(state, console) if live else PlainView(state, click.echo)

    def on_summary(summary: Summary) -> None:
        results.append(summary)

    def on_keep(info: dict[str, str]) -> None:
        # Printed once, when the run is over: the Live view is still up, so it goes
        # through its console (above the live area) or as plain lines.
        text = summary_text(results[0]) + "\n" + keep_text(info, speed) if results else ""
        if live:
            console.print(text, markup=False, highlight=False)
        else:
            click.echo(text)

    options = DemoOptions(
        speed=speed,
        cities=cities,
        keep=keep,
        workdir=workdir,
        crew=crew,
        on_summary=on_summary,
        on_keep=on_keep,
    )
    interrupted, failure = _play(options, state, view)
    if failure is not None:
        click.echo(f"blossom demo failed: {failure}", err=True)
        click.echo(f"Everything it started is stopped. Logs: {state.workdir}/logs", err=True)
        return EXIT_PROBLEM
    if not results:
        click.echo("Interrupted: the bot and the homeserver are stopped.", err=True)
        return EXIT_INTERRUPTED
    summary = results[0]
    if not keep:
        click.echo(summary_text(summary))
    click.echo(
        f"Everything is stopped. {summary.workdir} keeps the logs, the plan picture and "
        "summary.json."
    )
    if interrupted and not keep:
        return EXIT_INTERRUPTED
    return 0 if summary.ok else EXIT_PROBLEM
