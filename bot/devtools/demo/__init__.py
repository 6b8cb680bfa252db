"""`blossom demo`: the whole staged release on a throwaway homeserver, in one command."""

from bot.devtools.demo.run import DemoOptions, run_demo
from bot.devtools.demo.state import DemoState, Summary

__all__ = ["DemoOptions", "DemoState", "Summary", "run_demo"]
