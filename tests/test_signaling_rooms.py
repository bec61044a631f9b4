"""Ad-hoc rooms and membership: creation on connect, unique names, the participant cap,
duplicate identities, ending with the last participant, and participants that vanish."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from sfu.room import RoomSettings
from signaling.client import SignalingError, connect

from .conftest import Server, wait_for
from .helpers.clients import Clients, EventLog, about, local_track, subscribed_media

REPO = Path(__file__).resolve().parent.parent


def sid_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(prefix + "[0-9a-f]{32}")


async def test_connecting_to_a_new_name_creates_a_group_room(server: Server, clients: Clients) -> None:
    assert server.registry.find_in_progress("adhoc") is None
    alice = await clients.join("alice", "adhoc", publish="v")
    assert sid_pattern("RM").fullmatch(alice.sid), alice.sid
    assert (alice.name, alice.type) == ("adhoc", "group")
    assert sid_pattern("PA").fullmatch(alice.local_participant.sid)
    cam = local_track(alice, "cam")
    await wait_for(lambda: cam.sid, message="alice's cam to get its SID")
    assert cam.sid is not None and sid_pattern("MT").fullmatch(cam.sid)
    room = server.registry.find_in_progress("adhoc")
    assert room is not None and room.sid == alice.sid and room.settings.type == "group"


async def test_a_name_is_one_room_while_in_progress(server: Server, clients: Clients) -> None:
    joined = await asyncio.gather(*(clients.join(name, "shared", publish="") for name in ("alice", "bob", "carol")))
    assert len({room.sid for room in joined}) == 1
    assert [r.unique_name for r in server.registry.rooms.values()] == ["shared"]
    other = await clients.join("dave", "other", publish="")
    assert other.sid != joined[0].sid


async def test_max_participants_is_enforced_with_53105(server: Server, clients: Clients) -> None:
    server.registry.create_room("small", RoomSettings(max_participants=2))
    alice = await clients.join("alice", "small", publish="v")
    bob = await clients.join("bob", "small", publish="")
    await subscribed_media(bob, "alice", "cam")
    events = EventLog(alice)
    with pytest.raises(SignalingError) as info:
        await connect(server.url, server.token("carol"), name="small")
    assert info.value.code == 53105
    room = server.registry.find_in_progress("small")
    assert room is not None and sorted(p.identity for p in room.participants.values()) == ["alice", "bob"]
    # Once someone leaves there is room again.
    await bob.disconnect()
    await events.wait("participant_disconnected", about("bob"))
    carol = await clients.join("carol", "small", publish="")
    assert carol.sid == alice.sid
    await events.wait("participant_connected", about("carol"))


async def test_same_identity_disconnects_the_older_participant_with_53205(clients: Clients) -> None:
    old = await clients.join("alice", "dup", publish="v")
    bob = await clients.join("bob", "dup", publish="")
    await subscribed_media(bob, "alice", "cam")
    old_sid = old.local_participant.sid
    old_events, bob_events = EventLog(old), EventLog(bob)

    new = await clients.join("alice", "dup", publish="v")

    (error,) = await old_events.wait("disconnected")
    assert isinstance(error, SignalingError) and error.code == 53205
    assert old.state == "disconnected"
    (gone,) = await bob_events.wait("participant_disconnected", about("alice"))
    assert gone.sid == old_sid
    assert new.local_participant.sid != old_sid and new.sid == bob.sid
    # The newer one is a full participant: bob receives its video.
    await wait_for(lambda: [p.sid for p in bob.participants.values() if p.identity == "alice"] == [new.local_participant.sid])
    await subscribed_media(bob, "alice", "cam")


async def test_room_ends_with_its_last_participant(server: Server, clients: Clients) -> None:
    alice = await clients.join("alice", "ending", publish="v")
    bob = await clients.join("bob", "ending", publish="")
    first_sid = alice.sid
    await alice.disconnect()
    assert server.registry.find_in_progress("ending") is not None, "the room must outlive its first leaver"
    await bob.disconnect()
    await wait_for(lambda: server.registry.find_in_progress("ending") is None, message="the room to end")
    assert server.registry.get(first_sid) is None
    again = await clients.join("carol", "ending", publish="")
    assert again.sid != first_sid and sid_pattern("RM").fullmatch(again.sid)


async def test_killed_participant_is_removed_and_the_others_told_within_10s(server: Server, clients: Clients) -> None:
    bob = await clients.join("bob", "kill", publish="")
    events = EventLog(bob)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.helpers.peer_process", server.url, server.token("zombie"), "kill",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()
        assert line[:1] == ["connected"], line
        await events.wait("participant_connected", about("zombie"))
        await subscribed_media(bob, "zombie", "cam")
        process.send_signal(signal.SIGKILL)
        killed_at = asyncio.get_running_loop().time()
        mark = events.mark()
        (gone,) = await events.wait("participant_disconnected", about("zombie"), since=mark, timeout=10)
        assert asyncio.get_running_loop().time() - killed_at < 10
        assert gone.sid == line[1]
        room = server.registry.find_in_progress("kill")
        assert room is not None and [p.identity for p in room.participants.values()] == ["bob"]
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_server_option_sizes_rooms_created_on_connect(tmp_path) -> None:
    """`sfu serve --max-participants N` lifts (or lowers) the cap of ad-hoc rooms only."""
    from sfu.credentials import generate
    from sfu.room import RoomSettings
    from sfuserver.app import REGISTRY, ServerConfig, build_app

    registry = build_app(ServerConfig(data_dir=tmp_path, max_participants=500), generate())[REGISTRY]
    assert registry.room_for_connect("big").settings.max_participants == 500
    assert registry.create_room("rest", RoomSettings(created_via_rest=True)).settings.max_participants == 50


async def test_alone_in_a_room_a_participant_replacing_itself_keeps_the_room(server: Server, clients: Clients) -> None:
    """The older participant's removal empties an ad-hoc room for a moment: the room must not
    end under the newer one, which joined while the removal was still settling."""
    old = await clients.join("alice", "solo", publish="")
    old_events = EventLog(old)
    room = server.registry.find_in_progress("solo")
    new = await clients.join("alice", "solo", publish="")
    (error,) = await old_events.wait("disconnected")
    assert isinstance(error, SignalingError) and error.code == 53205
    assert new.sid == room.sid  # type: ignore[union-attr]
    # Whatever was scheduled when the room emptied has run by now: let the loop turn a while.
    for _ in range(50):
        await asyncio.sleep(0)
    assert server.registry.find_in_progress("solo") is room and new.state == "connected"
    assert [p.identity for p in room.participants.values()] == ["alice"]  # type: ignore[union-attr]
