"""A private participant whose pod is not a pod of the city (registered before
the city had pods, or their pod was removed from the file) is (re)assigned by
the same rule as a newcomer: at ``!join`` again, and when the run is armed
(``!arm`` says how many, counts only). Fake Matrix, real store; milliseconds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fakes import kit
from test_pods_people import NOW, Kit
from test_runs_pods import ALL_ROOMS, DM, PODS, bodies, everywhere, run_all

from bot.store import Store

STALE = {"@old1:fake": None, "@old2:fake": "gone", "@old3:fake": None, "@kept:fake": "st"}


async def test_set_pod_moves_a_registered_participant_only(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "blossom.db")
    try:
        p = store.participants
        await p.add_direct("pods", "hk", "@a:x", "!dm-a:x", now=NOW)
        assert await p.set_pod("pods", "hk", "@a:x", "mongkok")
        member = await p.direct_member("pods", "hk", "@a:x")
        assert member is not None and member.pod_id == "mongkok"
        assert not await p.set_pod("pods", "hk", "@nobody:x", "mongkok")
        assert await p.direct_member("pods", "hk", "@nobody:x") is None
    finally:
        await store.close()


async def test_join_again_assigns_a_pod_to_one_without_or_with_a_removed_one(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "blossom.db")
    try:
        k = Kit(store)
        for user, pod in (("@none:x", None), ("@gone:x", "gone")):
            room = f"!dm-{user.strip('@:x')}:x"
            await store.participants.add_direct("pods", "hk", user, room, now=NOW, pod_id=pod)
            await k.say(user, "!join pods hk")
            assert await k.pod_of(user) in ("mongkok", "causeway", "shatin", "tsuenwan")
        # A pod of the city is kept, as before.
        await store.participants.add_direct("pods", "hk", "@st:x", "!dm-st:x", now=NOW,
                                            pod_id="shatin")
        await k.say("@st:x", "!join pods hk")
        assert await k.pod_of("@st:x") == "shatin"
    finally:
        await store.close()


async def test_arm_reassigns_stale_pods_and_says_how_many(tmp_path: Path) -> None:
    rooms = [*ALL_ROOMS, *(f"!dm-{u[1:].split(':')[0]}:fake" for u in STALE)]
    async with kit(tmp_path, opted_in=rooms) as k:
        k.write(everywhere())
        for user, pod in STALE.items():
            room = f"!dm-{user[1:].split(':')[0]}:fake"
            await k.store.participants.add_direct("pods", "hk", user, room,
                                                  now=k.clock.now(), pod_id=pod)
        preview = await k.runs.preview("pods")
        assert preview.stale_pods == 3  # counted, nothing changed yet
        assert (await k.store.participants.direct_member("pods", "hk", "@old1:fake")).pod_id is None
        outcome = await k.arm("pods")
        assert "3 private participants had no pod of their city" in outcome.text
        assert "@old" not in outcome.text and "gone" not in outcome.text
        members = await k.store.participants.direct_members("pods", "hk")
        got = {m.user_id: m.pod_id for m in members}
        assert got["@kept:fake"] == "st"
        assert all(got[u] in PODS for u in STALE)
        # Balanced with the one already in st: the three go to three other pods.
        assert max(Counter(got.values()).values()) == 1
        await run_all(k)
        for user in STALE:
            room = f"!dm-{user[1:].split(':')[0]}:fake"
            assert any("MARK-" in b for b in bodies(k, room)), user  # they get their pod's


async def test_arm_says_nothing_when_every_pod_is_a_pod_of_the_city(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=[*ALL_ROOMS]) as k:
        k.write(everywhere())
        for (pod, _), room in DM.items():
            user = f"@{room[1:].split(':')[0]}:fake"
            await k.store.participants.add_direct("pods", "hk", user, room,
                                                  now=k.clock.now(), pod_id=pod)
        outcome = await k.arm("pods")
        assert "no pod of their city" not in outcome.text
