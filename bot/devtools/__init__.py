"""Development tools, not the bot: the embedded homeserver (tests, demo,
benchmarks), the demo, and the reliability-figures generator.

Nothing under ``bot/`` outside this package imports from it at run time
(``blossom demo`` loads it lazily)."""
