"""Every sentence the bot says in replies, in one place: control-room replies in
:mod:`bot.text.control`, what participants read in :mod:`bot.text.participants`.

Pure functions of ids, counts and times. None of them takes a stage's text or a
place: a reply quotes ids only (secret until release), and anything typed by a
user reaches a reply only as an id the parser has already checked.
"""
