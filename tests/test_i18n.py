"""Participants' languages: tags, replies, right-to-left layout, times. No server, milliseconds."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from bot.control.catalog import PARTICIPANT_COMMANDS
from bot.control.parse import Command as ParsedCommand
from bot.control.parse import CommandSpec, UsageError, parse
from bot.control.participants import help_reply, usage_reply
from bot.i18n import Catalogs, LanguageError, Translator, bidi, english, parse_language
from bot.i18n import messages as m

CATALOGS = Catalogs()
EN = english()
FA = CATALOGS.translator("fa")
ZH = CATALOGS.translator("zh-Hant")
COMMANDS = ("!here", "!join", "!stop", "!help", "!role")
# What a participant may send, for checking what they would copy.
SPECS = {name: CommandSpec(name, (), "", f"!{name}", True) for name in ("here", "stop", "help")}


# --- tags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("de", "de"),
        ("fa", "fa"),
        ("zh-Hant", "zh_Hant"),
        ("zh-hant", "zh_Hant"),
        ("pt-BR", "pt_BR"),
        ("sr-Latn", "sr_Latn"),
        ("es-419", "es_419"),
    ],
)
def test_tags_babel_knows_are_accepted(tag: str, expected: str) -> None:
    assert str(parse_language(tag)) == expected


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("tlh", "unknown language tag 'tlh'"),
        ("pt_BR", "write the BCP 47 tag 'pt-BR'"),
        ("und", "'und' names no language"),
        ("de-DE-u-co-phonebk", "is not a language tag Blossom reads"),
        ("", "empty language tag"),
        ("x" * 200, "this value"),  # long input is not echoed
    ],
)
def test_unknown_or_malformed_tags_are_refused(tag: str, message: str) -> None:
    with pytest.raises(LanguageError, match=message):
        parse_language(tag)


# --- which catalog speaks to a city ----------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "language", "direction"),
    [
        (None, "en", "ltr"),
        ("de", "de", "ltr"),
        ("de-AT", "de", "ltr"),
        ("fa", "fa", "rtl"),
        ("fa-AF", "fa", "rtl"),
        ("zh-Hant", "zh-Hant", "ltr"),
        ("zh-TW", "zh-Hant", "ltr"),  # Taiwan writes Traditional
        ("zh-HK", "zh-Hant", "ltr"),
        ("zh", "en", "ltr"),  # Simplified: no catalog, so English rather than the wrong script
        ("pt-BR", "en", "ltr"),  # valid, no catalog yet
        ("ar", "en", "ltr"),  # English words are laid out left to right, whatever the city
    ],
)
def test_catalog_choice(tag: str | None, language: str, direction: str) -> None:
    t = CATALOGS.translator(tag)
    assert (t.language, t.direction) == (language, direction)


def test_catalogs_load_in_milliseconds() -> None:
    import time

    start = time.perf_counter()
    Catalogs()
    assert time.perf_counter() - start < 0.5  # ~15 ms; generous for a loaded machine


# --- English is exactly what the bot said before languages -------------------------------

# What the bot said in English before its replies went through bot/i18n (the
# literals of bot/control/participants.py, bot/text/participants.py and
# bot/control/parse.py on main before the wiring): a city without language reads
# exactly this.
BEFORE = {
    "help": (
        "Blossom: you get each stage of the action here when it is released. "
        "To check in you can also react to the latest stage message.\n"
        "!here [words] — Check in for your city's current stage.\n"
        "!help — What you can say to the bot.\n"
        "!join <scenario> <city> — Get a city's stages privately in this direct chat.\n"
        "!stop — Stop getting stages here; the bot forgets you."
    ),
    "not_direct": "Send !join in a direct chat with the bot.",
    "no_city": "There is no city lndon open for private joining in demo.",
    "full": "London is full for private participants.",
    "joined": (
        "You're in for London. Each stage will come to this chat when it is "
        "released. Say !here to check in, !stop to leave at once."
    ),
    "joined_underway": (
        "You're in for London. Each stage will come to this chat when it is "
        "released. Say !here to check in, !stop to leave at once. The action has "
        "already begun: stages released before you joined are not sent again here; "
        "ask your city's organisers or room where things stand."
    ),
    "checked_in": "Checked in ✅ — you are counted.",
    "checked_in_early": (
        "Checked in ⏳ — noted, but the next check counts only check-ins after "
        "a later message from the bot: check in again when it comes."
    ),
    "not_signed_up": "You are not signed up in this chat.",
    "stopped": "Stopped. You will get nothing more from Blossom here.",
    "abort": (
        "STOP. The action in London is called off. Do not go on. Leave calmly, "
        "in small groups, and go home."
    ),
    "unknown": "unknown command; !help lists them",
    "unknown_named": "unknown command !jion; !help lists them",
    "too_long": "command too long (over 2000 characters)",
    "invisible": "the command contains invisible formatting characters",
    "missing": "missing city. Usage: !join <scenario> <city>",
    "missing_scenario": "missing scenario. Usage: !join <scenario> <city>",
    "extra": "too many arguments. Usage: !join <scenario> <city>",
    "extra_stop": "too many arguments. Usage: !stop",
    "invalid": (
        "scenario must be an id (lowercase letters, digits and inner hyphens). "
        "Usage: !join <scenario> <city>"
    ),
    "invalid_city": "city must be a city id. Usage: !join <scenario> <city>",
}


def _usage(t: Translator, text: str) -> m.Reply:
    error = parse(text, PARTICIPANT_COMMANDS)
    assert isinstance(error, UsageError), text
    return usage_reply(t, error, PARTICIPANT_COMMANDS)


def replies(t: Translator) -> dict[str, m.Reply]:
    """Every participant reply, with sample values (usage errors as the parser finds them)."""
    at = datetime(2026, 12, 5, 17, 30, tzinfo=UTC)
    roles = [m.RoleLine("front", "In the action", "at the square"), m.RoleLine("remote", "Home")]
    return {
        "help": help_reply(t, PARTICIPANT_COMMANDS),
        "not_direct": m.join_in_direct_chat(t),
        "no_city": m.no_such_city(t, scenario_id="demo", city_id="lndon"),
        "full": m.city_full(t, city_name="London"),
        "joined": m.joined(t, city_name="London"),
        "joined_underway": m.joined(t, city_name="London", underway=True),
        "joined_late": m.joined_late(t, released=2, latest_at=at, zone=ZoneInfo("Europe/London")),
        "checked_in": m.checked_in(t, counted=True),
        "checked_in_early": m.checked_in(t, counted=False),
        "not_signed_up": m.not_signed_up(t),
        "stopped": m.stopped(t),
        "abort": m.abort_text(t, city_name="London"),
        "unknown": _usage(t, "!jоin"),  # a Cyrillic о: not a plain name
        "unknown_named": _usage(t, "!jion demo london"),
        "too_long": _usage(t, "!join " + "x" * 2001),
        "invisible": _usage(t, "!join demo lon\u200bdon"),
        "missing": _usage(t, "!join demo"),
        "missing_scenario": _usage(t, "!join"),
        "extra": _usage(t, "!join demo london now"),
        "extra_stop": _usage(t, "!stop now"),
        "invalid": _usage(t, "!join Demo london"),
        "invalid_city": _usage(t, "!join demo lon,don"),
        "roles": m.role_list(t, roles=roles),
        "role_chosen": m.role_chosen(t, role_name="In the action"),
        "role_unknown": m.role_unknown(t, role_id="frnt"),
        "role_locked": m.role_locked(t),
        "no_roles": m.no_roles(t),
        "role_needs_join": m.role_needs_join(t),
        "role_cleared": m.role_cleared(t),
        "role_unknown_ids": m.role_unknown(t, role_id="frnt", ids=("front", "remote")),
        "roles_current": m.role_list(t, roles=roles, current="Home"),
        "roles_locked": m.role_list(t, roles=roles, current="Home", locked=True),
        "joined_pod": m.joined(t, city_name="London", pod=True),
    }


def test_a_city_without_language_gets_the_replies_of_before() -> None:
    got = replies(EN)
    for name, text in BEFORE.items():
        assert got[name].body == text, name
    none = CATALOGS.translator(None)
    assert (none.language, none.locale, none.direction) == ("en", None, "ltr")
    assert none.format_time(datetime(2026, 1, 1, 9, 5, tzinfo=UTC), ZoneInfo("UTC")) == "09:05"


def test_english_html_is_what_the_notifier_made_of_the_text() -> None:
    import html

    for name, reply in replies(EN).items():
        assert reply.html == html.escape(reply.body).replace("\n", "<br/>"), name
        assert not any(unicodedata.category(ch) == "Cf" for ch in reply.body), name
        assert reply.direction == "ltr"


def test_reply_content_is_an_html_notice() -> None:
    content = m.stopped(FA).content(reply_to="$ev")
    assert content["msgtype"] == "m.notice"
    assert content["format"] == "org.matrix.custom.html"
    assert content["body"] == m.stopped(FA).body
    assert content["m.relates_to"] == {"m.in_reply_to": {"event_id": "$ev"}}


@pytest.mark.parametrize("tag", ["de", "es", "fr", "fa", "zh-Hant"])
def test_every_reply_is_in_the_language(tag: str) -> None:
    english_replies = replies(EN)
    for name, reply in replies(CATALOGS.translator(tag)).items():
        assert reply.body != english_replies[name].body, (tag, name)


@pytest.mark.parametrize("tag", [None, "de", "es", "fr", "fa", "zh-Hant"])
def test_commands_are_the_same_words_in_every_language(tag: str | None) -> None:
    got = replies(CATALOGS.translator(tag))
    for name in PARTICIPANT_COMMANDS:  # !help is generated from the registry
        assert f"!{name}" in got["help"].body, name
    assert "!here" in got["joined"].body and "!stop" in got["joined"].body
    assert "!join" in got["not_direct"].body and "!help" in got["unknown"].body
    assert "!role" in got["roles"].body and "!role" in got["role_unknown"].body


def test_values_are_escaped_in_html_only() -> None:
    for t in (EN, FA):
        reply = m.joined(t, city_name="<b>Rock & Roll</b>")
        assert "<b>Rock & Roll</b>" in reply.body
        assert "&lt;b&gt;Rock &amp; Roll&lt;/b&gt;" in reply.html
        assert "<b>" not in reply.html


def test_help_says_when_its_translation_is_machine_made() -> None:
    note = "translated by a machine"
    assert FA.machine_made and ZH.machine_made
    assert help_reply(FA, PARTICIPANT_COMMANDS).body != help_reply(EN, PARTICIPANT_COMMANDS).body
    assert "ماشین" in help_reply(FA, PARTICIPANT_COMMANDS).body.splitlines()[-1]
    assert note not in help_reply(EN, PARTICIPANT_COMMANDS).body
    reviewed = Translator("fa", FA.translations, FA.locale, "rtl", machine_made=False)
    lines = len(help_reply(EN, PARTICIPANT_COMMANDS).body.splitlines())
    assert len(help_reply(reviewed, PARTICIPANT_COMMANDS).body.splitlines()) == lines


# --- right to left -----------------------------------------------------------------------


def test_rtl_reply_lines_start_with_rlm_and_html_sets_direction() -> None:
    reply = help_reply(FA, PARTICIPANT_COMMANDS)
    assert reply.direction == "rtl"
    lines = reply.body.split("\n")
    # The heading, one line per command, then the machine-translation note.
    assert len(lines) == len(PARTICIPANT_COMMANDS) + 2
    assert all(line.startswith(bidi.RLM) for line in lines)
    assert reply.html.startswith('<div dir="rtl">' + bidi.RLM) and reply.html.endswith("</div>")
    assert reply.html.count("<br/>" + bidi.RLM) == len(lines) - 1
    # The first line starts with the Latin word "Blossom": the RLM keeps it right to left.
    assert lines[0].startswith(bidi.RLM + "Blossom")


def test_rtl_isolates_latin_names_and_times() -> None:
    reply = m.joined(FA, city_name="Tehran")
    assert f"{bidi.FSI}Tehran{bidi.PDI}" in reply.body
    assert f"{bidi.FSI}Tehran{bidi.PDI}" in reply.html
    late = m.joined_late(
        FA, released=3, latest_at=datetime(2026, 12, 5, 17, 30, tzinfo=UTC), zone=ZoneInfo("UTC")
    )
    assert f"{bidi.FSI}17:30{bidi.PDI}" in late.body


def test_rtl_name_in_an_ltr_reply_is_isolated_and_latin_ones_are_not() -> None:
    de = CATALOGS.translator("de")
    assert f"{bidi.FSI}تهران{bidi.PDI}" in m.joined(de, city_name="تهران").body
    assert bidi.FSI not in m.joined(de, city_name="Berlin").body


def _command_spans(body: str) -> list[tuple[str, int]]:
    found = []
    for word in COMMANDS:
        start = body.find(word)
        while start != -1:
            found.append((word, start))
            start = body.find(word, start + 1)
    return found


@pytest.mark.parametrize("tag", ["fa", "zh-Hant", "de"])
def test_no_invisible_character_touches_a_command(tag: str) -> None:
    for name, reply in replies(CATALOGS.translator(tag)).items():
        for text in (reply.body, reply.html):
            for word, start in _command_spans(text):
                end = start + len(word)
                before = text[start - 1] if start else " "
                after = text[end] if end < len(text) else " "
                assert unicodedata.category(before) != "Cf", (tag, name, word)
                assert unicodedata.category(after) != "Cf", (tag, name, word)


def test_rtl_commands_sit_in_a_spaced_ltr_isolate() -> None:
    body = m.joined(FA, city_name="Tehran").body
    assert f"{bidi.LRI} !here {bidi.PDI}" in body
    assert f"{bidi.LRI} !stop {bidi.PDI}" in body
    # The translation's own spaces went inside: never a double space.
    assert "  " not in body


def test_what_a_participant_copies_from_an_rtl_reply_is_a_command() -> None:
    body = m.joined(FA, city_name="Tehran").body
    start = body.index("!here")
    exact = body[start : start + len("!here")]  # the visible word
    spaced = body[start - 1 : start + len("!here") + 1]  # with the spaces around it
    swept = body[start - 2 : start + len("!here") + 2]  # the selection ran over the isolate
    assert parse(exact, SPECS) == ParsedCommand("here", {}, "!here")
    assert parse(spaced, SPECS) == ParsedCommand("here", {}, "!here")
    assert unicodedata.category(swept[0]) == "Cf"
    # The control parser ignores text that does not start with "!": a parser that
    # reads copied text should strip marks at the ends first (never inside).
    assert parse(swept, SPECS) is None
    assert parse(bidi.strip_edges(swept), SPECS) == ParsedCommand("here", {}, "!here")
    assert bidi.strip_edges(bidi.RLM + " !here" + bidi.PDI) == "!here"
    inside = "!he" + bidi.PDI + "re"
    assert bidi.strip_edges(inside) == inside


def test_command_slot_keeps_one_space_on_each_side() -> None:
    lri, pdi = bidi.LRI, bidi.PDI
    assert bidi.command_slot("a %(x)s b", "x") == f"a{lri} %(x)s {pdi}b"
    assert bidi.command_slot("%(x)s — b", "x") == f"{lri} %(x)s {pdi}— b"
    assert bidi.command_slot("a %(x)s.", "x") == f"a{lri} %(x)s {pdi}."
    assert bidi.command_slot("a %(y)s", "x") == "a %(y)s"


# --- times -------------------------------------------------------------------------------

EVENING = datetime(2026, 12, 5, 17, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (None, "17:30"),  # no language: the {time:…} format, as before
        ("en-US", "5:30\u202fPM"),
        ("en-GB", "17:30"),
        ("de", "17:30"),
        ("fa", "17:30"),
        ("zh-Hant", "下午5:30"),
    ],
)
def test_times_follow_the_citys_locale(tag: str | None, expected: str) -> None:
    assert CATALOGS.translator(tag).format_time(EVENING, ZoneInfo("UTC")) == expected


def test_times_are_in_the_citys_zone() -> None:
    assert CATALOGS.translator("de").format_time(EVENING, ZoneInfo("Europe/Berlin")) == "18:30"


def test_stage_text_times_keep_their_format_whatever_the_language() -> None:
    from bot.scenario import load_scenario_text
    from bot.scenario.render import render_template

    text = """\
version: 1
id: t
title: T
start: 2026-12-05T17:30:00Z
cities:
  - {id: ny, name: New York, timezone: America/New_York, rooms: ["!ny:x.org"], language: en-US}
stages:
  - {id: a, at: 0m, text: "At {time:0m}"}
"""
    scenario = load_scenario_text(text)
    assert render_template("At {time:0m}", scenario, scenario.cities[0]) == "At 12:30"


# --- the registry and the catalogs agree ----------------------------------------------


def test_every_participant_command_is_explained_in_every_language() -> None:
    """A participant command added to the registry without a translatable summary,
    or with an argument whose name or type has no message, fails here."""
    template = {msg.id for msg in CATALOGS.languages[0].catalog if msg.id}
    for spec in PARTICIPANT_COMMANDS.values():
        assert spec.summary in template, f"!{spec.name}: declare its summary with N_ in messages"
        for arg in spec.args:
            shown = arg.shown or arg.name
            for tag in ("de", "fa", "zh-Hant"):
                t = CATALOGS.translator(tag)
                assert m.argument_name(t, shown) != shown, (spec.name, shown, tag)
            if not arg.type.rest:  # the rest of the line is never invalid
                assert arg.kind in ("slug", "city"), f"!{spec.name} {shown}: no invalid message"


@pytest.mark.parametrize("tag", ["de", "fa", "zh-Hant"])
def test_help_is_generated_from_the_registry(tag: str) -> None:
    t = CATALOGS.translator(tag)
    lines = help_reply(t, PARTICIPANT_COMMANDS).body.split("\n")
    for line, spec in zip(lines[1:], PARTICIPANT_COMMANDS.values(), strict=False):
        assert f"!{spec.name}" in line
        assert t.gettext(spec.summary) in line
        assert t.gettext(spec.summary) != spec.summary
    usage = help_reply(t, PARTICIPANT_COMMANDS).body
    assert f"<{m.argument_name(t, 'scenario')}> <{m.argument_name(t, 'city')}>" in usage


def test_a_usage_in_an_rtl_reply_is_one_left_to_right_command_line() -> None:
    reply = _usage(FA, "!join")
    line = f"{bidi.LRI} !join <{m.argument_name(FA, 'scenario')}> <{m.argument_name(FA, 'city')}> "
    assert line + bidi.PDI in reply.body
    assert "&lt;" in reply.html and "<سناریو>" not in reply.html  # escaped in HTML


def test_the_stop_message_in_bold_is_what_the_runs_layer_sent_before() -> None:
    """What bot/runs.py should send for the default stop message: ``abort_text(...).bold()``
    (in English, exactly the body and ``<b>`` HTML it renders from DEFAULT_ABORT_TEXT)."""
    from bot.runs import DEFAULT_ABORT_TEXT
    from bot.scenario.render import to_html

    english = m.abort_text(EN, city_name="London").bold()
    assert english.body == DEFAULT_ABORT_TEXT.format(city="London")
    assert english.html == f"<b>{to_html(english.body)}</b>"
    persian = m.abort_text(FA, city_name="Tehran").bold()
    assert persian.html.startswith('<div dir="rtl"><b>' + bidi.RLM)
    assert persian.html.endswith("</b></div>")


@pytest.mark.parametrize(
    "text",
    [
        "!jion",
        "!jоin",
        "!JION x",
        "!",
        "!!",
        "!join",
        "!join demo",
        "!join Demo london",
        "!join demo lon,don",
        "!join demo london x",
        "!join demo london confirm",
        "!stop now",
        "!help me",
        "!join d\u200bemo london",
        "!here\u202e",
        "!join " + "x" * 3000,
        "!join -x london",
        "!join demo a_b",
        "!JOIN",
        "!Stop please",
    ],
)
def test_in_english_every_usage_reply_is_the_parsers_message(text: str) -> None:
    """Whatever a participant mistypes, a city without language reads what the parser
    says, as it did before the replies were translated."""
    error = parse(text, PARTICIPANT_COMMANDS)
    assert isinstance(error, UsageError)
    assert usage_reply(EN, error, PARTICIPANT_COMMANDS).body == error.message
    assert usage_reply(FA, error, PARTICIPANT_COMMANDS).body != error.message


def test_a_late_join_is_one_paragraph_spaced_as_the_language_spaces() -> None:
    assert "。行動已經開始" in m.joined(ZH, city_name="香港", underway=True).body
    assert ". Die Aktion" in m.joined(CATALOGS.translator("de"), city_name="X", underway=True).body
    assert "\n" not in m.joined(FA, city_name="X", underway=True).body
