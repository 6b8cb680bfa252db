"""The shipped catalogs: complete, checked, plural rules right, commands untranslatable.

A catalog fails here when it misses a message of bot/i18n/messages.py, has a
fuzzy or empty entry, or a translation whose placeholders differ from its
msgid's; and the template (blossom.pot) fails when it is out of date with the
code (``make catalogs`` regenerates it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel import Locale
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_file
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po

from bot.i18n import Catalogs, Translator
from bot.i18n.catalogs import (
    DOMAIN,
    LOCALE_DIR,
    compile_catalog,
    is_machine_made,
    read_catalog,
)

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "bot" / "i18n" / "messages.py"
POT = LOCALE_DIR / f"{DOMAIN}.pot"
PO_FILES = {p.parent.parent.name: p for p in sorted(LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))}
SHIPPED = tuple(PO_FILES)
REQUIRED = {"de", "es", "fr", "fa", "zh_Hant"}
# %(name)s / %(count)d, python-format as gettext tools read it.
PLACEHOLDER = re.compile(r"%\((\w+)\)([sd])")
COMMAND_PLACEHOLDERS = {"here", "join", "stop", "help", "role"}
LITERAL_COMMAND = re.compile(r"(?<![\w%])!\w")


def _key(message: Message) -> tuple[str | None, str]:
    ident = message.id[0] if isinstance(message.id, tuple | list) else message.id
    return (message.context, ident)


def _placeholders(text: str) -> set[tuple[str, str]]:
    return set(PLACEHOLDER.findall(text))


def _strings(message: Message) -> list[str]:
    return list(message.string) if isinstance(message.string, tuple | list) else [message.string]


def _ids(message: Message) -> list[str]:
    return list(message.id) if isinstance(message.id, tuple | list) else [message.id]


def _pot() -> Catalog:
    with POT.open("rb") as handle:
        return read_po(handle, domain=DOMAIN)


def test_the_template_is_up_to_date_with_the_code() -> None:
    extracted = {}
    for _lineno, message_id, comments, context in extract_from_file(
        "python", MESSAGES, keywords=DEFAULT_KEYWORDS, comment_tags=("TRANSLATORS:",)
    ):
        ident = message_id[0] if isinstance(message_id, tuple) else message_id
        extracted[(context, ident)] = (message_id, comments)
    template = {_key(msg): msg for msg in _pot() if msg.id}
    assert set(extracted) == set(template), "run `make catalogs` and translate what is new"
    for key, (message_id, _comments) in extracted.items():
        plural = isinstance(message_id, tuple)
        assert template[key].pluralizable == plural, key


def test_the_required_languages_are_shipped() -> None:
    assert set(SHIPPED) >= REQUIRED


@pytest.mark.parametrize("lang", SHIPPED)
def test_catalog_is_complete_and_checked(lang: str) -> None:
    catalog = read_catalog(PO_FILES[lang], Locale.parse(lang))
    template = {_key(msg) for msg in _pot() if msg.id}
    entries = {_key(msg): msg for msg in catalog if msg.id}
    assert not (template - set(entries)), f"{lang} misses {sorted(template - set(entries))}"
    assert not (set(entries) - template), f"{lang} has entries the code no longer uses"
    assert not catalog.obsolete, f"{lang} keeps obsolete entries"
    for key, message in entries.items():
        assert not message.fuzzy, f"{lang} {key}: fuzzy (gettext would not use it)"
        strings = _strings(message)
        if message.pluralizable:
            assert len(strings) == catalog.num_plurals, f"{lang} {key}: plural forms"
        assert all(s.strip() for s in strings), f"{lang} {key}: empty translation"
        expected = _placeholders(_ids(message)[-1])
        for string in strings:
            assert _placeholders(string) == expected, f"{lang} {key}: placeholders"
    # Babel's own checks (python-format among them).
    problems = [(msg.id, [str(e) for e in errors]) for msg, errors in catalog.check()]
    assert problems == []


@pytest.mark.parametrize("lang", SHIPPED)
def test_commands_cannot_be_translated(lang: str) -> None:
    catalog = read_catalog(PO_FILES[lang], Locale.parse(lang))
    for message in catalog:
        if not message.id:
            continue
        for text in (*_ids(message), *_strings(message)):
            assert not LITERAL_COMMAND.search(text), f"a literal command in {message.id!r}"


def test_every_command_placeholder_is_explained_to_translators() -> None:
    for message in _pot():
        if not message.id:
            continue
        names = {name for name, _ in _placeholders(_ids(message)[-1])}
        for command in names & COMMAND_PLACEHOLDERS:
            comments = " ".join(message.auto_comments)
            assert f"!{command}" in comments, f"{message.id!r}: say that %({command})s is a command"


@pytest.mark.parametrize("lang", SHIPPED)
def test_a_catalog_says_it_is_machine_made_while_an_entry_is(lang: str) -> None:
    """The header's MACHINE-MADE paragraph goes when the last marked entry is reviewed."""
    catalog = read_catalog(PO_FILES[lang], Locale.parse(lang))
    assert ("MACHINE-MADE" in (catalog.header_comment or "")) == is_machine_made(catalog)


def _documented_languages() -> dict[str, str]:
    """The table of docs/participants.md, "Languages": `tag` -> status."""
    text = (ROOT / "docs" / "participants.md").read_text(encoding="utf-8")
    section = text.split("## Languages", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| [^|]+ \| `([A-Za-z-]+)` \| ([^|]+) \|$", section, re.M)
    return {tag: status.strip() for tag, status in rows}


def test_the_participants_guide_lists_every_language_as_it_is() -> None:
    documented = _documented_languages()
    loaded = {lang.tag: lang for lang in Catalogs().languages}
    assert set(documented) == set(loaded)
    for tag, language in loaded.items():
        expected = "machine-made, not yet reviewed" if language.machine_made else "reviewed"
        assert documented[tag] == expected, tag


# --- plural rules -----------------------------------------------------------------------

SAMPLES = [*range(0, 250), 1000, 1001, 100000, 1000000, 2000000, 1000001]


def _partition_matches_cldr(plural_of: object, locale: Locale) -> None:
    """The header's form index and CLDR's category split the integers the same way."""
    assert callable(plural_of)
    seen: dict[int, str] = {}
    back: dict[str, int] = {}
    for n in SAMPLES:
        index, category = plural_of(n), locale.plural_form(n)
        assert seen.setdefault(index, category) == category, (str(locale), n)
        assert back.setdefault(category, index) == index, (str(locale), n)


@pytest.mark.parametrize("lang", SHIPPED)
def test_catalog_plural_header_follows_cldr(lang: str) -> None:
    catalog = read_catalog(PO_FILES[lang], Locale.parse(lang))
    translations = compile_catalog(catalog)
    assert catalog.num_plurals == get_plural(lang).num_plurals
    _partition_matches_cldr(translations.plural, Locale.parse(lang))


def _one_message_catalog(lang: str, forms: tuple[str, ...]) -> Translator:
    catalog = Catalog(locale=Locale.parse(lang), domain=DOMAIN, fuzzy=False)
    catalog.add(("%(count)d stage", "%(count)d stages"), forms)
    return Translator(lang, compile_catalog(catalog), Locale.parse(lang))


@pytest.mark.parametrize(
    ("lang", "cases"),
    [
        # Arabic: six forms (zero, one, two, few, many, other).
        (
            "ar",
            {
                0: "zero",
                1: "one",
                2: "two",
                3: "few",
                10: "few",
                11: "many",
                99: "many",
                100: "other",
                102: "other",
                103: "few",
                111: "many",
            },
        ),
        # Russian: one (1, 21, 101), few (2-4, 22-24), many (5-20, 11-14, 25).
        (
            "ru",
            {
                1: "one",
                21: "one",
                101: "one",
                2: "few",
                4: "few",
                22: "few",
                5: "many",
                11: "many",
                12: "many",
                14: "many",
                20: "many",
                25: "many",
                111: "many",
            },
        ),
        # Persian: 0 and 1 are "one".
        ("fa", {0: "one", 1: "one", 2: "other", 10: "other"}),
    ],
)
def test_plural_forms_come_from_the_catalog_header(lang: str, cases: dict[int, str]) -> None:
    names = [
        c
        for c in ("zero", "one", "two", "few", "many", "other")
        if c in Locale.parse(lang).plural_form.tags | {"other"}
    ]
    index = {name: i for i, name in enumerate(_gettext_order(lang, names))}
    forms = tuple(f"form {name}" for name in _gettext_order(lang, names))
    t = _one_message_catalog(lang, forms)
    for n, category in cases.items():
        assert t.ngettext("%(count)d stage", "%(count)d stages", n) == forms[index[category]], n
        assert Locale.parse(lang).plural_form(n) == category, n


def _gettext_order(lang: str, names: list[str]) -> list[str]:
    """The CLDR category of each gettext form index, as the header numbers them."""
    rule = get_plural(lang)
    translations = compile_catalog(Catalog(locale=Locale.parse(lang), domain=DOMAIN, fuzzy=False))
    order: dict[int, str] = {}
    for n in SAMPLES:
        order.setdefault(translations.plural(n), Locale.parse(lang).plural_form(n))
    assert len(order) == rule.num_plurals
    return [order[i] for i in range(rule.num_plurals)]


def test_shipped_catalogs_are_what_the_bot_loads() -> None:
    loaded = {lang.tag for lang in Catalogs().languages}
    assert loaded >= {"de", "es", "fr", "fa", "zh-Hant"}
    assert len(loaded) == len(SHIPPED)
