"""Room and participant lifetimes on a manual clock: unused and empty room timeouts, ad-hoc rooms,
MaxParticipantDuration and the 24-hour cap; end_time and duration are filled when a room ends."""

from __future__ import annotations

from datetime import timedelta

from .helpers.clients import Clients, EventLog
from .rest_support import RestServer, call, rest_clients, rest_server, until  # noqa: F401


def completed(room: object) -> bool:
    return getattr(room, "status", None) == "completed"


async def test_a_rest_room_nobody_joins_ends_after_unused_room_timeout(rest_server: RestServer) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="lonely", unused_room_timeout=2)
    rest_server.clock.advance(119)
    assert (await call(rooms(room.sid).fetch)).status == "in-progress"
    rest_server.clock.advance(1)
    ended = await until(rooms(room.sid).fetch, completed, "the unused room to end")
    assert ended.duration == 120 and ended.end_time == room.date_created + timedelta(seconds=120)


async def test_a_rest_room_ends_empty_room_timeout_after_its_last_participant_left(rest_server: RestServer, rest_clients: Clients) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="standup", empty_room_timeout=3, unused_room_timeout=1)
    alice = await rest_clients.join("alice", "standup", publish="")
    rest_server.clock.advance(100)  # past the unused timeout: someone joined, so it no longer applies
    await alice.disconnect()
    participants = rooms(room.sid).participants
    (left,) = await until(lambda: participants.list(status="disconnected"), lambda ps: len(ps) == 1, "alice to leave")
    assert left.duration == 100
    rest_server.clock.advance(179)
    assert (await call(rooms(room.sid).fetch)).status == "in-progress"
    again = await rest_clients.join("alice", "standup", publish="")  # rejoining cancels the timeout
    rest_server.clock.advance(600)
    assert (await call(rooms(room.sid).fetch)).status == "in-progress"
    await again.disconnect()
    await until(lambda: participants.list(status="connected"), lambda ps: ps == [], "alice to leave again")
    rest_server.clock.advance(180)
    ended = await until(rooms(room.sid).fetch, completed, "the empty room to end")
    assert ended.duration == 100 + 179 + 600 + 180


async def test_an_ad_hoc_room_ends_as_soon_as_its_last_participant_leaves(rest_server: RestServer, rest_clients: Clients) -> None:
    rooms = rest_server.client().video.v1.rooms
    bob = await rest_clients.join("bob", "hallway", publish="")
    room = await call(rooms("hallway").fetch)
    assert room.status == "in-progress" and room.unique_name == "hallway" and room.type == "group"
    rest_server.clock.advance(42)
    await bob.disconnect()
    ended = await until(rooms(room.sid).fetch, completed, "the ad-hoc room to end")
    assert ended.duration == 42 and ended.end_time is not None


async def test_max_participant_duration_disconnects_the_participant(rest_server: RestServer, rest_clients: Clients) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="short", max_participant_duration=600)
    alice = await rest_clients.join("alice", "short", publish="")
    log = EventLog(alice)
    rest_server.clock.advance(599)
    assert [p.status for p in await call(rooms(room.sid).participants.list)] == ["connected"]
    rest_server.clock.advance(1)
    (error,) = await log.wait("disconnected")
    assert error is not None and error.code == 53216
    (gone,) = await until(lambda: rooms(room.sid).participants.list(status="disconnected"), lambda ps: len(ps) == 1, "kick")
    assert gone.duration == 600


async def test_a_room_lives_at_most_24_hours(rest_server: RestServer, rest_clients: Clients) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="marathon", max_participant_duration=86400)
    rest_server.clock.advance(10)
    alice = await rest_clients.join("alice", "marathon", publish="")
    log = EventLog(alice)
    rest_server.clock.advance(86389)
    assert (await call(rooms(room.sid).fetch)).status == "in-progress"
    rest_server.clock.advance(1)
    ended = await until(rooms(room.sid).fetch, completed, "the 24-hour cap")
    assert ended.duration == 86400
    (error,) = await log.wait("disconnected")
    assert error is not None and error.code == 53118
