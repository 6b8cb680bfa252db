"""The control watch against a scripted /messages (the live path is in
test_abort_during_fanout_live.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from nio import Event, RoomMessagesError, RoomMessagesResponse

from bot.matrix.events import Command
from bot.matrix.watch import MAX_FAILED_POLLS, ControlWatch

BOT = "@bot:x"
ROOM = "!control"


def text(n: int, sender: str = "@org:x") -> Event:
    return Event.parse_event({
        "type": "m.room.message", "sender": sender, "event_id": f"${n}",
        "origin_server_ts": n, "content": {"msgtype": "m.text", "body": f"!cmd {n}"},
    })


def encrypted(n: int) -> Event:
    return Event.parse_event({
        "type": "m.room.encrypted", "sender": "@org:x", "event_id": f"${n}",
        "origin_server_ts": n,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
                    "sender_key": "k", "session_id": "s", "device_id": "D"},
    })


class ScriptedClient:
    """Answers room_messages from a list of pages keyed by the ``start`` token."""

    user_id = BOT

    def __init__(self, pages: dict[str, Any]) -> None:
        self.pages = pages
        self.asked: list[str] = []

    async def room_messages(self, room_id: str, start: str, **_: Any) -> Any:
        self.asked.append(start)
        page = self.pages.get(start)
        if isinstance(page, Exception):
            raise page
        if page is None:
            return RoomMessagesResponse(room_id, [], start, None)  # type: ignore[arg-type]
        return page


async def run_watch(client: ScriptedClient, seconds: float = 0.1) -> tuple[list[str], bool]:
    seen: list[str] = []

    async def on_command(command: Command) -> None:
        assert command.room_id == ROOM
        seen.append(command.body)

    watch = ControlWatch(client, lambda: [ROOM], on_command, interval_s=0.01)  # type: ignore[arg-type]
    task = asyncio.ensure_future(watch.watch("s0"))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    task.cancel()
    return seen, bool(done)


async def test_commands_in_order_across_pages_and_the_bots_own_skipped() -> None:
    first = [text(i) for i in range(50)]
    first[3] = text(3, sender=BOT)
    client = ScriptedClient({
        "s0": RoomMessagesResponse(ROOM, first, "s0", "t1"),
        "t1": RoomMessagesResponse(ROOM, [text(50)], "t1", "t2"),
    })
    seen, returned = await run_watch(client)
    assert not returned
    assert seen == [f"!cmd {i}" for i in range(51) if i != 3]
    # Later polls go on from the last token, and nothing is handed over twice.
    assert client.asked[:2] == ["s0", "t1"] and set(client.asked[2:]) == {"t2"}


async def test_undecryptable_message_ends_the_watch_before_later_commands() -> None:
    client = ScriptedClient({
        "s0": RoomMessagesResponse(ROOM, [text(1), encrypted(2), text(3)], "s0", "t1"),
    })
    seen, returned = await run_watch(client, seconds=1)
    assert returned, "the hold must end so the sync brings the room key"
    assert seen == ["!cmd 1"]  # !cmd 3 waits for the sync: it must not overtake $2


async def test_errors_are_retried_quietly() -> None:
    client = ScriptedClient({"s0": ConnectionError("down")})
    seen, returned = await run_watch(client)
    assert seen == [] and not returned and len(client.asked) > 2
    client = ScriptedClient({"s0": RoomMessagesError("M_FORBIDDEN")})
    seen, returned = await run_watch(client)
    assert seen == [] and not returned


async def test_a_page_nio_keeps_failing_on_ends_the_watch() -> None:
    """Should a page still break nio (after sanitising), asking again from the
    same token fails for ever: the watch gives way to the sync."""
    client = ScriptedClient({"s0": TypeError("nio parser")})
    seen, returned = await run_watch(client, seconds=1)
    assert seen == [] and returned and len(client.asked) == MAX_FAILED_POLLS


def beat(n: int, sender: str = "@crew-b:y") -> Event:
    return Event.parse_event({
        "type": "org.blossom.crew", "sender": sender, "state_key": sender,
        "event_id": f"$beat{n}", "origin_server_ts": n,
        "content": {"time": n, "interval": 5000, "version": "0.1.0", "armed": []},
    })


async def test_with_a_crew_the_others_heartbeats_are_handed_on_while_held() -> None:
    """Held for a fan-out, a member that read heartbeats only from /sync saw
    the others go down while they were sending too (benchmarks.scaleout,
    replicated: most rooms sent twice)."""
    client = ScriptedClient({
        "s0": RoomMessagesResponse(ROOM, [beat(1), text(2), beat(3, BOT)], "s0", "t1"),
        "t1": RoomMessagesResponse(ROOM, [beat(4)], "t1", "t2"),
    })
    commands: list[str] = []
    beats: list[tuple[str, list[str]]] = []

    async def on_command(command: Command) -> None:
        commands.append(command.body)

    watch = ControlWatch(
        client,  # type: ignore[arg-type]
        lambda: [ROOM],
        on_command,
        interval_s=0.01,
        on_heartbeats=lambda hb: beats.append((hb.room_id, [e["event_id"] for e in hb.events])),
    )
    task = asyncio.ensure_future(watch.watch("s0"))
    await asyncio.sleep(0.1)
    task.cancel()
    assert commands == ["!cmd 2"], "a heartbeat is never a command"
    # The bot's own is handed on too: the roster skips it (it knows it is up).
    assert beats == [(ROOM, ["$beat1", "$beat3"]), (ROOM, ["$beat4"])]


async def test_without_a_crew_heartbeats_are_not_asked_for() -> None:
    asked: list[Any] = []

    class Recording(ScriptedClient):
        async def room_messages(self, room_id: str, start: str, **kw: Any) -> Any:
            asked.append(kw.get("message_filter"))
            return await super().room_messages(room_id, start)

    await run_watch(Recording({}), 0.05)
    assert asked and all("org.blossom.crew" not in f["types"] for f in asked)
