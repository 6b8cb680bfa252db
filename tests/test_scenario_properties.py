"""Property tests of the time arithmetic: for any valid scenario, plan instants are
in order and every local time converts back to the same instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.scenario import build_timeline, city_t0, load_scenario_text, stage_instant
from bot.scenario.durations import MAX_OFFSET, format_offset, parse_offset
from bot.scenario.model import wall_clock_problem
from bot.scenario.plan import build_plan, plan_json

# Zones with DST in either hemisphere, odd offsets, and both sides of the date line.
ZONES = [
    "UTC",
    "America/New_York",
    "America/St_Johns",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Pacific/Apia",
    "America/Santiago",
]

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(UTC)
)
local_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 12, 31)).map(
    lambda d: d.replace(second=0, microsecond=0)
)
offsets = st.integers(-366 * 86400, 366 * 86400).map(lambda s: timedelta(seconds=s))


@st.composite
def scenarios(draw: st.DrawFn) -> str:
    cities = []
    for index in range(draw(st.integers(1, 4))):
        zone = draw(st.sampled_from(ZONES))
        city: dict[str, object] = {
            "id": f"c{index}",
            "name": f"City {index}",
            "timezone": zone,
            "rooms": [f"!room{index}:example.org"],
        }
        if draw(st.booleans()):
            local = draw(local_times)
            assume(wall_clock_problem(local, ZoneInfo(zone)) is None)
            city["start"] = local.isoformat(timespec="minutes")
        cities.append(city)
    stage_offsets = sorted(draw(st.lists(offsets, min_size=1, max_size=6)))
    stages = [
        {
            "id": f"s{i}",
            "at": format_offset(at),
            "text": f"{{city}} at {{time:{format_offset(at)}}}",
        }
        for i, at in enumerate(stage_offsets)
    ]
    start = draw(instants).isoformat().replace("+00:00", "Z")
    document = {"version": 1, "id": "p", "title": "P", "start": start}
    return yaml.safe_dump({**document, "cities": cities, "stages": stages}, sort_keys=False)


@settings(max_examples=200, deadline=None)
@given(scenarios(), instants)
def test_plan_is_ordered_and_local_times_round_trip(text: str, now: datetime) -> None:
    s = load_scenario_text(text)
    timeline = build_timeline(s)
    assert len(timeline) == len(s.cities) * len(s.stages)
    keys = [(d.at, d.stage_index, [c.id for c in s.cities].index(d.city_id)) for d in timeline]
    assert keys == sorted(keys)

    rows = build_plan(s, now)
    items = plan_json(rows)
    assert [r.at_utc for r in rows] == sorted(r.at_utc for r in rows)
    for row, item in zip(rows, items, strict=True):
        zone = ZoneInfo(row.timezone)
        assert row.at_utc.tzinfo is UTC
        # The local reading is the same instant...
        assert row.at_local.astimezone(UTC) == row.at_utc
        assert datetime.fromisoformat(item["at_local"]) == row.at_utc
        assert datetime.fromisoformat(item["at_utc"]) == row.at_utc
        # ...and its wall clock, with its fold, leads back to it.
        wall = row.at_local.replace(tzinfo=None)
        back = wall.replace(tzinfo=zone, fold=row.at_local.fold).astimezone(UTC)
        assert back == row.at_utc
        assert row.until == row.at_utc - now


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_each_city_is_in_file_order_from_its_t0(text: str) -> None:
    s = load_scenario_text(text)
    for city in s.cities:
        t0 = city_t0(s, city)
        if city.start is not None:
            assert t0.astimezone(city.tz).replace(tzinfo=None) == city.start
        else:
            assert t0 == s.start
        at = [stage_instant(s, city, stage) for stage in s.stages]
        assert at == sorted(at)
        assert all(a - t0 == stage.at for a, stage in zip(at, s.stages, strict=True))


@given(offsets)
def test_offsets_round_trip(delta: timedelta) -> None:
    assert parse_offset(format_offset(delta)) == delta
    assert abs(delta) <= MAX_OFFSET
