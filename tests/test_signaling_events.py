"""What one participant does reaches the others as events: unpublish, leave, mute, publish."""

from __future__ import annotations

from signaling.client import LocalVideoTrack

from .helpers.clients import Clients, EventLog, VideoReader, about, local_track, subscribed, subscribed_media
from .media import CounterVideoTrack


async def test_unpublish_reaches_the_others_as_unpublished_and_unsubscribed(clients: Clients) -> None:
    alice = await clients.join("alice", publish="va")
    bob = await clients.join("bob", publish="")
    await subscribed_media(bob, "alice", "cam")
    await subscribed_media(bob, "alice", "mic")
    events = EventLog(bob)

    await alice.local_participant.unpublish_track(local_track(alice, "cam"))

    track, publication, _ = await events.wait("track_unsubscribed", about("alice", "cam"))
    await events.wait("track_unpublished", about("alice", "cam"))
    assert publication.track is None and track.kind == "video"
    publisher = next(p for p in bob.participants.values() if p.identity == "alice")
    assert [pub.track_name for pub in publisher.tracks.values()] == ["mic"]
    assert events.find("track_unpublished", about("alice", "mic")) is None
    assert events.find("participant_disconnected") is None


async def test_leaving_reaches_the_others_as_participant_disconnected(clients: Clients) -> None:
    alice = await clients.join("alice", publish="vad")
    bob = await clients.join("bob", publish="")
    for name in ("cam", "mic", "chat"):
        await subscribed(bob, "alice", name)
    events = EventLog(bob)

    await alice.disconnect()

    (participant,) = await events.wait("participant_disconnected", about("alice"))
    assert participant.state == "disconnected"
    assert not any(p.identity == "alice" for p in bob.participants.values())
    # Its tracks went with it: unsubscribed and unpublished, each of the three.
    for name in ("cam", "mic", "chat"):
        await events.wait("track_unpublished", about("alice", name))
    assert {args[1].track_name for name, args in events.events if name == "track_unsubscribed"} == {"cam", "mic", "chat"}


async def test_mute_and_unmute_reach_the_others_as_disabled_and_enabled(clients: Clients) -> None:
    alice = await clients.join("alice", publish="va")
    bob = await clients.join("bob", publish="")
    video = await subscribed_media(bob, "alice", "cam")
    events = EventLog(bob)
    cam = local_track(alice, "cam")

    cam.disable()
    publication, _ = await events.wait("track_disabled", about("alice", "cam"))
    assert publication.enabled is False and video.enabled is False
    mark = events.mark()
    cam.enable()
    publication, _ = await events.wait("track_enabled", about("alice", "cam"), since=mark)
    assert publication.enabled is True and video.enabled is True
    # Only the muted track changed; muting does not unsubscribe.
    assert set(events.names()) == {"track_disabled", "track_enabled"}


async def test_publishing_mid_call_renegotiates_and_the_others_receive_it(clients: Clients) -> None:
    alice = await clients.join("alice", publish="a")
    bob = await clients.join("bob", publish="")
    await subscribed_media(bob, "alice", "mic")
    events = EventLog(bob)
    offers_before = alice.offers_answered

    screen = LocalVideoTrack(CounterVideoTrack(), "screen")
    published = await alice.local_participant.publish_track(screen)
    assert published.sid is not None and published.sid.startswith("MT")
    assert alice.offers_answered > offers_before

    publication, _ = await events.wait("track_published", about("alice", "screen"))
    assert publication.track_sid == screen.sid
    await events.wait("track_subscribed", about("alice", "screen"))
    reader = VideoReader(await subscribed_media(bob, "alice", "screen"))
    clients.readers.append(reader)
    await reader.advance(10)
