"""Participants' languages: gettext catalogs (managed with Babel) and right-to-left layout.

- :mod:`bot.i18n.messages`: every sentence the bot says to participants.
- :class:`Catalogs`: the shipped ``.po`` catalogs, compiled in memory; its
  ``translator(city.language)`` gives the :class:`Translator` for a city.
- :mod:`bot.i18n.bidi`: how right-to-left replies stay readable and commands typeable.
- :mod:`bot.i18n.tags`: BCP 47 tags, validated with Babel (the scenario's ``language``).
"""

from bot.i18n.catalogs import Catalogs, Language
from bot.i18n.tags import LanguageError, parse_language
from bot.i18n.translator import Command, Line, Reply, Translator, english

__all__ = [
    "Catalogs",
    "Command",
    "Language",
    "LanguageError",
    "Line",
    "Reply",
    "Translator",
    "english",
    "parse_language",
]
