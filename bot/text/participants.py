"""What participants read from the bot (direct chats; city rooms get reactions only)."""

from __future__ import annotations

# Reaction keys. ✅: this check-in counts for the next gate (or there is no gate
# ahead, and it counts in the head count). ⏳: noted, but the next gate counts only
# check-ins after a later stage; check in again when that stage comes.
COUNTED = "✅"
TOO_EARLY = "⏳"

HELP_HEADING = (
    "Blossom: you get each stage of the action here when it is released. "
    "To check in you can also react to the latest stage message."
)

JOIN_IN_DIRECT_CHAT = "Send !join in a direct chat with the bot."
NOT_SIGNED_UP = "You are not signed up in this chat."
STOPPED = "Stopped. You will get nothing more from Blossom here."


def no_direct_city(scenario_id: str, city_id: str | None) -> str:
    named = f" {city_id}" if city_id else " by that name"
    return f"There is no city{named} open for private joining in {scenario_id}."


def city_full(city_name: str) -> str:
    return f"{city_name} is full for private participants."


def joined(city_name: str, underway: bool) -> str:
    text = (
        f"You're in for {city_name}. Each stage will come to this chat when it is "
        "released. Say !here to check in, !stop to leave at once."
    )
    if underway:
        # Late joiners get the stages from the next one on (docs/participants.md).
        text += (
            " The action has already begun: stages released before you joined are not "
            "sent again here; ask your city's organisers or room where things stand."
        )
    return text


def checked_in(counted: bool) -> str:
    """The reply in a direct chat to a check-in by reaction (a reaction cannot be
    answered with a reaction that clients show). No stage is named: a stage id is
    the organisers' word and may say more than its released text."""
    if counted:
        return f"Checked in {COUNTED} — you are counted."
    return (
        f"Checked in {TOO_EARLY} — noted, but the next check counts only check-ins after "
        "a later message from the bot: check in again when it comes."
    )
