"""The shipped translation catalogs, and which one speaks to a city.

The ``.po`` files under ``bot/i18n/locale/<lang>/LC_MESSAGES/blossom.po`` are
the only source; they are compiled to ``.mo`` *in memory* when a
:class:`Catalogs` is built. Why not at install time or into a cache directory:
an editable install (``pip install -e .``, what ``make test`` uses) never runs
a build step, so a compiled file would have to be committed or rebuilt by
hand, and a cache directory can go stale or be read-only under a service
manager. A catalog of a few dozen messages compiles in about a millisecond, so
compiling on load costs nothing and a ``.po`` edit takes effect at the next
start, with no extra step.

A catalog is *machine-made* while any of its entries carries the translator
comment ``# machine translation, needs review`` (a ``#`` comment, not ``#.``:
``pybabel update`` keeps translators' comments and rewrites extracted ones).
"""

from __future__ import annotations

import gettext
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from babel import Locale
from babel.core import get_global
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from bot.i18n.tags import parse_language, text_direction
from bot.i18n.translator import Translator, english

DOMAIN = "blossom"
LOCALE_DIR = Path(__file__).with_name("locale")
MACHINE_MARK = "machine translation, needs review"


@dataclass(frozen=True)
class Language:
    """One shipped catalog."""

    tag: str
    """BCP 47, e.g. ``zh-Hant``."""
    locale: Locale
    translations: gettext.NullTranslations
    machine_made: bool
    catalog: Catalog


def read_catalog(path: Path, locale: Locale) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, locale=locale, domain=DOMAIN)


def compile_catalog(catalog: Catalog) -> Translations:
    """The catalog as gettext translations, compiled in memory (fuzzy entries are left out)."""
    buffer = BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return Translations(fp=buffer, domain=DOMAIN)


def is_machine_made(catalog: Catalog) -> bool:
    return any(MACHINE_MARK in message.user_comments for message in catalog if message.id)


def _script(locale: Locale) -> str | None:
    """The locale's script, explicit or the likely one (zh-TW → Hant, fa → Arab)."""
    if locale.script:
        return locale.script
    likely: Mapping[str, Any] = get_global("likely_subtags")
    keys = [f"{locale.language}_{locale.territory}"] if locale.territory else []
    for key in [*keys, locale.language]:
        if key in likely:
            script: str | None = Locale.parse(likely[key]).script
            return script
    return None


def _tag(locale: Locale) -> str:
    return "-".join(p for p in (locale.language, locale.script, locale.territory) if p)


class Catalogs:
    """Every catalog under ``directory``, read and compiled once, at construction."""

    def __init__(self, directory: Path = LOCALE_DIR) -> None:
        languages = []
        for path in sorted(directory.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
            locale = Locale.parse(path.parent.parent.name)
            catalog = read_catalog(path, locale)
            languages.append(
                Language(
                    tag=_tag(locale),
                    locale=locale,
                    translations=compile_catalog(catalog),
                    machine_made=is_machine_made(catalog),
                    catalog=catalog,
                )
            )
        self.languages: tuple[Language, ...] = tuple(languages)

    def match(self, locale: Locale) -> Language | None:
        """The catalog for ``locale``: same language and script, its region if shipped.

        ``zh-TW`` and ``zh-HK`` get ``zh-Hant``; ``zh`` (Simplified) does not;
        ``fa-AF`` gets ``fa``; ``sr-Latn`` would not get a Cyrillic ``sr``.
        """
        script = _script(locale)
        fits = [
            lang
            for lang in self.languages
            if lang.locale.language == locale.language and _script(lang.locale) == script
        ]
        same_region = [lang for lang in fits if lang.locale.territory == locale.territory]
        general = [lang for lang in fits if lang.locale.territory is None]
        chosen = same_region or general
        return chosen[0] if chosen else None

    def translator(self, tag: str | None) -> Translator:
        """How to speak to a city whose ``language`` is ``tag`` (``None``: English, as before).

        A tag that names a language without a catalog gets English words in
        that locale's conventions (e.g. its clock). ``tag`` comes from a loaded
        scenario, so it is valid; an invalid one raises :class:`LanguageError`.
        """
        if tag is None:
            return english()
        locale = parse_language(tag)
        found = self.match(locale)
        if found is None:
            return english(locale)
        return Translator(
            language=found.tag,
            translations=found.translations,
            locale=locale,
            direction="rtl" if text_direction(found.locale) == "rtl" else "ltr",
            machine_made=found.machine_made,
        )
