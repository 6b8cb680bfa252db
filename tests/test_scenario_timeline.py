"""Time arithmetic: T0 per city, stage instants, DST, midnight and month ends, the date line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.scenario import (
    ScenarioError,
    build_timeline,
    city_t0,
    load_scenario_text,
    render_template,
    stage_instant,
)
from bot.scenario.model import Scenario


def scenario(
    cities: list[tuple[str, str, str | None]],
    stages: list[str],
    start: str = "2026-12-05T17:00:00Z",
) -> Scenario:
    """cities: (id, timezone, local start or None); stages: their `at` values."""
    lines = ["version: 1", "id: t", "title: T", f"start: {start}", "cities:"]
    for city_id, zone, local in cities:
        lines += [f"  - id: {city_id}", f"    name: {city_id.title()}", f"    timezone: {zone}"]
        lines.append(f'    rooms: ["!{city_id}:example.org"]')
        if local:
            lines.append(f"    start: {local}")
    lines.append("stages:")
    for index, at in enumerate(stages):
        lines += [f"  - id: s{index}", f'    at: "{at}"', f"    text: t{index}"]
    return load_scenario_text("\n".join(lines))


def local(instant: datetime, zone: str) -> str:
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %z")


def test_same_instant_everywhere() -> None:
    s = scenario(
        [
            ("washington", "America/New_York", None),
            ("london", "Europe/London", None),
            ("berlin", "Europe/Berlin", None),
        ],
        ["0m"],
    )
    instants = {d.city_id: d.at for d in build_timeline(s)}
    assert set(instants.values()) == {datetime(2026, 12, 5, 17, tzinfo=UTC)}
    assert local(instants["washington"], "America/New_York") == "2026-12-05 12:00 -0500"
    assert local(instants["london"], "Europe/London") == "2026-12-05 17:00 +0000"
    assert local(instants["berlin"], "Europe/Berlin") == "2026-12-05 18:00 +0100"


def test_same_local_time_everywhere() -> None:
    s = scenario(
        [
            ("washington", "America/New_York", "2026-12-05T12:00"),
            ("berlin", "Europe/Berlin", "2026-12-05T12:00"),
        ],
        ["-1h", "0m"],
    )
    timeline = build_timeline(s)
    # Berlin's noon comes six hours before Washington's.
    assert [(d.city_id, d.stage_id) for d in timeline] == [
        ("berlin", "s0"),
        ("berlin", "s1"),
        ("washington", "s0"),
        ("washington", "s1"),
    ]
    assert city_t0(s, s.city("berlin")) == datetime(2026, 12, 5, 11, tzinfo=UTC)
    assert city_t0(s, s.city("washington")) == datetime(2026, 12, 5, 17, tzinfo=UTC)
    for d in timeline:
        zone = s.city(d.city_id).timezone
        assert d.at.tzinfo is UTC
        assert local(d.at, zone)[11:16] == ("11:00" if d.stage_id == "s0" else "12:00")


def test_offsets_are_elapsed_time_across_spring_forward() -> None:
    # US clocks jump from 02:00 to 03:00 on 2026-03-08: a day before noon EDT
    # is 24 hours earlier, which reads 11:00 EST on the wall.
    s = scenario([("nyc", "America/New_York", "2026-03-08T12:00")], ["-1d", "0m", "+1d"])
    at = [d.at for d in build_timeline(s)]
    assert [local(a, "America/New_York") for a in at] == [
        "2026-03-07 11:00 -0500",
        "2026-03-08 12:00 -0400",
        "2026-03-09 12:00 -0400",
    ]
    assert at[1] - at[0] == timedelta(hours=24)


def test_offsets_are_elapsed_time_across_fall_back() -> None:
    s = scenario([("nyc", "America/New_York", "2026-11-01T12:00")], ["-1d", "-12h", "0m"])
    assert [local(d.at, "America/New_York") for d in build_timeline(s)] == [
        "2026-10-31 13:00 -0400",
        "2026-11-01 01:00 -0400",
        "2026-11-01 12:00 -0500",
    ]


def test_offsets_through_the_repeated_hour() -> None:
    # 2026-10-25 in Berlin: 02:00-03:00 happens twice. From 01:30 CEST, +1h and
    # +2h are 02:30 CEST and 02:30 CET: two distinct instants, same wall clock.
    s = scenario([("berlin", "Europe/Berlin", "2026-10-25T01:30")], ["0m", "+1h", "+2h"])
    instants = [d.at for d in build_timeline(s)]
    assert [local(a, "Europe/Berlin") for a in instants] == [
        "2026-10-25 01:30 +0200",
        "2026-10-25 02:30 +0200",
        "2026-10-25 02:30 +0100",
    ]
    assert instants[2] - instants[1] == timedelta(hours=1)


@pytest.mark.parametrize(
    ("zone", "wall", "kind"),
    [
        ("America/New_York", "2026-03-08T02:30", "does not exist"),
        ("America/New_York", "2026-11-01T01:30", "happens twice"),
        ("Europe/Berlin", "2026-03-29T02:15", "does not exist"),
        ("Europe/Berlin", "2026-10-25T02:15", "happens twice"),
        # Southern hemisphere: the clocks go forward in spring (September/October).
        ("Australia/Sydney", "2026-10-04T02:30", "does not exist"),
        ("Australia/Sydney", "2026-04-05T02:30", "happens twice"),
        # Samoa skipped a whole day when it moved across the date line.
        ("Pacific/Apia", "2011-12-30T12:00", "does not exist"),
    ],
)
def test_city_start_must_name_one_instant(zone: str, wall: str, kind: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        scenario([("c", zone, wall)], ["0m"])
    (diagnostic,) = caught.value.diagnostics
    assert f"cities[0].start: {wall} {kind} in {zone}" in diagnostic.message


@pytest.mark.parametrize(
    ("zone", "wall"),
    [
        ("America/New_York", "2026-03-08T01:59"),
        ("America/New_York", "2026-03-08T03:00"),
        ("America/New_York", "2026-11-01T00:59"),
        ("America/New_York", "2026-11-01T02:00"),
    ],
)
def test_city_start_next_to_a_transition_is_fine(zone: str, wall: str) -> None:
    s = scenario([("c", zone, wall)], ["0m"])
    t0 = city_t0(s, s.cities[0])
    assert t0.astimezone(ZoneInfo(zone)).replace(tzinfo=None) == datetime.fromisoformat(wall)


def test_offsets_across_midnight() -> None:
    s = scenario([("berlin", "Europe/Berlin", "2026-12-31T23:30")], ["-45m", "0m", "+45m"])
    city = s.cities[0]
    assert [local(d.at, "Europe/Berlin") for d in build_timeline(s)] == [
        "2026-12-31 22:45 +0100",
        "2026-12-31 23:30 +0100",
        "2027-01-01 00:15 +0100",
    ]
    assert render_template("{time:+45m} {time:-45m} {time:+30m}", s, city) == "00:15 22:45 00:00"


@pytest.mark.parametrize(
    ("start", "at", "expected"),
    [
        ("2026-01-31T23:00:00Z", "+2h", datetime(2026, 2, 1, 1, tzinfo=UTC)),
        ("2026-03-01T00:30:00Z", "-1h", datetime(2026, 2, 28, 23, 30, tzinfo=UTC)),
        ("2028-02-28T12:00:00Z", "+1d", datetime(2028, 2, 29, 12, tzinfo=UTC)),  # leap year
        ("2027-02-28T12:00:00Z", "+1d", datetime(2027, 3, 1, 12, tzinfo=UTC)),
        ("2026-12-31T23:59:30Z", "+90s", datetime(2027, 1, 1, 0, 1, tzinfo=UTC)),
        ("2026-04-30T22:00:00-04:00", "+1h30m", datetime(2026, 5, 1, 3, 30, tzinfo=UTC)),
    ],
)
def test_offsets_across_month_and_year_ends(start: str, at: str, expected: datetime) -> None:
    s = scenario([("utc", "UTC", None)], [at], start=start)
    assert stage_instant(s, s.cities[0], s.stages[0]) == expected


def test_cities_on_both_sides_of_the_date_line() -> None:
    # Kiritimati is UTC+14, Pago Pago UTC-11: the same instant is two calendar
    # days apart, and "noon local" happens 25 hours apart.
    same = scenario(
        [("kiritimati", "Pacific/Kiritimati", None), ("pago", "Pacific/Pago_Pago", None)],
        ["0m"],
        start="2026-12-05T10:30:00Z",
    )
    at = {d.city_id: d.at for d in build_timeline(same)}
    assert local(at["kiritimati"], "Pacific/Kiritimati") == "2026-12-06 00:30 +1400"
    assert local(at["pago"], "Pacific/Pago_Pago") == "2026-12-04 23:30 -1100"

    noon = scenario(
        [
            ("pago", "Pacific/Pago_Pago", "2026-12-05T12:00"),
            ("kiritimati", "Pacific/Kiritimati", "2026-12-05T12:00"),
        ],
        ["0m"],
    )
    timeline = build_timeline(noon)
    assert [d.city_id for d in timeline] == ["kiritimati", "pago"]
    assert timeline[1].at - timeline[0].at == timedelta(hours=25)
    assert render_template("{time:0m}", noon, noon.city("pago")) == "12:00"


def test_absolute_stage_is_the_same_instant_in_every_city() -> None:
    s = scenario(
        [("a", "Asia/Tokyo", "2026-12-05T12:00"), ("b", "America/Los_Angeles", None)],
        ["-3d", "2026-12-04T00:00:00Z"],
    )
    assert {d.at for d in build_timeline(s) if d.stage_id == "s1"} == {
        datetime(2026, 12, 4, tzinfo=UTC)
    }


def test_timeline_order_and_ties() -> None:
    s = scenario([("x", "UTC", None), ("y", "UTC", None)], ["0m", "0m", "+1m"])
    assert [(d.stage_id, d.city_id, d.stage_index) for d in build_timeline(s)] == [
        ("s0", "x", 0),
        ("s0", "y", 0),
        ("s1", "x", 1),
        ("s1", "y", 1),
        ("s2", "x", 2),
        ("s2", "y", 2),
    ]
    d = build_timeline(s)[0]
    assert (d.scenario_id, d.rooms) == ("t", ("!x:example.org",))


def test_delays_shift_one_city() -> None:
    s = scenario([("x", "UTC", None), ("y", "UTC", None)], ["0m", "+10m"])
    timeline = build_timeline(s, delays={"x": timedelta(minutes=15)})
    assert [(d.city_id, d.stage_id, d.at.strftime("%H:%M")) for d in timeline] == [
        ("y", "s0", "17:00"),
        ("y", "s1", "17:10"),
        ("x", "s0", "17:15"),
        ("x", "s1", "17:25"),
    ]
    assert build_timeline(s, delays={}) == build_timeline(s)
    with pytest.raises(ValueError, match="unknown cities: z"):
        build_timeline(s, delays={"z": timedelta(minutes=1)})


def test_city_t0_is_utc() -> None:
    s = scenario([("x", "Asia/Kolkata", None)], ["0m"], start="2026-12-05T12:00:00+05:30")
    t0 = city_t0(s, s.cities[0])
    assert t0 == datetime(2026, 12, 5, 6, 30, tzinfo=UTC) and t0.tzinfo is UTC
