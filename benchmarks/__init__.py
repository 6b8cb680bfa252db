"""Benchmarks of Blossom's fan-out against the homeserver's own limit.

Run ``python -m benchmarks.fanout`` (or ``make bench``); see docs/performance.md.
"""
