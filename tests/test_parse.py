from bot.control.args import DURATION_ARG, SLUG_ARG, TEXT_ARG, Arg
from bot.control.parse import Command, UsageError, parse
from bot.control.registry import CommandDef

SPECS = {
    "arm": CommandDef("arm", "Arm", "!arm demo", (Arg("scenario", SLUG_ARG),)),
    "abort": CommandDef(
        "abort",
        "Abort",
        "!abort demo",
        (
            Arg("scenario", SLUG_ARG),
            Arg("city", SLUG_ARG, optional=True),
            Arg("message", TEXT_ARG, True),
        ),
    ),
    "delay": CommandDef(
        "delay",
        "Delay",
        "!delay demo 10m",
        (
            Arg("scenario", SLUG_ARG),
            Arg("duration", DURATION_ARG),
            Arg("city", SLUG_ARG, optional=True),
        ),
    ),
}


def test_not_a_command() -> None:
    assert parse("hello", SPECS) is None


def test_simple() -> None:
    assert parse("!arm demo", SPECS) == Command("arm", {"scenario": "demo"}, "!arm demo")


def test_missing_and_extra() -> None:
    assert isinstance(parse("!arm", SPECS), UsageError)
    assert isinstance(parse("!arm a b", SPECS), UsageError)


def test_bad_slug_rejected() -> None:
    for bad in ("!arm Demo", "!arm dеmo", "!arm de\u200bmo", "!arm ../x", "!arm <b>x</b>"):
        result = parse(bad, SPECS)
        assert isinstance(result, UsageError), bad


def test_optional_city_and_text() -> None:
    r = parse("!abort demo Go home now", SPECS)
    assert isinstance(r, Command)
    assert r.args == {"scenario": "demo", "message": "Go home now"}
    r = parse("!abort demo london Go home", SPECS)
    assert isinstance(r, Command)
    assert r.args == {"scenario": "demo", "city": "london", "message": "Go home"}


def test_duration() -> None:
    r = parse("!delay demo 10m berlin", SPECS)
    assert isinstance(r, Command) and r.args["duration"] == "10m"
    assert isinstance(parse("!delay demo soon", SPECS), UsageError)


def test_unknown_and_oversized() -> None:
    assert isinstance(parse("!nope", SPECS), UsageError)
    assert isinstance(parse("!arm " + "a" * 70_000, SPECS), UsageError)


def test_rtl_override_refused() -> None:
    assert isinstance(parse("!abort demo \u202egnol", SPECS), UsageError)
