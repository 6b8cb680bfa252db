"""The typed scenario model (format version 1).

These pydantic models check each value's shape and syntax. Rules that relate
values to each other (unique ids, stage order, places every city defines,
template placeholders, ...) live in :mod:`bot.scenario.semantics`, so that their
errors can point at the exact YAML node; :func:`bot.scenario.load.load_scenario_text`
runs both. A ``Scenario`` built in code is only checked for shape.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from bot.scenario.durations import format_offset
from bot.scenario.fields import (
    At,
    Duration,
    Geo,
    Instant,
    LanguageTag,
    LocalTime,
    NonBlank,
    PlaceId,
    RoomId,
    Slug,
    Text,
    TimeZoneName,
    UserId,
    fail,
)

FORMAT_VERSION = 1


# Every model: unknown keys are errors (a typo must not silently drop a stage's
# gate), and a loaded scenario never changes under the bot's feet.
_CONFIG = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _place_schema(schema: dict[str, Any]) -> None:
    # In the file a place's id is its key under ``places``; the model carries it
    # as a field for convenience, so editors must not ask for it.
    schema.get("properties", {}).pop("id", None)
    required = schema.get("required", [])
    if "id" in required:
        required.remove("id")


class Place(BaseModel):
    """A named place in one city. Its name, geo and note are secret until released."""

    model_config = ConfigDict(**_CONFIG, json_schema_extra=_place_schema)

    id: str
    name: NonBlank
    geo: Geo | None = None
    note: str | None = None

    def geo_uri(self) -> str | None:
        """The place as an RFC 5870 ``geo:lat,lon`` URI, or ``None`` without geo."""
        if self.geo is None:
            return None
        lat, lon = self.geo
        return f"geo:{format_coordinate(lat)},{format_coordinate(lon)}"

    def geo_text(self) -> str | None:
        """The coordinates as ``lat,lon`` text, or ``None`` without geo."""
        if self.geo is None:
            return None
        lat, lon = self.geo
        return f"{format_coordinate(lat)},{format_coordinate(lon)}"


def format_coordinate(value: float) -> str:
    """Plain decimal notation (a geo URI may not use exponents), at most 7 places (~1 cm)."""
    text = f"{value:.7f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _inject_place_ids(value: Any) -> Any:
    # ``places: {square: {name: ...}}``: give each place its key as id. Anything
    # not shaped like that is passed on untouched for pydantic to reject.
    if not isinstance(value, dict):
        return value
    return {
        key: ({"id": key, **place} if isinstance(place, dict) and "id" not in place else place)
        for key, place in value.items()
    }


class RoomEntry(BaseModel):
    """A listed room with a role: ``{room: "!sup:example.org", role: support}``."""

    model_config = _CONFIG

    room: RoomId
    role: Slug


def _room_kind(value: Any) -> str:
    # Anything but a mapping is read as a room id, so that ``rooms: [5]`` still
    # says "expected a string" as it did before rooms could carry a role.
    return "<mapping>" if isinstance(value, dict) else "<string>"


RoomRef = Annotated[
    Annotated[RoomId, Tag("<string>")] | Annotated[RoomEntry, Tag("<mapping>")],
    Discriminator(_room_kind),
]
"""A room id or alias, or a room with a role."""

Places = Annotated[dict[PlaceId, Place], BeforeValidator(_inject_place_ids)]


def _room_ids(entries: tuple[str | RoomEntry, ...]) -> tuple[str, ...]:
    return tuple(e.room if isinstance(e, RoomEntry) else e for e in entries)


def _room_roles(entries: tuple[str | RoomEntry, ...]) -> dict[str, str]:
    return {e.room: e.role for e in entries if isinstance(e, RoomEntry)}


def _check_place_keys(value: dict[str, Place]) -> dict[str, Place]:
    for key, place in value.items():
        if place.id != key:
            raise fail(f"place '{key}' has id '{place.id}'; a place's id is its key")
    return value


class Pod(BaseModel):
    """A small group of a city with places of its own (docs/organisers.md, "Pods").

    Pods share their city's time zone, T0 and stages; a pod's ``places`` override
    the city's places of the same id for that pod only.
    """

    model_config = _CONFIG

    id: Slug
    name: NonBlank | None = None
    # In the file: ``rooms``. ``rooms`` (the property) gives the room ids.
    room_entries: tuple[RoomRef, ...] = Field(default=(), alias="rooms")
    capacity: StrictInt | None = Field(default=None, ge=1)
    """Most private participants the bot assigns to this pod; None: no limit."""
    places: Places = Field(default_factory=dict)

    @property
    def rooms(self) -> tuple[str, ...]:
        return _room_ids(self.room_entries)

    @property
    def room_roles(self) -> dict[str, str]:
        """Room id → role, for the rooms listed with one."""
        return _room_roles(self.room_entries)

    @property
    def label(self) -> str:
        return self.name or self.id

    @field_validator("places")
    @classmethod
    def _ids_match_keys(cls, value: dict[str, Place]) -> dict[str, Place]:
        return _check_place_keys(value)


def _city_schema(schema: dict[str, Any]) -> None:
    # ``rooms`` is optional in the model only so that a city with pods can leave it
    # out; editors should see: a list of rooms, and one of rooms or pods required.
    rooms = schema.get("properties", {}).get("rooms", {})
    for branch in rooms.pop("anyOf", []):
        if branch.get("type") == "array":
            rooms.update(branch)
    rooms.pop("default", None)
    schema["anyOf"] = [{"required": ["rooms"]}, {"required": ["pods"]}]


class City(BaseModel):
    """One city: where its stages go (rooms) and how its clock reads."""

    model_config = ConfigDict(**_CONFIG, json_schema_extra=_city_schema)

    id: Slug
    name: NonBlank
    # Field order matters: ``start`` is checked against an already valid ``timezone``.
    timezone: TimeZoneName
    # Before ``rooms``: whether a city needs rooms of its own depends on it.
    pods: Annotated[tuple[Pod, ...], Field(min_length=1)] | None = None
    # In the file: ``rooms``, at least one unless the city has pods (then every
    # room belongs to a pod; bot.scenario.semantics_pods). ``rooms`` (the
    # property) gives the room ids, as every caller before roles expected.
    room_entries: tuple[RoomRef, ...] | None = Field(
        default=None, alias="rooms", validate_default=True
    )
    start: LocalTime | None = None
    places: Places = Field(default_factory=dict)
    direct: StrictBool = False
    direct_limit: StrictInt | None = Field(default=None, ge=1)
    # Which crew member serves this city's rooms, most preferred first
    # (docs/crew.md); ``None``: the order of the bots' config (crew.members).
    crew: Annotated[tuple[UserId, ...], Field(min_length=1)] | None = None
    # What the bot's own replies to this city's participants are in; None: English.
    language: LanguageTag | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def rooms(self) -> tuple[str, ...]:
        """The city's own rooms (never a pod's: those are ``pod.rooms``)."""
        return _room_ids(self.room_entries or ())

    @property
    def room_roles(self) -> dict[str, str]:
        """Room id → role, for the city's own rooms listed with one."""
        return _room_roles(self.room_entries or ())

    @property
    def all_pods(self) -> tuple[Pod, ...]:
        """The city's pods; () when it has none."""
        return self.pods or ()

    def pod(self, pod_id: str) -> Pod:
        """The pod with this id; ``KeyError`` if there is none."""
        for pod in self.all_pods:
            if pod.id == pod_id:
                return pod
        raise KeyError(pod_id)

    @field_validator("room_entries")
    @classmethod
    def _rooms_without_pods(
        cls, value: tuple[str | RoomEntry, ...] | None, info: ValidationInfo
    ) -> tuple[str | RoomEntry, ...] | None:
        # The messages pydantic gave when ``rooms`` was simply required.
        if "pods" not in info.data or info.data["pods"] is not None:
            return value  # pods given (or invalid, and reported there)
        if value is None:
            raise fail("missing required key 'rooms'")
        if not value:
            raise fail("needs at least 1 item")
        return value

    @field_validator("start")
    @classmethod
    def _start_exists_once(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        zone = info.data.get("timezone")
        if value is None or zone is None:
            return value
        problem = wall_clock_problem(value, ZoneInfo(zone))
        if problem:
            raise fail(problem)
        return value

    @field_validator("places")
    @classmethod
    def _ids_match_keys(cls, value: dict[str, Place]) -> dict[str, Place]:
        return _check_place_keys(value)


def wall_clock_problem(local: datetime, zone: ZoneInfo) -> str | None:
    """Why the naive wall-clock time ``local`` does not name exactly one instant in ``zone``."""
    early = local.replace(tzinfo=zone, fold=0)
    late = local.replace(tzinfo=zone, fold=1)
    if early.utcoffset() == late.utcoffset():
        return None
    # The two readings differ: either the clock skipped this time (a gap; it
    # does not survive a round trip through UTC) or showed it twice (a fold).
    back = early.astimezone(ZoneInfo("UTC")).astimezone(zone).replace(tzinfo=None)
    when = local.isoformat(timespec="minutes")
    if back != local:
        return f"{when} does not exist in {zone.key} (the clocks skip it: daylight saving gap)"
    return f"{when} happens twice in {zone.key} (daylight saving fold); pick another time"


class Gate(BaseModel):
    """A quorum gate: the stage waits for ``checkins`` check-ins, else ``otherwise``."""

    model_config = _CONFIG

    checkins: StrictInt = Field(ge=1)
    otherwise: Literal["hold", "skip", "abort"] = Field(default="hold", alias="else")
    # ``per: pod``: each pod of the city is gated on its own count; None: the city.
    per: Literal["pod"] | None = None
    # Count only the check-ins of people (and rooms) with this role; None: everyone.
    role: Slug | None = None


class LatePolicy(BaseModel):
    """What to do when a stage could not go out on time. ``skip_after=None`` means send anyway."""

    model_config = _CONFIG

    skip_after: Duration | None = None


def _late_shorthand(value: Any) -> Any:
    if value == "send":
        return {"skip_after": None}
    if isinstance(value, str):
        raise fail("expected 'send' or a mapping {skip_after: DURATION}")
    return value


Late = Annotated[
    LatePolicy,
    BeforeValidator(_late_shorthand),
    WithJsonSchema(
        {
            "anyOf": [
                {"const": "send"},
                {
                    "type": "object",
                    "properties": {"skip_after": {"type": "string"}},
                    "required": ["skip_after"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class Stage(BaseModel):
    """One release: a message (and optionally a place) sent to every city at its time."""

    model_config = _CONFIG

    id: Slug
    at: At
    text: Text
    place: Slug | None = None
    require: Gate | None = None
    late: Late = LatePolicy()
    # Only people and rooms with one of these roles get the stage; None: everyone.
    roles: Annotated[tuple[Slug, ...], Field(min_length=1)] | None = None


MIN_GRACE = timedelta(seconds=2)
MAX_GRACE = timedelta(minutes=10)
DEFAULT_GRACE = timedelta(seconds=20)


class Failover(BaseModel):
    """How long each standby crew member waits for the one before it (docs/crew.md)."""

    model_config = _CONFIG

    # The schema shows the default as the file writes it, not as ISO 8601.
    grace: Duration = Field(default=DEFAULT_GRACE, json_schema_extra={"default": "20s"})

    @field_validator("grace")
    @classmethod
    def _grace_in_range(cls, value: timedelta) -> timedelta:
        # Under 2 s a standby would race the member on duty's own send and
        # federation; over 10 min a covered room hears its stage far too late.
        if not MIN_GRACE <= value <= MAX_GRACE:
            given = format_offset(value).removeprefix("+")
            raise fail(f"must be between 2s and 10m (not {given})")
        return value


MIN_FAILSAFE_AFTER = timedelta(seconds=10)
MAX_FAILSAFE_AFTER = timedelta(hours=1)
DEFAULT_FAILSAFE_AFTER = timedelta(minutes=2)


class Failsafe(BaseModel):
    """The dead-man's switch (docs/crew.md, "The switch"): with ``server: true``
    the homeserver itself sends each stage at instant + ``after`` unless a bot
    has sent it. Off by default: the content waits on the homeserver until then."""

    model_config = _CONFIG

    server: StrictBool = False
    after: Duration = Field(default=DEFAULT_FAILSAFE_AFTER, json_schema_extra={"default": "2m"})

    @field_validator("after")
    @classmethod
    def _after_in_range(cls, value: timedelta) -> timedelta:
        # Under 10 s the server races the bot's own send and its cancel; over an
        # hour a stage released by the server is too late to be of use. Whether it
        # outlasts the crew's graces is checked at !arm, where the crew is known.
        if not MIN_FAILSAFE_AFTER <= value <= MAX_FAILSAFE_AFTER:
            given = format_offset(value).removeprefix("+")
            raise fail(f"must be between 10s and 1h (not {given})")
        return value


def _check_version(value: Any) -> int:
    if isinstance(value, bool) or value != FORMAT_VERSION:
        raise fail(f"unsupported version; this Blossom reads version {FORMAT_VERSION}")
    return FORMAT_VERSION


class Role(BaseModel):
    """A way to take part (in the action, nearby support, from home, ...)."""

    model_config = _CONFIG

    id: Slug
    name: NonBlank
    about: NonBlank | None = None
    """What the role involves, in the participant's words (``!role`` lists it)."""


class Scenario(BaseModel):
    """A whole scenario file."""

    model_config = ConfigDict(**_CONFIG, title="Blossom scenario (format version 1)")

    version: Annotated[
        int, PlainValidator(_check_version), WithJsonSchema({"const": FORMAT_VERSION})
    ]
    id: Slug
    title: NonBlank
    start: Instant
    cities: tuple[City, ...] = Field(min_length=1)
    stages: tuple[Stage, ...] = Field(min_length=1)
    abort_text: NonBlank | None = None
    roles: Annotated[tuple[Role, ...], Field(min_length=1)] | None = None
    failover: Failover = Field(
        default_factory=Failover, json_schema_extra={"default": {"grace": "20s"}}
    )
    failsafe: Failsafe = Field(
        default_factory=Failsafe,
        json_schema_extra={"default": {"server": False, "after": "2m"}},
    )

    def city(self, city_id: str) -> City:
        """The city with this id; ``KeyError`` if there is none."""
        for city in self.cities:
            if city.id == city_id:
                return city
        raise KeyError(city_id)

    def stage(self, stage_id: str) -> Stage:
        """The stage with this id; ``KeyError`` if there is none."""
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)

    @property
    def role_ids(self) -> tuple[str, ...]:
        """The declared roles' ids, in file order; () without roles."""
        return tuple(role.id for role in self.roles or ())
