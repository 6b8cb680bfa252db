"""The demo's world: its homeserver, its people, its scenario copy and the bot's config.

Pure helpers (the scenario copy, the config) plus a homeserver profile. The demo
plays ``scenarios/demo.yaml`` the way an organiser would: a copy with the real
room ids and a ``start`` a short time ahead goes into the demo's own scenarios
directory, and the organiser arms it from the control room.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bot.devtools.homeserver import EmbeddedHomeserver, rate_limit_config
from bot.scenario import Scenario

# The repository's demo scenario (the project is installed editable by `make`).
DEMO_SCENARIO = Path(__file__).resolve().parents[3] / "scenarios" / "demo.yaml"

BOT_LOCALPART = "blossom"
CREW_LOCALPART = "blossom-two"  # --crew: the second member of the crew
ORGANISER_LOCALPART = "organiser"

# Two people per city; the first creates and moderates the city room.
PEOPLE: tuple[tuple[str, str], ...] = (
    ("ada", "ben"),
    ("cleo", "dev"),
    ("emil", "frida"),
    ("gen", "hana"),
    ("iara", "joao"),
    ("kioko", "lulu"),
)

# Cities beyond the scenario's own, for `--cities` above what the file has. Their
# places map onto the scenario's place ids in order (demo.yaml: staging, spot).
EXTRA_CITIES: tuple[dict[str, Any], ...] = (
    {
        "id": "tokyo",
        "name": "Tokyo",
        "timezone": "Asia/Tokyo",
        "places": [
            {"name": "Harajuku station, Omotesando exit", "geo": "35.6702,139.7027"},
            {"name": "Yoyogi Park", "geo": "35.6717,139.6949", "note": "the fountain plaza"},
        ],
    },
    {
        "id": "sao-paulo",
        "name": "São Paulo",
        "timezone": "America/Sao_Paulo",
        "places": [
            {"name": "Trianon-Masp station", "geo": "-23.5614,-46.6559"},
            {"name": "Vão livre do MASP", "geo": "-23.5614,-46.6558", "note": "under the museum"},
        ],
    },
    {
        "id": "nairobi",
        "name": "Nairobi",
        "timezone": "Africa/Nairobi",
        "places": [
            {"name": "Kencom bus stop", "geo": "-1.2856,36.8250"},
            {"name": "Jeevanjee Gardens", "geo": "-1.2811,36.8200", "note": "by the statue"},
        ],
    },
)

MAX_CITIES = len(PEOPLE)

# Rate limits the demo lifts for everyone: its nine accounts all log in and join
# from 127.0.0.1, which a real server would see as one very busy address. Message
# sending (rc_message) stays at Synapse's defaults, which would throttle a bot's
# fan-out to a crawl; the bot alone is exempted through the admin API, as an
# operator does in production (docs/operators.md).
_SETUP_LIMITS = (
    "rc_registration",
    "rc_login",
    "rc_joins",
    "rc_joins_per_room",
    "rc_invites",
    "rc_room_creation",
    "rc_presence",
)


class DemoHomeserver(EmbeddedHomeserver):
    """The embedded Synapse with default message limits and relaxed setup limits."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, rate_limits="default")

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        relaxed = rate_limit_config("relaxed")
        for key in _SETUP_LIMITS:
            if key in relaxed:
                config[key] = relaxed[key]
        return config


def load_base(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a scenario mapping")
    return data


def first_offset(scenario: Scenario) -> timedelta:
    """The earliest stage offset from T0 (e.g. -20m). Every ``at`` must be an offset."""
    offsets = []
    for stage in scenario.stages:
        if not isinstance(stage.at, timedelta):
            raise ValueError(f"stage {stage.id}: the demo needs offsets, not instants")
        offsets.append(stage.at)
    return min(offsets)


def demo_scenario(
    base: dict[str, Any],
    *,
    cities: int,
    rooms: dict[str, str],
    start: datetime,
    grace: timedelta | None = None,
) -> dict[str, Any]:
    """The scenario the demo arms: ``base`` with ``cities`` cities, the real room ids
    (city id -> room id) and T0 ``start``. Cities beyond the file's come from
    EXTRA_CITIES, with the place ids of the file's first city."""
    data = copy.deepcopy(base)
    own = list(data.get("cities") or [])
    place_ids = list((own[0].get("places") or {}).keys()) if own else []
    chosen = own[:cities]
    for extra in EXTRA_CITIES[: max(0, cities - len(own))]:
        places = {pid: dict(p) for pid, p in zip(place_ids, extra["places"], strict=False)}
        chosen.append(
            {
                "id": extra["id"],
                "name": extra["name"],
                "timezone": extra["timezone"],
                "rooms": [],
                "places": places,
            }
        )
    for city in chosen:
        city["rooms"] = [rooms[city["id"]]] if city["id"] in rooms else city.get("rooms", [])
        city.pop("start", None)  # one T0 for all: the demo shows the same instant everywhere
    data["cities"] = chosen
    data["start"] = start.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if grace is not None:  # --crew: how long a standby waits (scenario time)
        data["failover"] = {"grace": f"{int(grace.total_seconds())}s"}
    return data


def city_ids(base: dict[str, Any], cities: int) -> list[tuple[str, str]]:
    """(id, name) of the first ``cities`` cities the demo plays."""
    own = [(str(c["id"]), str(c["name"])) for c in base.get("cities") or []]
    extra = [(str(c["id"]), str(c["name"])) for c in EXTRA_CITIES]
    return (own + extra)[:cities]


def write_yaml(path: Path, data: dict[str, Any], *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if private:
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
    path.write_text(text, encoding="utf-8")


def bot_config(
    *,
    homeserver: str,
    user_id: str,
    password: str,
    control_room: str,
    prepare_seconds: float,
    crew: list[str] | None = None,
    heartbeat_seconds: float = 30.0,
) -> dict[str, Any]:
    """The bot's config file, as `blossom run` reads it (paths relative to the file);
    with ``crew``, the crew's members (docs/crew.md), most preferred first."""
    config: dict[str, Any] = {
        "matrix": {
            "homeserver": homeserver,
            "user_id": user_id,
            "password": password,
            "device_id": "BLOSSOMDEMO",
        },
        "storage": {"path": "data"},
        "control": {"rooms": [control_room], "min_power_level": 50},
        "scenarios": {"dir": "scenarios"},
        "dispatch": {"prepare_seconds": prepare_seconds},
    }
    if crew:
        config["crew"] = {"members": crew, "heartbeat_seconds": heartbeat_seconds}
    return config
