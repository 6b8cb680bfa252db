"""Blossom: decentralised flash-mob dispatch over Matrix."""

__version__ = "0.1.0"

DISPATCH_KEY = "org.blossom.dispatch"
"""Content key that every event Blossom sends for a stage carries (scenario, city, stage, part)."""
