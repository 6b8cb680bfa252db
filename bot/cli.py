"""The ``blossom`` command line. Each command only parses options and calls the
module that does the work, so the logic stays testable without click."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from bot import __version__
from bot.clock import SystemClock
from bot.scenario import Scenario, ScenarioError, load_scenario_file
from bot.scenario.plan import build_plan, plan_json, plan_table
from bot.scenario.schema import schema_json
from bot.scenario.validate import validate_paths


@click.group()
@click.version_option(__version__, prog_name="blossom")
def main() -> None:
    """Blossom: staged flash-mob dispatch over Matrix."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def validate(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Check scenario FILES; print FILE:LINE:COL: message for every problem.

    Exit status: 0 all valid, 1 any invalid or unreadable, 2 usage error.
    """
    ctx.exit(validate_paths(files, click.echo))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
@click.option("--city", "city_id", metavar="ID", help="Only this city's dispatches.")
@click.option("--pod", "pod_id", metavar="ID", help="Only this pod's dispatches (POD or CITY/POD).")
@click.option("--role", "role_id", metavar="ID", help="Only what people with this role get.")
@click.option("--reveal", is_flag=True, help="Show stage text and places (secret until release).")
@click.option(
    "--svg",
    "svg_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the timeline to this SVG file (one lane per city) instead of printing.",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the timeline and the plan table as one HTML page instead of printing.",
)
@click.pass_context
def plan(
    ctx: click.Context,
    file: Path,
    output_format: str,
    city_id: str | None,
    pod_id: str | None,
    role_id: str | None,
    reveal: bool,
    svg_out: Path | None,
    html_out: Path | None,
) -> None:
    """List every dispatch of FILE in release order, content masked unless --reveal.

    With --svg or --html, draw the timeline to a file instead (masked the same way).
    """
    try:
        scenario = load_scenario_file(file)
    except ScenarioError as exc:
        for diagnostic in exc.diagnostics:
            click.echo(str(diagnostic), err=True)
        ctx.exit(1)
    if city_id is not None and city_id not in {c.id for c in scenario.cities}:
        known = ", ".join(c.id for c in scenario.cities)
        raise click.BadParameter(f"no city '{city_id}' (cities: {known})", param_hint="--city")
    _check_pod_role(scenario, pod_id, role_id)
    if svg_out is not None or html_out is not None:
        from bot.scenario.svg import plan_html, plan_svg

        for out, render in ((svg_out, plan_svg), (html_out, plan_html)):
            if out is not None:
                text = render(scenario, city=city_id, reveal=reveal, pod=pod_id, role=role_id)
                out.write_text(text, encoding="utf-8")
                click.echo(f"wrote {out}" + (" (content REVEALED)" if reveal else ""))
        return
    now = SystemClock().now()
    rows = build_plan(scenario, now, city=city_id, reveal=reveal, pod=pod_id, role=role_id)
    if output_format == "json":
        items = plan_json(rows, reveal=reveal, scenario=scenario)
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: do not squeeze the table into 80 columns
    console.print(plan_table(scenario, rows, reveal=reveal))


def _check_pod_role(scenario: Scenario, pod_id: str | None, role_id: str | None) -> None:
    if pod_id is not None:
        known = [f"{c.id}/{p.id}" for c in scenario.cities for p in c.pods or ()]
        if not any(pod_id in (name, name.split("/")[1]) for name in known):
            listed = ", ".join(known) or "the scenario has no pods"
            raise click.BadParameter(f"no pod '{pod_id}' ({listed})", param_hint="--pod")
    if role_id is not None and role_id not in scenario.role_ids:
        listed = ", ".join(scenario.role_ids) or "the scenario declares no roles"
        raise click.BadParameter(f"no role '{role_id}' ({listed})", param_hint="--role")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the scenario format (for editors)."""
    click.echo(schema_json())


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The bot's config file (see config.example.yaml).",
)
@click.option(
    "--log-level",
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level of the bot's own loggers (logs carry ids, never stage content).",
)
@click.option("--log-file", type=click.Path(path_type=Path), help="Log to this file instead.")
@click.pass_context
def run(ctx: click.Context, config_path: Path, log_level: str, log_file: Path | None) -> None:
    """Run the dispatch bot until SIGTERM or SIGINT.

    Exit status: 0 stopped cleanly, 1 runtime failure (login, database), 2 bad config.
    """
    from bot.runner import run_command  # the bot's dependencies load only for `run`

    ctx.exit(run_command(config_path, log_level, log_file))


@main.command()
@click.option(
    "--speed",
    type=click.FloatRange(1, 200),
    default=30.0,
    show_default=True,
    help="How many times faster than real time the scenario plays (30: half an hour in a minute).",
)
@click.option(
    "--cities",
    type=click.IntRange(1, 6),
    default=3,
    show_default=True,
    help="How many cities take part (two participants each).",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the homeserver and the bot running afterwards, and print logins to watch.",
)
@click.option(
    "--plain",
    is_flag=True,
    help="Plain lines instead of the live view (the default when not on a terminal).",
)
@click.option(
    "--crew",
    is_flag=True,
    help="Two bots in a crew; the first stops after the first stage, the second takes over.",
)
@click.pass_context
def demo(
    ctx: click.Context, speed: float, cities: int, keep: bool, plain: bool, crew: bool
) -> None:
    """Play scenarios/demo.yaml for real on a throwaway homeserver, in about a minute.

    Exit status: 0 every dispatch arrived exactly once, 1 a problem (listed), 2 the
    homeserver extra is missing, 130 interrupted (everything is stopped anyway).
    """
    from bot.devtools.demo.command import demo_command  # Synapse and nio load only for `demo`

    ctx.exit(demo_command(speed=speed, cities=cities, keep=keep, plain=plain, crew=crew))
