"""Who gets what: the pods (lanes) of a city and the role variants of a stage. Pure.

A *lane* is where one set of places applies: a pod, or a whole city without
pods (``None``). An *audience* is a role id, or ``None`` for people and rooms
without a role. A stage limited to roles reaches only those roles; a stage
without ``roles`` reaches everyone. Within one lane, the audiences a stage
reaches are grouped by the text entry they read (:func:`text_key`):
each group is one *role variant*, and the timeline has one dispatch per lane,
stage and variant.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.scenario.model import City, Pod, Scenario, Stage

Audience = str | None
"""A role id, or ``None``: no role."""


@dataclass(frozen=True)
class Variant:
    """One role variant of a stage in one lane."""

    key: str | None
    """The ledger's name for it: ``None`` when everyone the stage reaches in the
    lane reads the same text (always so without roles); otherwise the text entry
    read (``front``, ``hk.front``, ``hk``, ``default``)."""
    audiences: tuple[Audience, ...]
    """Who gets it, in file order (``None`` first: people without a role)."""

    @property
    def role(self) -> Audience:
        """A role to render it with: every audience of the variant reads the same text."""
        return self.audiences[0]


def text_key(stage: Stage, city: City, role: str | None = None) -> str | None:
    """Which entry of ``stage``'s text mapping a person with ``role`` in ``city``
    reads: the most specific of ``city.role``, ``role``, ``city``, ``default``
    (without a role: ``city``, then ``default``). ``None`` for a plain string
    text, or when no entry applies."""
    if isinstance(stage.text, str):
        return None
    keys = [f"{city.id}.{role}", role] if role is not None else []
    for key in (*keys, city.id, "default"):
        if key in stage.text:
            return key
    return None


def lanes(city: City) -> tuple[Pod | None, ...]:
    """The city's pods, or ``(None,)`` for a city without pods."""
    return city.pods or (None,)


def reaches(stage: Stage, role: Audience) -> bool:
    """Whether a person or room with ``role`` gets ``stage`` at all."""
    return stage.roles is None or (role is not None and role in stage.roles)


def lane_rooms(city: City, pod: Pod | None) -> tuple[str, ...]:
    return pod.rooms if pod is not None else city.rooms


def lane_room_roles(city: City, pod: Pod | None) -> dict[str, str]:
    return pod.room_roles if pod is not None else city.room_roles


def audiences(scenario: Scenario, city: City, pod: Pod | None) -> tuple[Audience, ...]:
    """Who can be in this lane: the roles of its rooms (``None`` for a room listed
    without one) and, in a city open to private participants, anyone."""
    if city.direct:
        return (None, *scenario.role_ids)
    roles = lane_room_roles(city, pod)
    present = {roles.get(room) for room in lane_rooms(city, pod)}
    return tuple(a for a in (None, *scenario.role_ids) if a in present)


def role_variants(
    scenario: Scenario, city: City, pod: Pod | None, stage: Stage
) -> tuple[Variant, ...]:
    """The variants of ``stage`` in this lane, in file order; () when it reaches nobody."""
    groups: dict[str | None, list[Audience]] = {}
    for audience in audiences(scenario, city, pod):
        if reaches(stage, audience):
            groups.setdefault(text_key(stage, city, audience), []).append(audience)
    if len(groups) == 1:
        (members,) = groups.values()
        return (Variant(None, tuple(members)),)
    return tuple(Variant(key, tuple(members)) for key, members in groups.items())


def variant_rooms(city: City, pod: Pod | None, variant: Variant) -> tuple[str, ...]:
    """The lane's listed rooms that get ``variant`` (by the role they are listed with)."""
    roles = lane_room_roles(city, pod)
    return tuple(r for r in lane_rooms(city, pod) if roles.get(r) in variant.audiences)


def variant_for(variants: tuple[Variant, ...], role: Audience) -> Variant | None:
    """The variant a person or room with ``role`` gets; None: the stage is not for them."""
    for variant in variants:
        if role in variant.audiences:
            return variant
    return None


def pods_reading(city: City, place_id: str) -> tuple[str, ...]:
    """The pods whose people learn the *city's* place ``place_id`` (they define no
    place of that id themselves): who a city-wide redirect of it reaches. A
    redirect of one pod's place (``hk/mongkok``) reaches that pod only."""
    return tuple(p.id for p in city.all_pods if place_id not in p.places)


def role_matters(scenario: Scenario, stage: Stage) -> bool:
    """Whether what ``stage`` sends depends on a person's role: it is limited to
    roles, or its text has an entry for a role (``front``, ``hk.front``). A
    participant may change role until the first such stage of their city is
    released (docs/participants.md, "Roles and pods")."""
    if stage.roles is not None:
        return True
    if isinstance(stage.text, str):
        return False
    roles = set(scenario.role_ids)
    return any(key.partition(".")[2] in roles or key in roles for key in stage.text)
