"""The run manager with pods and roles, against the fake Matrix (tests/fakes.py):
each room and each private participant gets only its own pod's places and its
role's text; gates per pod and per role; steering one pod; restart. Real store
and dispatcher; ManualClock; milliseconds per test."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import CONTROL, T0, Kit, kit

from bot.ledger import DispatchState
from bot.runs import ArmError

PODS = ("mk", "cw", "st", "tw")
ROOM = {p: f"!{p}:fake" for p in PODS}
MEDICS = "!mk-medics:fake"  # mongkok's support room
# Private participants: (pod, role) → their direct chat.
DM = {
    ("cw", "front"): "!dm-cw-front:fake",
    ("cw", "support"): "!dm-cw-support:fake",
    ("st", "remote"): "!dm-st-remote:fake",
    ("st", None): "!dm-st-none:fake",
}
ALL_ROOMS = [*ROOM.values(), MEDICS, *DM.values()]


def marker(pod: str, place: str) -> str:
    return f"MARK-{pod}-{place}"


def everywhere(
    sid: str = "pods", *, gate: dict[str, Any] | None = None, abort_text: str | None = None
) -> dict[str, Any]:
    pods = []
    for p in PODS:
        rooms: list[Any] = [ROOM[p]]
        if p == "mk":
            rooms.append({"room": MEDICS, "role": "support"})
        pods.append(
            {
                "id": p,
                "rooms": rooms,
                "places": {
                    place: {"name": marker(p, place), "geo": f"22.{i}{len(p)},114.1"}
                    for i, place in enumerate(("staging", "spot"), start=1)
                },
            }
        )
    data: dict[str, Any] = {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "roles": [
            {"id": "front", "name": "Front"},
            {"id": "support", "name": "Support"},
            {"id": "remote", "name": "Remote"},
        ],
        "cities": [
            {
                "id": "hk",
                "name": "Hong Kong",
                "timezone": "Asia/Hong_Kong",
                "direct": True,
                "places": {"home": {"name": "MARK-city-home"}},
                "pods": pods,
            }
        ],
        "stages": [
            {
                "id": "gather",
                "at": "0s",
                "place": "staging",
                "text": {
                    "default": "T-default go to {staging}",
                    "support": "T-support near {staging}",
                    "remote": "T-remote stay home",
                },
            },
            {
                "id": "spot",
                "at": "+10s",
                "place": "spot",
                "roles": ["front", "support"],
                **({"require": gate} if gate else {}),
                "text": {"front": "T-front now {spot}", "support": "T-support edge of {spot}"},
            },
            {"id": "disperse", "at": "+20s", "text": "T-all leave by {home}"},
        ],
    }
    if abort_text is not None:
        data["abort_text"] = abort_text
    return data


async def join_privately(k: Kit, sid: str = "pods") -> None:
    for (pod, role), room in DM.items():
        user = f"@{room[1:].split(':')[0]}:fake"
        await k.store.participants.add_direct(sid, "hk", user, room, now=k.clock.now(), pod_id=pod)
        if role is not None:
            assert await k.store.participants.set_role(sid, "hk", user, role)


def bodies(k: Kit, room: str) -> list[str]:
    return [str(e.content.get("body", "")) for e in k.hs.in_room(room) if e.tag]


def pods_seen(k: Kit, room: str) -> set[str]:
    return {m.group(1) for b in bodies(k, room) for m in re.finditer(r"MARK-(\w+)-", b)}


def units(k: Kit, room: str) -> list[str]:
    return [s for s, part in k.hs.stages(room) if part == "text"]


async def run_all(k: Kit) -> None:
    for s in (0, 10, 20):
        await k.at(T0 + timedelta(seconds=s))


async def test_each_room_and_person_gets_only_its_pod_and_role(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere())
        await join_privately(k)
        out = await k.arm("pods")
        assert out.run_id is not None, out.text
        assert "in 1 cities" in out.text, out.text  # four pods are one city
        assert "MARK-" not in out.text + out.table
        await run_all(k)
        for pod, room in ROOM.items():
            # No role: gather's default text, never the role-limited spot.
            assert units(k, room) == ["gather@default", "disperse"], room
            assert pods_seen(k, room) == {pod, "city"}
            assert "T-default" in bodies(k, room)[0]
        assert units(k, MEDICS) == ["gather@support", "spot@support", "disperse"]
        assert pods_seen(k, MEDICS) == {"mk", "city"}
        assert "T-support edge" in bodies(k, MEDICS)[2]
        front = DM[("cw", "front")]
        assert units(k, front) == ["gather@default", "spot@front", "disperse"]
        assert "T-front now MARK-cw-spot" in bodies(k, front)[2]
        assert pods_seen(k, DM[("cw", "support")]) == {"cw", "city"}
        remote = DM[("st", "remote")]
        assert units(k, remote) == ["gather@remote", "disperse"]
        assert not any("MARK-st-staging" in b for b in bodies(k, remote) if "T-remote" in b)
        assert units(k, DM[("st", None)]) == ["gather@default", "disperse"]
        # The control room names pods by id and counts, never a place.
        notices = "\n".join(k.hs.notices())
        assert "MARK-" not in notices and "hk/cw" in notices


async def test_gate_per_pod_holds_only_the_pod_below_quorum(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere(gate={"checkins": 2, "per": "pod", "else": "hold"}))
        await join_privately(k)
        armed = (await k.arm("pods")).run_id
        assert armed is not None
        await k.at(T0)
        for n in range(2):
            await k.store.participants.add_checkin(
                armed, "hk", "gather", f"@m{n}:fake", now=k.clock.now(), via="here", pod_id="mk"
            )
        await k.store.participants.add_checkin(
            armed, "hk", "gather", "@c:fake", now=k.clock.now(), via="here", pod_id="cw"
        )
        await k.at(T0 + timedelta(seconds=10))
        assert "spot@support" in units(k, MEDICS)
        assert "spot@front" not in units(k, DM[("cw", "front")])
        rows = {(d.city_id, d.stage_id): d.state for d in await k.store.ledger.dispatches(armed)}
        assert rows[("hk/mk", "spot@support")] is DispatchState.RELEASED
        assert rows[("hk/cw", "spot@front")] is DispatchState.HELD
        assert any("held in hk/cw" in n and "1/2" in n for n in k.hs.notices())


async def test_gate_per_role_counts_the_role_city_wide(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere(gate={"checkins": 2, "role": "front", "else": "skip"}))
        await join_privately(k)
        run = (await k.arm("pods")).run_id
        assert run is not None
        await k.at(T0)
        # Two check-ins, in two pods, but only one of them front: below quorum.
        await k.store.participants.add_checkin(
            run,
            "hk",
            "gather",
            "@a:fake",
            now=k.clock.now(),
            via="here",
            pod_id="cw",
            role_id="front",
        )
        await k.store.participants.add_checkin(
            run,
            "hk",
            "gather",
            "@b:fake",
            now=k.clock.now(),
            via="here",
            pod_id="mk",
            role_id="support",
        )
        await k.at(T0 + timedelta(seconds=10))
        assert all(not u.startswith("spot") for r in ALL_ROOMS for u in units(k, r))
        await k.store.participants.add_checkin(
            run,
            "hk",
            "gather",
            "@c:fake",
            now=k.clock.now(),
            via="here",
            pod_id="tw",
            role_id="front",
        )
        # (the gate was decided at its instant: skipped stays skipped)
        await k.at(T0 + timedelta(seconds=20))
        assert units(k, MEDICS)[-1] == "disperse"


async def test_role_gate_reaches_quorum_across_pods(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere(gate={"checkins": 2, "role": "front", "else": "skip"}))
        await join_privately(k)
        run = (await k.arm("pods")).run_id
        assert run is not None
        await k.at(T0)
        for user, pod in (("@a:fake", "cw"), ("@b:fake", "tw")):
            await k.store.participants.add_checkin(
                run,
                "hk",
                "gather",
                user,
                now=k.clock.now(),
                via="here",
                pod_id=pod,
                role_id="front",
            )
        await k.at(T0 + timedelta(seconds=10))
        assert "spot@front" in units(k, DM[("cw", "front")])
        assert "spot@support" in units(k, MEDICS)


async def test_hold_one_pod_then_resume(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere())
        await k.arm("pods")
        armed = k.runs.get("pods")
        await k.runs.hold(armed, ["hk/mk"])
        await k.at(T0)
        assert units(k, ROOM["mk"]) == [] and units(k, MEDICS) == []
        assert units(k, ROOM["cw"]) == ["gather@default"]
        reply = await k.runs.resume(armed, ["hk/mk"])
        assert "3 held stage(s)" in reply  # gather for no role, support, remote
        await k.idle()
        assert units(k, ROOM["mk"]) == ["gather@default"]
        assert units(k, MEDICS) == ["gather@support"]


async def test_a_pod_cannot_be_resumed_out_of_its_citys_hold(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere())
        await k.arm("pods")
        armed = k.runs.get("pods")
        await k.runs.hold(armed, ["hk"])
        with pytest.raises(ArmError, match=r"hk is held as a whole.*!resume pods hk"):
            await k.runs.resume(armed, ["hk/mk"])
        await k.at(T0)
        assert all(units(k, r) == [] for r in ALL_ROOMS)
        await k.runs.resume(armed, ["hk"])
        await k.idle()
        assert units(k, ROOM["tw"]) == ["gather@default"]


async def test_redirect_one_pod_after_reveal_corrects_only_that_pod(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere())
        await join_privately(k)
        await k.arm("pods")
        armed = k.runs.get("pods")
        await k.at(T0)
        reply = await k.runs.redirect(armed, "hk/cw", "staging", "MARK-cw-newstaging", None)
        assert "already revealed by gather" in reply
        await k.idle()
        cw = [b for b in bodies(k, ROOM["cw"]) if "Correction" in b]
        assert len(cw) == 1 and "MARK-cw-newstaging" in cw[0]
        # The role room of another pod, other pods, and the pod's remote... none told.
        for room in (ROOM["mk"], MEDICS, ROOM["st"], ROOM["tw"], DM[("st", None)]):
            assert not any("Correction" in b for b in bodies(k, room)), room
        for room in ALL_ROOMS:
            own = (
                {"cw"}
                if room in (ROOM["cw"], DM[("cw", "front")], DM[("cw", "support")])
                else set()
            )
            assert "cw" not in pods_seen(k, room) or own, room
        # The pod's support person read the support text: corrected in it.
        support = [b for b in bodies(k, DM[("cw", "support")]) if "Correction" in b]
        assert len(support) == 1 and "T-support near MARK-cw-newstaging" in support[0]
        await k.at(T0 + timedelta(seconds=10))
        assert "MARK-cw-spot" in bodies(k, DM[("cw", "front")])[-2]


async def test_city_redirect_of_a_place_every_pod_defines_must_name_a_pod(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere())
        await k.arm("pods")
        armed = k.runs.get("pods")
        with pytest.raises(ArmError, match=r"name the pod, e.g. !redirect pods hk/mk staging"):
            await k.runs.redirect(armed, "hk", "staging", "x", None)
        with pytest.raises(ArmError, match=r"hk/mk has no place nowhere"):
            await k.runs.redirect(armed, "hk/mk", "nowhere", "x", None)
        # The city's own place reaches every pod (none defines it).
        await k.runs.redirect(armed, "hk", "home", "MARK-city-newhome", None)
        await run_all(k)
        for room in ROOM.values():
            assert "MARK-city-newhome" in bodies(k, room)[-1]


async def test_abort_one_pod_with_its_own_places(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere(abort_text="Stop. Leave {staging} now."))
        await join_privately(k)
        await k.arm("pods")
        armed = k.runs.get("pods")
        await k.at(T0)
        reply = await k.runs.abort(armed, ["hk/cw"], None)
        assert "2 pending stage(s)" in reply or "pending stage(s)" in reply
        await k.idle()
        for room in (ROOM["cw"], DM[("cw", "front")], DM[("cw", "support")]):
            assert units(k, room)[-1] == "!abort", room
            assert "Leave MARK-cw-staging now" in bodies(k, room)[-1]
        await k.at(T0 + timedelta(seconds=10))
        await k.at(T0 + timedelta(seconds=20))
        assert units(k, ROOM["cw"]) == ["gather@default", "!abort"]
        assert units(k, ROOM["tw"]) == ["gather@default", "disperse"]
        assert units(k, MEDICS)[-1] == "disperse"


async def test_abort_the_city_sends_each_pod_its_own_stop(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere(abort_text="Stop. Leave {staging} now."))
        await join_privately(k)
        await k.arm("pods")
        await k.at(T0)
        await k.runs.abort(k.runs.get("pods"), ["hk"], None)
        await k.idle()
        for pod, room in ROOM.items():
            assert f"Leave MARK-{pod}-staging now" in bodies(k, room)[-1]
            assert pods_seen(k, room) <= {pod, "city"}
        assert any("is complete (aborted)" in n for n in k.hs.notices())


async def test_delay_one_pod(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere())
        await k.arm("pods")
        await k.runs.delay(k.runs.get("pods"), ["hk/st"], timedelta(seconds=5))
        await k.at(T0)
        assert units(k, ROOM["st"]) == [] and units(k, ROOM["tw"]) == ["gather@default"]
        await k.at(T0 + timedelta(seconds=5))
        assert units(k, ROOM["st"]) == ["gather@default"]


async def test_release_now_takes_every_variant_of_the_pod(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere(gate={"checkins": 5, "per": "pod", "else": "hold"}))
        await k.arm("pods")
        armed = k.runs.get("pods")
        await k.at(T0)
        await k.at(T0 + timedelta(seconds=10))
        assert "spot@support" not in units(k, MEDICS)
        reply = await k.runs.release_now(armed, "spot", ["hk/mk"])
        assert "in hk/mk;" in reply
        await k.idle()
        assert "spot@support" in units(k, MEDICS)
        assert all(not u.startswith("spot") for u in units(k, ROOM["cw"]))


async def test_restart_mid_run_keeps_pods_and_holds(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        k.write(everywhere())
        await join_privately(k)
        await k.arm("pods")
        await k.runs.hold(k.runs.get("pods"), ["hk/tw"])
        await k.runs.redirect(k.runs.get("pods"), "hk/mk", "staging", "MARK-mk-moved", None)
        store, hs = k.store, k.hs
        k.dispatcher.stop()
        # A new process: same database and rooms, nothing in memory.
        async with kit(tmp_path, opted_in=ALL_ROOMS, store=store, hs=hs) as k2:
            await k2.runs.restore()
            await run_all(k2)
            assert units(k2, ROOM["tw"]) == []
            assert "MARK-mk-moved" in bodies(k2, ROOM["mk"])[0]
            assert units(k2, DM[("cw", "front")]) == ["gather@default", "spot@front", "disperse"]
            assert any("hk/cw" in n for n in k2.hs.notices() if n) and CONTROL


# -- a crew: check-ins shared for a pod's gate ---------------------------------------------


async def test_crew_shares_count_for_a_pods_plain_gate(tmp_path: Path) -> None:
    """Check-ins are recorded per city; a pod's release shares and counts its
    city's (a gate without ``per`` counts the whole city): this member's P1 and
    the other member's shared P2 make the quorum of 2."""
    from test_runs_duty import BOT, OTHER, FakeCrew

    from bot.crew.shares import CHECKINS_KEY, share_contents

    room = "!p1:fake"
    data: dict[str, Any] = {
        "version": 1,
        "id": "cp",
        "title": "cp",
        "start": T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "failover": {"grace": "5s"},
        "cities": [
            {
                "id": "town",
                "name": "Town",
                "timezone": "Europe/Berlin",
                "crew": [BOT, OTHER],
                "pods": [{"id": "p1", "rooms": [room]}],
            }
        ],
        "stages": [
            {"id": "call", "at": "0s", "text": "call"},
            {"id": "go", "at": "+10s", "text": "go", "require": {"checkins": 2, "else": "hold"}},
        ],
    }
    async with kit(tmp_path, opted_in=[room], crew=lambda hs: FakeCrew(hs)) as k:
        k.write(data)
        run = (await k.arm("cp")).run_id
        assert run is not None
        await k.at(T0)
        await k.store.participants.add_checkin(
            run, "town", "call", "@p1:fake", now=T0, via="here", pod_id="p1"
        )
        (body,) = share_contents(k.keys[-1], "town/p1", "call", ["@p2:fake"])
        k.crew.copies[CONTROL] = [
            {
                "type": "m.room.message",
                "event_id": "$share",
                "sender": OTHER,
                "origin_server_ts": 1,
                "content": {"msgtype": "m.notice", "body": "check-ins", CHECKINS_KEY: body},
            }
        ]
        await k.at(T0 + timedelta(seconds=10))
        await k.idle()
        row = await k.store.ledger.dispatch(run, "town/p1", "go")
        assert row is not None and row.state is DispatchState.RELEASED, row


async def test_a_correction_skips_a_role_whose_text_never_named_the_place(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        data = everywhere()
        data["stages"][2]["text"] = {"default": "T-all leave by {home}", "remote": "T-remote rest"}
        data["stages"].append({"id": "after", "at": "+30s", "text": "T-end"})  # still armed
        k.write(data)
        await join_privately(k)
        await k.arm("pods")
        await run_all(k)
        reply = await k.runs.redirect(k.runs.get("pods"), "hk", "home", "MARK-city-newhome", None)
        assert "already revealed by disperse" in reply
        await k.idle()
        for room in (ROOM["mk"], ROOM["tw"], DM[("st", None)], DM[("cw", "front")]):
            fixes = [b for b in bodies(k, room) if "Correction" in b]
            assert len(fixes) == 1 and "MARK-city-newhome" in fixes[0], room
        assert not any("Correction" in b for b in bodies(k, DM[("st", "remote")]))


async def test_one_room_in_two_pods_by_alias_is_refused_at_arm(tmp_path: Path) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS, aliases={"#mk:fake": ROOM["cw"]}) as k:
        data = everywhere()
        data["cities"][0]["pods"][0]["rooms"][0] = "#mk:fake"  # is causeway's room
        k.write(data)
        with pytest.raises(
            ArmError,
            match=r"listed in hk/mk \(as #mk:fake\) and hk/cw .*"
            r"more than one pod's places\. List it in one pod only",
        ):
            await k.arm("pods")
        assert not k.runs.armed and k.hs.events == []


async def test_delay_the_city_moves_every_pod_and_a_pods_own_comes_on_top(
    tmp_path: Path,
) -> None:
    async with kit(tmp_path, opted_in=ALL_ROOMS) as k:
        data = everywhere()
        data["stages"][0]["text"]["default"] = "T-default by {time:0s} at {staging}"
        k.write(data)
        await k.arm("pods")
        armed = k.runs.get("pods")
        await k.runs.delay(armed, ["hk"], timedelta(minutes=1))
        await k.runs.delay(armed, ["hk/st"], timedelta(minutes=1))
        rows = {
            (d.city_id, d.stage_id): d.due_at for d in await k.store.ledger.dispatches(armed.run.id)
        }
        assert rows[("hk/mk", "gather@default")] == T0 + timedelta(minutes=1)
        assert rows[("hk/st", "gather@default")] == T0 + timedelta(minutes=2)
        await k.at(T0 + timedelta(minutes=1))
        assert units(k, ROOM["st"]) == [] and units(k, ROOM["mk"]) == ["gather@default"]
        assert "by 20:01" in bodies(k, ROOM["mk"])[0]  # Hong Kong time, moved with it
        await k.at(T0 + timedelta(minutes=2))
        assert "by 20:02" in bodies(k, ROOM["st"])[0]


# -- the dead-man's switch: delayed events per lane and unit --------------------------------


async def test_failsafe_schedules_each_room_only_its_pods_and_roles_dispatches(
    tmp_path: Path,
) -> None:
    from test_failsafe_wiring import FakeDelayed, seal, switched

    async with kit(tmp_path, opted_in=ALL_ROOMS, now=T0 - timedelta(minutes=10)) as k:
        server = FakeDelayed()
        k.runs.attach_failsafe(server, seal)  # type: ignore[arg-type]
        k.write(switched(everywhere()))
        await join_privately(k)
        out = await k.arm("pods")
        assert out.run_id is not None, out.text
        held: dict[str, list[dict[str, Any]]] = {}
        for room, content, _ in server.held.values():
            held.setdefault(room, []).append(content)
        for pod, room in ROOM.items():
            stages = sorted({c["org.blossom.dispatch"]["stage"] for c in held[room]})
            assert stages == ["disperse", "gather@default"], (room, stages)
            seen = {m for c in held[room] for m in re.findall(r"MARK-(\w+)-", str(c))}
            assert seen <= {pod, "city"}, (room, seen)
        assert {c["org.blossom.dispatch"]["stage"] for c in held[MEDICS]} == {
            "gather@support",
            "spot@support",
            "disperse",
        }
        front = held[DM[("cw", "front")]]
        assert {c["org.blossom.dispatch"]["city"] for c in front} == {"hk/cw"}
        assert any("T-front now MARK-cw-spot" in str(c) for c in front)
        assert "spot@front" not in {
            c["org.blossom.dispatch"]["stage"] for c in held[DM[("st", None)]]
        }
        # A hold of one pod cancels that pod's delayed events only.
        await k.runs.hold(k.runs.get("pods"), ["hk/cw"])
        assert not any(r in server.rooms() for r in (ROOM["cw"], *DM.values()) if "cw" in r)
        assert ROOM["mk"] in server.rooms() and ROOM["tw"] in server.rooms()
