"""One participant's language: translated templates in, a reply's plain and HTML bodies out.

A :class:`Translator` is what every function of :mod:`bot.i18n.messages` takes
first. It carries the gettext catalog, the city's locale (for times) and the
direction of the language, and it builds :class:`Reply` values whose plain body
and HTML form read correctly in that direction (see :mod:`bot.i18n.bidi`).

Placeholders are ``%(name)s`` (python-format, so Babel's checker and gettext's
tools understand them). A value is a :class:`Command` (never translated, never
touched by a translator: it is a placeholder), a number, or text such as a city
name, a place name or a time, which is isolated where its direction may differ
from the sentence's.
"""

from __future__ import annotations

import gettext
import html
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any, Literal

from babel import Locale
from babel.dates import format_time

from bot.i18n import bidi

Direction = Literal["ltr", "rtl"]


@dataclass(frozen=True)
class Command:
    """A command word such as ``!here``: the same in every language.

    ``args``: what follows it when a usage is shown (``<scenario> <city>``,
    already translated); the whole is one left-to-right unit, a command line.
    """

    word: str
    args: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join((self.word, *self.args))


HERE = Command("!here")
JOIN = Command("!join")
STOP = Command("!stop")
HELP = Command("!help")
ROLE = Command("!role")
ROLE_NONE = Command("!role", ("none",))  # clears one's role; "none" is never translated

Value = Command | int | str


@dataclass(frozen=True)
class Line:
    """One rendered template: plain text and its escaped HTML twin."""

    plain: str
    html: str


@dataclass(frozen=True)
class Reply:
    """A message to a participant, ready to send."""

    body: str
    html: str
    """Escaped; newlines as ``<br/>``; wrapped in ``<div dir="rtl">`` for RTL."""
    language: str
    """BCP 47 tag of the catalog used (``en``: the built-in English)."""
    direction: Direction

    def bold(self) -> Reply:
        """The same reply with its HTML form in bold, inside the direction's ``<div>``
        (the stop message is sent in bold, as it always was)."""
        opening = '<div dir="rtl">'
        if self.html.startswith(opening) and self.html.endswith("</div>"):
            inner = self.html[len(opening) : -len("</div>")]
            return replace(self, html=f"{opening}<b>{inner}</b></div>")
        return replace(self, html=f"<b>{self.html}</b>")

    def content(self, *, reply_to: str | None = None, msgtype: str = "m.notice") -> dict[str, Any]:
        """The ``m.room.message`` content of this reply."""
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.html,
        }
        if reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        return content


@dataclass(frozen=True)
class Translator:
    """The language a participant is spoken to in. Build it with :class:`bot.i18n.Catalogs`."""

    language: str
    """BCP 47 tag of the catalog in use; ``en`` for the built-in English."""
    translations: gettext.NullTranslations
    locale: Locale | None
    """The city's own locale (times follow it); ``None`` for a city without ``language``."""
    direction: Direction = "ltr"
    machine_made: bool = False
    """The catalog still has entries no speaker has reviewed."""

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.translations.ngettext(singular, plural, n)

    def pgettext(self, context: str, message: str) -> str:
        return self.translations.pgettext(context, message)

    def format_time(self, moment: datetime, zone: tzinfo) -> str:
        """A wall-clock time in the city's conventions (12- or 24-hour, from CLDR).

        A city without ``language`` reads ``HH:MM``, the format of ``{time:…}``
        in stage texts, as every time read before languages existed.
        """
        local = moment.astimezone(zone)
        if self.locale is None:
            return local.strftime("%H:%M:%S" if local.second else "%H:%M")
        return str(format_time(local, "short", tzinfo=zone, locale=self.locale))

    def line(self, template: str, **values: Value) -> Line:
        """Fill ``template`` (already translated) with ``values``."""
        rtl = self.direction == "rtl"
        plain_values: dict[str, object] = {}
        for name, value in values.items():
            if isinstance(value, Command):
                if rtl:
                    template = bidi.command_slot(template, name)
                plain_values[name] = value.text
            elif isinstance(value, int):
                plain_values[name] = value
            else:
                plain_values[name] = bidi.isolate(value) if rtl or bidi.has_rtl(value) else value
        html_values = {
            k: html.escape(v, quote=True) if isinstance(v, str) else v
            for k, v in plain_values.items()
        }
        return Line(
            plain=template % plain_values,
            html=html.escape(template, quote=True) % html_values,
        )

    def reply(self, *lines: Line) -> Reply:
        """Lines joined into one reply, laid out in the language's direction."""
        body = "\n".join(line.plain for line in lines)
        markup = "<br/>".join(line.html.replace("\n", "<br/>") for line in lines)
        if self.direction == "rtl":
            body = bidi.rtl_lines(body)
            markup = '<div dir="rtl">' + bidi.RLM + markup.replace("<br/>", "<br/>" + bidi.RLM)
            markup += "</div>"
        return Reply(body=body, html=markup, language=self.language, direction=self.direction)


def english(locale: Locale | None = None) -> Translator:
    """The built-in English (the msgids themselves), in ``locale``'s conventions for times."""
    return Translator(language="en", translations=gettext.NullTranslations(), locale=locale)
