"""`blossom demo`: the whole staged release on a throwaway homeserver, in one command."""

from bot.demo.run import DemoOptions, run_demo
from bot.demo.state import DemoState, Summary

__all__ = ["DemoOptions", "DemoState", "Summary", "run_demo"]
