"""What the demo shows: a rich live view on a terminal, plain lines otherwise (CI).

Both only read :class:`bot.devtools.demo.state.DemoState`. Secret until release: the only
stage content shown is what a participant's client received.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from bot.devtools.demo.state import LOCATION, CityState, DemoState, Summary

Echo = Callable[[str], None]


class PlainView:
    """One line per event, with the seconds since the start; for pipes and CI."""

    def __init__(self, state: DemoState, echo: Echo) -> None:
        self._echo = echo
        self._t0 = time.monotonic()
        state.listeners.append(self._line)

    def _line(self, kind: str, line: str) -> None:
        mark = "==" if kind == "phase" else "  "
        self._echo(f"[{time.monotonic() - self._t0:6.1f}s] {mark} {line}")

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _lateness_cell(seconds: float) -> Text:
    style = "green" if seconds < 1.0 else "yellow" if seconds < 3.0 else "red"
    return Text(f"{seconds:+.2f}s", style=style)


def city_table(state: DemoState, city: CityState, now: datetime) -> Table:
    """One city: a row per stage part, a column per participant (delay on arrival)."""
    table = Table(expand=True, box=None, pad_edge=False, show_edge=False)
    table.add_column("local", no_wrap=True, style="cyan")
    table.add_column("stage", no_wrap=True)
    for who in city.participants:
        table.add_column(who.split("-", 1)[0], no_wrap=True, justify="right")
    table.add_column("message (as received)", no_wrap=True, overflow="ellipsis", ratio=1)
    zone = ZoneInfo(city.timezone) if city.timezone else UTC
    for e in (e for e in state.expected if e.city_id == city.id):
        for part in e.parts:
            label = e.stage_id + (" 📍" if part == LOCATION else "")
            if e.gated and part != LOCATION:
                label += " ⛩"
            cells: list[RenderableType] = [
                Text(e.due.astimezone(zone).strftime("%H:%M")),
                Text(label),
            ]
            body = ""
            for who in city.participants:
                receipt = state.receipts.get((city.id, e.stage_id, part, who))
                if receipt is not None:
                    cells.append(_lateness_cell(receipt.lateness_s))
                    body = body or receipt.body
                elif now < e.due_wall:
                    cells.append(Text("·", style="dim"))
                else:
                    cells.append(Text("…", style="yellow"))
            if body:
                message = Text(body.replace("\n", " "))
                if e.stage_id in city.released_by_organiser:
                    message.append("  (released by the organiser)", style="italic dim")
            else:
                message = Text("secret until release", style="dim italic")
            cells.append(message)
            table.add_row(*cells)
    return table


def _checkins(city: CityState) -> Text:
    text = Text("check-ins: ", style="dim")
    if not city.checkins:
        text.append("none yet", style="dim")
    for who, status in sorted(city.checkins.items()):
        text.append(f"{who.split('-', 1)[0]} ")
        text.append("✅ " if status == "acknowledged" else "⋯ ", style="green")
    return text


class LiveView:
    """A rich Live view, redrawn four times a second from the state."""

    def __init__(self, state: DemoState, console: Console) -> None:
        self._state = state
        self._console = console
        self._t0 = time.monotonic()
        self._spinner = Spinner("dots", style="magenta")
        self._live = Live(
            get_renderable=self.render,
            console=console,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.refresh()
        self._live.stop()

    def render(self) -> RenderableType:
        state = self._state
        now = datetime.now(UTC)
        elapsed = time.monotonic() - self._t0
        header = Text.assemble(
            ("Blossom demo", "bold magenta"),
            f"  {state.scenario_id or 'scenarios/demo.yaml'} · "
            f"{len(state.cities) or '…'} cities · time ×{state.speed:g} · {elapsed:4.0f} s",
        )
        phase = Table.grid(padding=(0, 1))
        phase.add_row(self._spinner, Text(state.phase))
        parts: list[RenderableType] = [header, phase]
        if state.expected:
            parts.append(
                Text(
                    "Per city: each stage as its participants' clients got it, with the delay "
                    "from its scheduled instant.  ⛩ quorum gate  📍 location pin",
                    style="dim",
                )
            )
        if not state.expected:
            setup = [line for kind, line in state.log if kind == "setup"]
            parts.append(Text("\n".join(setup[-6:]), style="dim"))
        for city in state.cities:
            if not state.expected:
                break
            parts.append(
                Panel(
                    Group(city_table(state, city, now), _checkins(city)),
                    title=f"[bold]{city.name}[/] · {city.timezone}",
                    title_align="left",
                    border_style="magenta",
                )
            )
        if state.notices:
            notices = Text("\n".join(state.notices[-4:]))
            parts.append(
                Panel(notices, title="control room (the bot's reports)", title_align="left")
            )
        return Group(*parts)


def summary_text(summary: Summary) -> str:
    """The closing summary, plain text (printed in both modes)."""
    lines = [
        "Summary",
        f"  Dispatches delivered: {summary.delivered} of {summary.dispatches} "
        f"({summary.cities} {'city' if summary.cities == 1 else 'cities'}), each checked "
        "exactly once in its room "
        f"({summary.events_counted} events counted by their org.blossom.dispatch tag)",
        f"  Participants: {summary.participants}; check-ins: "
        + ", ".join(f"{c} {n}" for c, n in summary.checkins.items()),
        f"  Largest lateness: {summary.max_lateness_s:.2f} s "
        "(scheduled instant → a participant's client)",
    ]
    if summary.released_by_organiser:
        lines.append(
            "  Gates the organiser released with !release: "
            + ", ".join(summary.released_by_organiser)
        )
    lines += [
        f"  Took: {summary.elapsed_s:.0f} s at ×{summary.speed:g}",
        f"  Plan picture: {summary.plan_svg}",
        "  Logs: " + "; ".join(f"{path} ({what})" for what, path in summary.logs.items()),
    ]
    if summary.ok:
        lines.append("OK: every dispatch arrived, exactly once.")
    else:
        lines.append(f"PROBLEMS ({len(summary.problems)}):")
        lines += [f"  - {p}" for p in summary.problems[:30]]
    return "\n".join(lines)


def keep_text(info: dict[str, str], speed: float) -> str:
    return "\n".join(
        [
            "",
            "--keep: the homeserver and the bot keep running. Ctrl-C stops both.",
            f"  Homeserver:  {info['homeserver']}  (loopback only; any Matrix client)",
            f"  Organiser:   {info['organiser']}  password: {info['organiser_password']}",
            f"  Participant: {info['participant']}  password: {info['participant_password']}",
            "  These are throwaway demo accounts on this temporary homeserver; they vanish",
            "  with it. Log in as the organiser to see the control room and try !status or",
            f"  !help; the bot's clock still runs {speed:g} times fast.",
        ]
    )
