"""Every sentence the bot says in control-room replies: :mod:`bot.text.control`.
What participants read is in :mod:`bot.i18n.messages`, in their city's language.

Pure functions of ids, counts and times. None of them takes a stage's text or a
place: a reply quotes ids only (secret until release), and anything typed by a
user reaches a reply only as an id the parser has already checked.
"""
