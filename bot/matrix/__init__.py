"""The Matrix side: session, sync, power rules, sending, room opt-in."""
