"""Language tags: BCP 47 as people write them, checked against Babel's locale data. Pure.

A tag is accepted when Babel (CLDR) knows its locale: ``de``, ``pt-BR``,
``zh-Hant``, ``sr-Latn``, ``fa``; case does not matter. Anything else fails with
a message a person can act on. Messages repeat the tag only when it is short
and plain, since it was typed by someone and ends up in a terminal.
"""

from __future__ import annotations

import re

from babel import Locale, UnknownLocaleError

_ECHOABLE = re.compile(r"[A-Za-z0-9_-]{1,35}")
_HINT = "expected a BCP 47 language tag such as de, pt-BR or zh-Hant"
# Tags that are well formed but name no language to speak.
_NO_LANGUAGE = frozenset({"und", "root", "zxx", "mul", "mis"})


class LanguageError(ValueError):
    """Not a language tag Blossom can speak; the message says why."""


def _shown(tag: str) -> str:
    return f"'{tag}'" if _ECHOABLE.fullmatch(tag) else "this value"


def parse_language(tag: str) -> Locale:
    """The Babel locale a BCP 47 tag names. Raises :class:`LanguageError`."""
    text = tag.strip()
    if not text:
        raise LanguageError(f"empty language tag ({_HINT})")
    if "_" in text and _ECHOABLE.fullmatch(text):
        # POSIX spelling (pt_BR); say the right one rather than "unknown".
        raise LanguageError(
            f"'{text}' is a POSIX locale name; write the BCP 47 tag "
            f"'{text.replace('_', '-')}' (hyphens, not underscores)"
        )
    if text.split("-")[0].lower() in _NO_LANGUAGE:
        raise LanguageError(f"{_shown(text)} names no language ({_HINT})")
    try:
        return Locale.parse(text, sep="-")
    except UnknownLocaleError:
        raise LanguageError(f"unknown language tag {_shown(text)} ({_HINT})") from None
    except (ValueError, TypeError):
        # Extensions and private use (de-DE-u-co-phonebk, x-...) are not supported.
        raise LanguageError(
            f"{_shown(text)} is not a language tag Blossom reads ({_HINT}; "
            "language, then optional script and region)"
        ) from None


def text_direction(locale: Locale) -> str:
    """``"rtl"`` or ``"ltr"``: how the locale's script runs."""
    return "rtl" if locale.text_direction == "rtl" else "ltr"
