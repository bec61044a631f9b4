"""Participants, PublishedTracks, SubscribedTracks, SubscribeRules and RecordingRules over REST,
with Python client participants sending and receiving real media in the room."""

from __future__ import annotations

import json

import pytest
from twilio.base.exceptions import TwilioRestException

from sfu.media.producer import Producer
from signaling.client import LocalVideoTrack, SignalingError

from .conftest import wait_for
from .helpers.clients import Clients, EventLog, RawSocket, about, connect_message, local_track, read_audio, subscribed_media
from .media import CounterVideoTrack
from .rest_support import RestServer, call, raw, rest_clients, rest_server, until  # noqa: F401


async def rest_error(fn, *args, **kwargs) -> TwilioRestException:  # type: ignore[no-untyped-def]
    with pytest.raises(TwilioRestException) as caught:
        await call(fn, *args, **kwargs)
    return caught.value


async def test_participants_tracks_and_kick(rest_server: RestServer, rest_clients: Clients) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="call")
    alice = await rest_clients.join("alice", "call", publish="va")
    bob = await rest_clients.join("bob", "call", publish="")
    bob_log = EventLog(bob)
    participants = rooms(room.sid).participants

    listed = await call(participants.list)
    assert {p.identity for p in listed} == {"alice", "bob"} and {p.status for p in listed} == {"connected"}
    (alice_rest,) = await call(participants.list, identity="alice")
    assert alice_rest.sid == alice.local_participant.sid and alice_rest.room_sid == room.sid
    assert alice_rest.start_time == rest_server.clock.now() and alice_rest.end_time is None and alice_rest.duration is None
    assert (await call(participants("alice").fetch)).sid == alice_rest.sid  # identity works while connected
    assert alice_rest.url == f"{rest_server.http}/v1/Rooms/{room.sid}/Participants/{alice_rest.sid}"

    published = await until(
        participants(alice_rest.sid).published_tracks.list, lambda ts: len(ts) == 2, "alice's two published tracks"
    )
    by_name = {t.name: t for t in published}
    assert (by_name["cam"].kind, by_name["mic"].kind) == ("video", "audio")
    mic = await call(participants(alice_rest.sid).published_tracks(by_name["mic"].sid).fetch)
    assert mic.enabled is True and mic.participant_sid == alice_rest.sid

    local_track(alice, "mic").disable()
    await until(
        participants(alice_rest.sid).published_tracks(by_name["mic"].sid).fetch, lambda t: t.enabled is False, "mic disabled"
    )

    bob_sid = bob.local_participant.sid
    subs = await until(participants(bob_sid).subscribed_tracks.list, lambda ts: len(ts) == 2, "bob's subscriptions")
    assert {(t.name, t.kind, t.publisher_sid, t.participant_sid) for t in subs} == {
        ("cam", "video", alice_rest.sid, bob_sid),
        ("mic", "audio", alice_rest.sid, bob_sid),
    }
    cam = await call(participants(bob_sid).subscribed_tracks(by_name["cam"].sid).fetch)
    assert cam.name == "cam" and cam.room_sid == room.sid
    assert await call(participants(alice_rest.sid).subscribed_tracks.list) == []

    kicked = await call(participants(bob_sid).update, status="disconnected")
    assert kicked.status == "disconnected" and kicked.end_time is not None and kicked.duration == 0
    await bob_log.wait("disconnected")
    assert [p.identity for p in await call(participants.list)] == ["alice"]  # in-progress room: connected only
    assert [p.identity for p in await call(participants.list, status="disconnected")] == ["bob"]
    error = await rest_error(participants(bob_sid).update, status="disconnected")
    assert (error.status, error.code) == (400, 53204)
    error = await rest_error(participants("bob").fetch)
    assert (error.status, error.code) == (404, 20404)
    assert await call(participants(bob_sid).subscribed_tracks.list) == []
    await wait_for(lambda: alice.participants == {}, message="alice sees bob leave")


async def test_subscribe_rules_change_the_media_a_participant_receives(rest_server: RestServer, rest_clients: Clients) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="rules")
    await rest_clients.join("alice", "rules", publish="va")
    bob = await rest_clients.join("bob", "rules", publish="")
    log = EventLog(bob)
    video = await rest_clients.watch(bob, "alice", "cam")
    await video.advance(10)
    audio = await subscribed_media(bob, "alice", "mic")
    rules = rooms(room.sid).participants(bob.local_participant.sid).subscribe_rules
    assert (await call(rules.fetch)).rules == [{"type": "include", "all": True}]

    mark = log.mark()
    updated = await call(rules.update, rules=[{"type": "include", "kind": "audio"}])
    assert updated.rules == [{"type": "include", "kind": "audio"}]
    subs = rooms(room.sid).participants(bob.local_participant.sid).subscribed_tracks
    assert [t.name for t in await call(subs.list)] == ["mic"]  # routing changed before the answer
    await log.wait("track_unsubscribed", about("alice", "cam"), since=mark)
    frames = len(video.frames)
    await read_audio(audio, 25)  # half a second of audio still arrives...
    assert len(video.frames) <= frames + 2  # ...but no more video (a frame may have been in flight)

    mark = log.mark()
    await call(rules.update, rules=[{"type": "include", "all": True}, {"type": "exclude", "kind": "audio"}])
    await log.wait("track_subscribed", about("alice", "cam"), since=mark)
    await log.wait("track_unsubscribed", about("alice", "mic"), since=mark)
    again = await rest_clients.watch(bob, "alice", "cam")
    await again.advance(10)  # the video is back, decodable, counters increasing

    current = (await call(rules.fetch)).rules
    for bad in ("[{", "[]", json.dumps([{"type": "include"}]), json.dumps([{"type": "include", "all": True, "colour": 1}]), "{}"):
        status, body = await raw(rest_server.http, rest_server.credentials, "POST",
                                 f"/v1/Rooms/{room.sid}/Participants/{bob.local_participant.sid}/SubscribeRules", data={"Rules": bad})  # fmt: skip
        assert (status, body["code"]) == (400, 53215), bad
    assert (await call(rules.fetch)).rules == current


async def test_recording_rules_are_validated_and_stored(rest_server: RestServer) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create)
    recording = rooms(room.sid).recording_rules
    assert (await call(recording.fetch)).rules == []
    updated = await call(recording.update, rules=[{"type": "include", "kind": "audio"}])
    assert updated.rules == [{"type": "include", "kind": "audio"}] and updated.room_sid == room.sid
    assert (await call(recording.fetch)).rules == [{"type": "include", "kind": "audio"}]
    path = f"/v1/Rooms/{room.sid}/RecordingRules"
    for bad in ("[{", "[]", json.dumps([{"type": "include", "kind": "data"}]), json.dumps([{"type": "include", "all": True, "priority": "high"}])):
        status, body = await raw(rest_server.http, rest_server.credentials, "POST", path, data={"Rules": bad})
        assert (status, body["code"]) == (400, 53120), bad
    assert (await call(recording.fetch)).rules == [{"type": "include", "kind": "audio"}]
    on_connect = await call(rooms.create, record_participants_on_connect=True)
    assert (await call(rooms(on_connect.sid).recording_rules.fetch)).rules == [{"type": "include", "all": True}]
    await call(rooms(room.sid).update, status="completed")
    error = await rest_error(recording.update, rules=[{"type": "include", "all": True}])
    assert (error.status, error.code) == (400, 53118)
    assert (await call(recording.fetch)).rules == [{"type": "include", "kind": "audio"}]


async def test_room_settings_are_enforced_on_the_media_side(rest_server: RestServer, rest_clients: Clients) -> None:
    rooms = rest_server.client().video.v1.rooms
    await call(rooms.create, unique_name="pair", max_participants=2)
    await rest_clients.join("a", "pair", publish="")
    await rest_clients.join("b", "pair", publish="")
    third = await RawSocket.open(rest_server)  # type: ignore[arg-type]
    try:
        await third.send(connect_message(rest_server.token("c"), name="pair"))
        assert (await third.receive_type("error"))["code"] == 53105
    finally:
        await third.close()

    await call(rooms.create, unique_name="radio", audio_only=True)
    speaker = await rest_clients.join("speaker", "radio", publish="a")
    with pytest.raises(SignalingError) as refused:
        await speaker.local_participant.publish_track(LocalVideoTrack(CounterVideoTrack(), "cam"))
    assert refused.value.code == 53125

    h264_room = await call(rooms.create, unique_name="h264", video_codecs=["H264"])
    await rest_clients.join("sender", "h264", publish="v")
    viewer = await rest_clients.join("viewer", "h264", publish="")
    await (await rest_clients.watch(viewer, "sender", "cam")).advance(10)
    live = rest_server.registry.get(h264_room.sid)
    assert live is not None
    (sender,) = [p for p in live.participants.values() if p.identity == "sender"]
    (track,) = sender.published.values()
    assert isinstance(track.source, Producer) and {c.mime_type.lower() for c in track.source.codecs.values()} == {"video/h264"}
