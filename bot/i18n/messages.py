"""Every sentence the bot itself says to participants, as gettext messages.

One function per reply; each takes the participant's :class:`Translator` and
typed values, and returns a :class:`Reply`. The English msgids are exactly what
the bot said before it spoke other languages, so a city without ``language``
reads as before. Stage texts are the organisers' own and are not here.

For translators: ``%(here)s``, ``%(join)s``, ``%(stop)s``, ``%(help)s`` and
``%(role)s`` are the commands ``!here`` etc. They are placeholders so that a
command stays the same word in every language (a poster or a guide works
everywhere); keep each placeholder exactly as written. ``make catalogs``
extracts this file into ``bot/i18n/locale/blossom.pot``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from bot.i18n.translator import HELP, HERE, JOIN, ROLE, STOP, Line, Reply, Translator, Value


def _machine_note(t: Translator) -> list[Line]:
    if not t.machine_made:
        return []
    # TRANSLATORS: added under !help while this catalog is marked machine-made.
    note = t.gettext(
        "This text was translated by a machine and has not yet been checked by a speaker."
    )
    return [t.line(note)]


# --- direct chat: !help, !join, !stop -------------------------------------------------


def help_text(t: Translator, *, roles: bool = False) -> Reply:
    """The answer to ``!help`` in a direct chat. ``roles``: the scenario offers roles."""
    intro = t.gettext("Blossom: you get each stage of the action here when it is released.")
    # TRANSLATORS: %(join)s is the command !join; <scenario> and <city> are what the
    # organisers tell people to type after it (translate the words, keep the brackets).
    join = t.gettext("%(join)s <scenario> <city> — get a city's stages privately in this chat")
    # TRANSLATORS: %(here)s is the command !here.
    here = t.gettext("%(here)s — check in (or react to the latest stage message)")
    # TRANSLATORS: %(stop)s is the command !stop.
    stop = t.gettext("%(stop)s — stop at once; the bot forgets you")
    lines = [t.line(intro), t.line(join, join=JOIN), t.line(here, here=HERE)]
    lines.append(t.line(stop, stop=STOP))
    if roles:
        # TRANSLATORS: %(role)s is the command !role; <role> is a role's id.
        role = t.gettext("%(role)s <role> — choose your role; %(role)s alone lists the roles")
        lines.append(t.line(role, role=ROLE))
    return t.reply(*lines, *_machine_note(t))


def join_in_direct_chat(t: Translator) -> Reply:
    """``!join`` said in a room that is not a direct chat with the bot."""
    # TRANSLATORS: %(join)s is the command !join.
    template = t.gettext("Send %(join)s in a direct chat with the bot.")
    return t.reply(t.line(template, join=JOIN))


def no_such_city(t: Translator, *, scenario_id: str, city_id: str) -> Reply:
    """``!join`` named a scenario or city that is not open for private joining."""
    # TRANSLATORS: %(city)s and %(scenario)s are ids exactly as the person typed them.
    template = t.gettext("There is no city %(city)s open for private joining in %(scenario)s.")
    return t.reply(t.line(template, city=city_id, scenario=scenario_id))


def city_full(t: Translator, *, city_name: str) -> Reply:
    """``!join`` when the city (or every pod of it) has no room for one more person."""
    # TRANSLATORS: %(city)s is the city's name.
    template = t.gettext("%(city)s is full for private participants.")
    return t.reply(t.line(template, city=city_name))


def joined(t: Translator, *, city_name: str) -> Reply:
    """``!join`` accepted."""
    # TRANSLATORS: %(city)s is the city's name; %(here)s and %(stop)s are the
    # commands !here and !stop.
    template = t.gettext(
        "You're in for %(city)s. Each stage will come to this chat when it is released. "
        "Say %(here)s to check in, %(stop)s to leave at once."
    )
    return t.reply(t.line(template, city=city_name, here=HERE, stop=STOP))


def joined_late(t: Translator, *, released: int, latest_at: datetime, zone: tzinfo) -> Reply:
    """Said before the latest released stage is sent again to someone who joined late.

    ``released`` stages had gone out; the latest at ``latest_at`` (shown in the
    city's time ``zone`` and clock conventions).
    """
    # TRANSLATORS: %(count)d is how many stages were released; %(time)s is a clock time.
    template = t.ngettext(
        "%(count)d stage went out before you joined. Here is the latest, sent at %(time)s:",
        "%(count)d stages went out before you joined. Here is the latest, sent at %(time)s:",
        released,
    )
    return t.reply(t.line(template, count=released, time=t.format_time(latest_at, zone)))


def not_signed_up(t: Translator) -> Reply:
    """``!stop`` in a direct chat where nobody is signed up."""
    return t.reply(t.line(t.gettext("You are not signed up in this chat.")))


def stopped(t: Translator) -> Reply:
    """``!stop`` done: the participant is forgotten."""
    return t.reply(t.line(t.gettext("Stopped. You will get nothing more from Blossom here.")))


# --- the stop message -------------------------------------------------------------------


def abort_text(t: Translator, *, city_name: str) -> Reply:
    """What every room of a city gets on ``!abort`` when the scenario has no ``abort_text``."""
    # TRANSLATORS: the stop message sent to everyone of a city; %(city)s is its name.
    # Keep it short and unmistakable: people may read it running.
    template = t.gettext(
        "STOP. The action in %(city)s is called off. Do not go on. Leave calmly, "
        "in small groups, and go home."
    )
    return t.reply(t.line(template, city=city_name))


# --- commands a participant mistyped (direct chat only) --------------------------------


def unknown_command(t: Translator, *, typed: str | None = None) -> Reply:
    """Not a participant command. ``typed``: the word after ``!`` when it is plain ASCII."""
    if typed is None:
        # TRANSLATORS: %(help)s is the command !help.
        template = t.gettext("unknown command; %(help)s lists them")
        return t.reply(t.line(template, help=HELP))
    # TRANSLATORS: %(command)s is what the person typed, e.g. !jion; %(help)s is !help.
    template = t.gettext("unknown command %(command)s; %(help)s lists them")
    return t.reply(t.line(template, command=f"!{typed}", help=HELP))


def invisible_characters(t: Translator) -> Reply:
    """A command with zero-width or direction characters in it (refused, never guessed)."""
    return t.reply(t.line(t.gettext("the command contains invisible formatting characters")))


def join_usage(t: Translator, *, problem: str, argument: str = "city") -> Reply:
    """``!join`` with a word missing, too many, or one that is not an id.

    ``problem`` is ``missing``, ``extra`` or ``invalid``; ``argument`` (``scenario``
    or ``city``) is the word that is missing or invalid.
    """
    # TRANSLATORS: the first of !join's two words, as in "<scenario> <city>" of !help.
    scenario = t.pgettext("join command", "scenario")
    # TRANSLATORS: the second of !join's two words, as in "<scenario> <city>" of !help.
    city = t.pgettext("join command", "city")
    word = {"scenario": scenario, "city": city}.get(argument, argument)
    if problem == "missing":
        # TRANSLATORS: %(argument)s is "scenario" or "city" (translated on their own);
        # %(join)s is the command !join.
        template = t.gettext("missing %(argument)s. Usage: %(join)s <scenario> <city>")
    elif problem == "extra":
        # TRANSLATORS: %(join)s is the command !join.
        template = t.gettext("too many arguments. Usage: %(join)s <scenario> <city>")
    else:
        # TRANSLATORS: ids are short lowercase names such as demo or london;
        # %(join)s is the command !join.
        template = t.gettext(
            "%(argument)s is not an id (lowercase letters, digits, hyphens). "
            "Usage: %(join)s <scenario> <city>"
        )
    values: dict[str, Value] = {"join": JOIN}
    if problem != "extra":
        values["argument"] = word
    return t.reply(t.line(template, **values))


# --- roles (issue 14) -------------------------------------------------------------------


@dataclass(frozen=True)
class RoleLine:
    """One role as the organisers wrote it (their words, not translated)."""

    id: str
    name: str
    about: str | None = None


def role_list(t: Translator, *, roles: Sequence[RoleLine]) -> Reply:
    """``!role`` alone: the roles on offer, then how to change one's mind."""
    # TRANSLATORS: %(count)d roles follow, one per line; %(role)s is the command !role.
    header = t.ngettext(
        "There is %(count)d role. Say %(role)s and its id to take it:",
        "There are %(count)d roles. Say %(role)s and its id to choose one:",
        len(roles),
    )
    lines = [t.line(header, count=len(roles), role=ROLE)]
    for role in roles:
        if role.about:
            entry = "%(id)s — %(name)s: %(about)s"
            lines.append(t.line(entry, id=role.id, name=role.name, about=role.about))
        else:
            lines.append(t.line("%(id)s — %(name)s", id=role.id, name=role.name))
    # TRANSLATORS: %(stop)s is the command !stop.
    footer = t.gettext(
        "You can change your mind until the stage that needs it; %(stop)s always works."
    )
    lines.append(t.line(footer, stop=STOP))
    return t.reply(*lines)


def role_chosen(t: Translator, *, role_name: str) -> Reply:
    """``!role <id>`` accepted."""
    template = t.gettext("Your role is now %(name)s.")
    return t.reply(t.line(template, name=role_name))


def role_unknown(t: Translator, *, role_id: str) -> Reply:
    """``!role <id>`` with an id the scenario does not offer."""
    # TRANSLATORS: %(id)s is what the person typed; %(role)s is the command !role.
    template = t.gettext("There is no role %(id)s. Say %(role)s to list them.")
    return t.reply(t.line(template, id=role_id, role=ROLE))


def role_locked(t: Translator) -> Reply:
    """``!role <id>`` after the stage that needs the role has gone out."""
    return t.reply(
        t.line(t.gettext("Your role can no longer change: the stage that needs it has gone out."))
    )


def no_roles(t: Translator) -> Reply:
    """``!role`` in a scenario without roles."""
    return t.reply(t.line(t.gettext("This action has no roles to choose from.")))


def role_needs_join(t: Translator) -> Reply:
    """``!role`` before ``!join``."""
    # TRANSLATORS: %(join)s is the command !join.
    template = t.gettext("Join a city first with %(join)s, then choose a role.")
    return t.reply(t.line(template, join=JOIN))
