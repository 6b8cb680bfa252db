"""Every sentence the bot itself says to participants, as gettext messages.

One function per reply; each takes the participant's :class:`Translator` and
typed values, and returns a :class:`Reply`. The English msgids are exactly what
the bot said before it spoke other languages, so a city without ``language``
reads as before. Stage texts are the organisers' own and are not here.

For translators: ``%(here)s``, ``%(join)s``, ``%(stop)s``, ``%(help)s`` and
``%(role)s`` are the commands ``!here`` etc. They are placeholders so that a
command stays the same word in every language (a poster or a guide works
everywhere); keep each placeholder exactly as written. ``%(usage)s`` is a
command with its arguments' names (``!join <scenario> <city>``), shown as one
left-to-right command line. ``make catalogs`` extracts this file into
``bot/i18n/locale/blossom.pot``.

The participant ``!help`` is generated from the command registry
(bot/control/participants.py): each command's summary is declared here with
:func:`N_` and translated where it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from bot.i18n.translator import (
    HELP,
    HERE,
    JOIN,
    ROLE,
    ROLE_NONE,
    STOP,
    Command,
    Line,
    Reply,
    Translator,
    Value,
)


def _machine_note(t: Translator) -> list[Line]:
    if not t.machine_made:
        return []
    # TRANSLATORS: added under !help while this catalog is marked machine-made.
    note = t.gettext(
        "This text was translated by a machine and has not yet been checked by a speaker."
    )
    return [t.line(note)]


# --- what the commands are for (their !help lines) ----------------------------------


def N_(message: str) -> str:
    """Mark ``message`` for extraction; it is translated where it is shown."""
    return message


# The participant commands' summaries, as their declarations in
# bot/control/participants.py take them (declared once, translated in !help).
# TRANSLATORS: what !here does, after the command in !help's list.
HERE_SUMMARY = N_("Check in for your city's current stage.")
# TRANSLATORS: what !help does, after the command in !help's list.
HELP_SUMMARY = N_("What you can say to the bot.")
# TRANSLATORS: what !join does, after the command in !help's list.
JOIN_SUMMARY = N_("Get a city's stages privately in this direct chat.")
# TRANSLATORS: what !stop does, after the command in !help's list.
STOP_SUMMARY = N_("Stop getting stages here; the bot forgets you.")
# TRANSLATORS: what !role does, after the command in !help's list (shown where
# the action offers roles).
ROLE_SUMMARY = N_("List the roles on offer, or choose yours.")


@dataclass(frozen=True)
class Usage:
    """A command as ``!help`` and usage errors show it: its word and its arguments."""

    word: str
    """``!join``: never translated."""
    args: tuple[tuple[str, bool], ...] = ()
    """(name, optional) of each argument, as the registry declares them."""


@dataclass(frozen=True)
class CommandHelp:
    """One line of ``!help``: a participant command as the registry declares it."""

    usage: Usage
    summary: str
    """The English summary, one of the ``*_SUMMARY`` messages above."""


def argument_name(t: Translator, name: str) -> str:
    """An argument's name, as usage lines show it inside ``<…>`` or ``[…]``."""
    names = {
        # TRANSLATORS: the first word after !join: the action's id, as organisers tell it.
        "scenario": t.pgettext("command argument", "scenario"),
        # TRANSLATORS: the second word after !join: the city's id.
        "city": t.pgettext("command argument", "city"),
        # TRANSLATORS: what may follow !here ("!here with 3 friends"); not kept.
        "words": t.pgettext("command argument", "words"),
        # TRANSLATORS: what may follow !role: a role's id, or none.
        "role": t.pgettext("command argument", "role"),
    }
    return names.get(name, name)


def usage_of(t: Translator, usage: Usage) -> Command:
    """The command line to show: the word as is, the arguments' names translated."""
    labels = []
    for name, optional in usage.args:
        shown = argument_name(t, name)
        labels.append(f"[{shown}]" if optional else f"<{shown}>")
    return Command(usage.word, tuple(labels))


# --- direct chat: !help, !join, !stop -------------------------------------------------


def help_text(t: Translator, commands: Sequence[CommandHelp]) -> Reply:
    """The answer to ``!help`` in a direct chat: one line per participant command,
    in the registry's order (``commands``), each summary translated."""
    # TRANSLATORS: the first line of !help in a direct chat.
    intro = t.gettext(
        "Blossom: you get each stage of the action here when it is released. "
        "To check in you can also react to the latest stage message."
    )
    lines = [t.line(intro)]
    for entry in commands:
        # The separator is layout, not language: "<command line> — <what it does>".
        lines.append(
            t.line(
                "%(usage)s — %(summary)s",
                usage=usage_of(t, entry.usage),
                summary=t.gettext(entry.summary),
            )
        )
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


def joined(t: Translator, *, city_name: str, underway: bool = False, pod: bool = False) -> Reply:
    """``!join`` accepted. ``underway``: a stage of the city has been released already
    (late joiners get the stages from the next one on: docs/participants.md).
    ``pod``: the city has pods and the bot has put the person in one (which one is
    not said: the stages tell them where it meets, when they are released)."""
    # TRANSLATORS: %(city)s is the city's name; %(here)s and %(stop)s are the
    # commands !here and !stop.
    template = t.gettext(
        "You're in for %(city)s. Each stage will come to this chat when it is released. "
        "Say %(here)s to check in, %(stop)s to leave at once."
    )
    line = t.line(template, city=city_name, here=HERE, stop=STOP)
    if underway:
        # TRANSLATORS: follows "You're in for …" when the action has begun.
        late = t.line(
            t.gettext(
                "The action has already begun: stages released before you joined are not "
                "sent again here; ask your city's organisers or room where things stand."
            )
        )
        # One paragraph, as the English always was; CJK sentences follow without a space.
        sep = "" if line.plain.endswith(("。", "！", "？")) else " "
        line = Line(plain=f"{line.plain}{sep}{late.plain}", html=f"{line.html}{sep}{late.html}")
    if not pod:
        return t.reply(line)
    # TRANSLATORS: follows "You're in for …" in a city split into small groups
    # (pods); the bot chose the group, not the person.
    grouped = t.gettext(
        "The bot has put you in one of the city's small groups, so that no spot is "
        "crowded; the stages will tell you where yours meets."
    )
    return t.reply(line, t.line(grouped))


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


# Reaction keys. ✅: this check-in counts for the next gate (or there is no gate
# ahead). ⏳: noted, but the next gate counts only check-ins after a later stage.
COUNTED = "✅"
TOO_EARLY = "⏳"


def checked_in(t: Translator, *, counted: bool) -> Reply:
    """The reply in a direct chat to a check-in by reaction (a reaction cannot be
    answered with a reaction that clients show). No stage is named: a stage id is
    the organisers' word and may say more than its released text."""
    if counted:
        # TRANSLATORS: a check-in by reaction was counted; %(mark)s is the ✅ sign.
        template = t.gettext("Checked in %(mark)s — you are counted.")
        return t.reply(t.line(template, mark=COUNTED))
    # TRANSLATORS: a check-in by reaction was noted but the next check will not count
    # it; %(mark)s is the ⏳ sign.
    template = t.gettext(
        "Checked in %(mark)s — noted, but the next check counts only check-ins after "
        "a later message from the bot: check in again when it comes."
    )
    return t.reply(t.line(template, mark=TOO_EARLY))


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


def command_too_long(t: Translator, *, limit: int) -> Reply:
    """A command longer than the parser reads."""
    # TRANSLATORS: %(limit)d is a number of characters.
    template = t.ngettext(
        "command too long (over %(limit)d character)",
        "command too long (over %(limit)d characters)",
        limit,
    )
    return t.reply(t.line(template, limit=limit))


def usage_error(
    t: Translator,
    *,
    problem: str,
    usage: Usage,
    argument: str | None = None,
    kind: str | None = None,
) -> Reply:
    """A command with a word missing, too many, or one that does not fit.

    ``problem`` is ``missing``, ``extra`` or ``invalid`` (the parser's); ``argument``
    is the name of the word missing or invalid, ``kind`` its type (``slug``,
    ``city``) when invalid; ``usage`` is the command as declared.
    """
    values: dict[str, Value] = {"usage": usage_of(t, usage)}
    if problem == "extra":
        # TRANSLATORS: %(usage)s is the command with its words, e.g. !stop.
        template = t.gettext("too many arguments. Usage: %(usage)s")
        return t.reply(t.line(template, **values))
    values["argument"] = argument_name(t, argument or "")
    if problem == "missing":
        # TRANSLATORS: %(argument)s is a word's name such as "city" (translated on
        # its own); %(usage)s is the command with its words, e.g. !join <scenario> <city>.
        template = t.gettext("missing %(argument)s. Usage: %(usage)s")
    elif kind == "slug":
        # TRANSLATORS: ids are short lowercase names such as demo or london;
        # %(usage)s is the command with its words.
        template = t.gettext(
            "%(argument)s must be an id (lowercase letters, digits and inner hyphens). "
            "Usage: %(usage)s"
        )
    elif kind == "city":
        # TRANSLATORS: %(usage)s is the command with its words.
        template = t.gettext("%(argument)s must be a city id. Usage: %(usage)s")
    else:
        # TRANSLATORS: a word that does not fit; %(usage)s is the command with its words.
        template = t.gettext("%(argument)s is not valid here. Usage: %(usage)s")
    return t.reply(t.line(template, **values))


# --- roles (issue 14) -------------------------------------------------------------------


@dataclass(frozen=True)
class RoleLine:
    """One role as the organisers wrote it (their words, not translated)."""

    id: str
    name: str
    about: str | None = None


def role_list(
    t: Translator,
    *,
    roles: Sequence[RoleLine],
    current: str | None = None,
    locked: bool = False,
) -> Reply:
    """``!role`` alone: the roles on offer, then how to change one's mind.
    ``current``: the name of the role the person has now; ``locked``: the stage
    that needs it has gone out (the last lines say so instead)."""
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
    if current is not None:
        # TRANSLATORS: %(name)s is the name of the role the person has chosen.
        lines.append(t.line(t.gettext("Your role now: %(name)s."), name=current))
    if locked:
        return t.reply(*lines, *_locked_lines(t))
    if current is not None:
        # TRANSLATORS: %(role)s is the command !role followed by the word none
        # (kept as is in every language): it clears the person's role.
        template = t.gettext("Say %(role)s to have no role.")
        lines.append(t.line(template, role=ROLE_NONE))
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


def role_cleared(t: Translator) -> Reply:
    """``!role none`` accepted: the person has no role now."""
    return t.reply(
        t.line(t.gettext("You have no role now: you get the stages meant for everyone."))
    )


def role_unknown(t: Translator, *, role_id: str, ids: Sequence[str] = ()) -> Reply:
    """``!role <id>`` with an id the scenario does not offer; ``ids``: those it does."""
    if not ids:
        # TRANSLATORS: %(id)s is what the person typed; %(role)s is the command !role.
        template = t.gettext("There is no role %(id)s. Say %(role)s to list them.")
        return t.reply(t.line(template, id=role_id, role=ROLE))
    # TRANSLATORS: %(id)s is what the person typed; %(ids)s the role ids on offer
    # (kept as the organisers wrote them), separated by commas; %(role)s is the
    # command !role.
    template = t.gettext(
        "There is no role %(id)s. The roles are: %(ids)s. Say %(role)s to see what each "
        "involves."
    )
    return t.reply(t.line(template, id=role_id, ids=", ".join(ids), role=ROLE))


def _locked_lines(t: Translator) -> list[Line]:
    locked = t.gettext("Your role can no longer change: the stage that needs it has gone out.")
    # TRANSLATORS: follows "Your role can no longer change …"; %(stop)s is the
    # command !stop.
    template = t.gettext("%(stop)s always works: the bot stops at once and forgets you.")
    return [t.line(locked), t.line(template, stop=STOP)]


def role_locked(t: Translator) -> Reply:
    """``!role <id>`` after the stage that needs the role has gone out: too late,
    and ``!stop`` still works."""
    return t.reply(*_locked_lines(t))


def no_roles(t: Translator) -> Reply:
    """``!role`` in a scenario without roles."""
    return t.reply(t.line(t.gettext("This action has no roles to choose from.")))


def role_needs_join(t: Translator) -> Reply:
    """``!role`` before ``!join``."""
    # TRANSLATORS: %(join)s is the command !join.
    template = t.gettext("Join a city first with %(join)s, then choose a role.")
    return t.reply(t.line(template, join=JOIN))
