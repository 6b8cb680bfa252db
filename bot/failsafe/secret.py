"""The delay id, a secret: current Synapse lets anyone holding it cancel or send a
delayed event without logging in. It travels only inside :class:`DelayId`, whose
``str``, ``repr`` and f-string forms hide it; :meth:`DelayId.reveal` gives it, for
the store and the request path only."""

from __future__ import annotations


class DelayId:
    """A delay id, hidden from ``str``, ``repr`` and f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The id itself: only for the store and the request path."""
        return self._value

    def __repr__(self) -> str:
        return "DelayId(<secret>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DelayId) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
