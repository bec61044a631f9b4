"""Subscribe rules, at connect and mid-call: what a participant receives follows them."""

from __future__ import annotations

import pytest

from sfu.media.producer import Producer
from signaling.client import SignalingError, connect

from .conftest import Server, wait_for
from .helpers.clients import Clients, EventLog, VideoReader, about, read_audio, remote_track, subscribed_media

AUDIO_ONLY = [{"type": "include", "kind": "audio"}]
EVERYTHING = [{"type": "include", "all": True}]


def server_subscriptions(server: Server, identity: str) -> dict[str, str]:
    """The subscriber's subscriptions as the SFU holds them: track name -> kind."""
    room = server.registry.find_in_progress("room")
    assert room is not None
    participant = room.find_participant(identity)
    assert participant is not None
    return {sub.track.name: sub.track.kind for sub in participant.subscriptions.values()}


async def test_switching_to_audio_only_and_back_mid_call(server: Server, clients: Clients) -> None:
    await clients.join("alice", publish="va")
    bob = await clients.join("bob", publish="")
    video_reader = await clients.watch(bob, "alice", "cam")
    audio = await subscribed_media(bob, "alice", "mic")
    await video_reader.advance(5)
    room = server.registry.find_in_progress("room")
    assert room is not None
    alice_on_server, bob_on_server = room.find_participant("alice"), room.find_participant("bob")
    assert alice_on_server is not None and bob_on_server is not None
    video = next(t for t in alice_on_server.published.values() if t.kind == "video")
    mic = next(t for t in alice_on_server.published.values() if t.kind == "audio")
    consumer = bob_on_server.subscriptions[video.sid].sink
    assert consumer is not None and isinstance(video.source, Producer)
    events = EventLog(bob)

    assert await bob.set_subscribe_rules(AUDIO_ONLY) == AUDIO_ONLY
    track, publication, _ = await events.wait("track_unsubscribed", about("alice", "cam"))
    assert track.kind == "video" and publication.track is None
    assert server_subscriptions(server, "bob") == {"mic": "audio"}
    assert remote_track(bob, "alice", "mic") is audio
    # The SFU stops sending the video while the audio goes on (a second of it).
    audio_consumer = bob_on_server.subscriptions[mic.sid].sink
    assert audio_consumer is not None
    sent, audio_sent = consumer.stats.packets, audio_consumer.stats.packets
    await wait_for(lambda: audio_consumer.stats.packets >= audio_sent + 50, message="50 more audio packets to bob")
    assert consumer.stats.packets == sent, "video packets still sent after unsubscribing"
    await read_audio(audio, 10)
    assert consumer not in server.registry.plane.router(room.sid).consumers(video.source)  # type: ignore[attr-defined]
    assert events.find("track_unsubscribed", about("alice", "mic")) is None

    mark = events.mark()
    assert await bob.set_subscribe_rules(EVERYTHING) == EVERYTHING
    await events.wait("track_subscribed", about("alice", "cam"), since=mark)
    again = VideoReader(await subscribed_media(bob, "alice", "cam"))
    clients.readers.append(again)
    counters = await again.advance(10)
    assert counters[0] > video_reader.counters[-1], "re-subscribed video must be live, not stale"
    assert server_subscriptions(server, "bob") == {"mic": "audio", "cam": "video"}


@pytest.mark.parametrize(
    "rules",
    [
        [],
        "all",
        [{"type": "include"}],
        [{"type": "maybe", "all": True}],
        [{"type": "include", "kind": "smell"}],
        [{"type": "include", "all": True, "kind": "audio"}],
        [{"type": "include", "publisher": ""}],
        [{"type": "include", "color": "red"}],
        [{"type": "include", "all": True}] * 21,
    ],
    ids=["empty", "not a list", "no filter", "bad type", "bad kind", "all with filter", "empty publisher", "unknown filter", "too many"],
)
async def test_invalid_rules_are_refused_with_53215_and_change_nothing(server: Server, clients: Clients, rules: object) -> None:
    await clients.join("alice", publish="va")
    bob = await clients.join("bob", publish="")
    reader = await clients.watch(bob, "alice", "cam")
    await subscribed_media(bob, "alice", "mic")
    with pytest.raises(SignalingError) as info:
        await bob.set_subscribe_rules(rules)  # type: ignore[arg-type]
    assert info.value.code == 53215
    assert bob.state == "connected"
    assert server_subscriptions(server, "bob") == {"cam": "video", "mic": "audio"}
    await reader.advance(5)


async def test_rules_given_at_connect_are_honoured(server: Server, clients: Clients) -> None:
    await clients.join("alice", publish="va")
    bob = await clients.join("bob", publish="", rules=AUDIO_ONLY)
    assert bob.subscribe_rules == AUDIO_ONLY
    audio = await subscribed_media(bob, "alice", "mic")
    await read_audio(audio, 5)
    # alice's video is published to bob but never subscribed.
    alice = next(p for p in bob.participants.values() if p.identity == "alice")
    await wait_for(lambda: len(alice.tracks) == 2, message="bob to know both of alice's tracks")
    assert {pub.track_name: pub.is_subscribed for pub in alice.tracks.values()} == {"cam": False, "mic": True}
    assert server_subscriptions(server, "bob") == {"mic": "audio"}
    # ...until the rules say so.
    await bob.set_subscribe_rules(EVERYTHING)
    reader = VideoReader(await subscribed_media(bob, "alice", "cam"))
    clients.readers.append(reader)
    await reader.advance(5)


async def test_invalid_rules_at_connect_are_refused_with_53215(server: Server) -> None:
    with pytest.raises(SignalingError) as info:
        await connect(server.url, server.token("bob"), name="room", rules=[{"type": "include"}])
    assert info.value.code == 53215
    await wait_for(lambda: server.registry.find_in_progress("room") is None, message="no room for a refused connect")
