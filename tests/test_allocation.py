"""Track switch-off and priorities with Python clients (issue 12): a switched-off track
reaches the subscriber no more and resumes at a keyframe; under a bandwidth cap the lowest
priority gives way; the protocol refuses bad profiles and hints."""

from __future__ import annotations

import asyncio
import json

import pytest

from sfu.media.codecs import vp8
from sfu.media.consumer import Consumer
from sfu.media.producer import Producer
from signaling.client import LocalVideoTrack, SignalingError, connect

from .conftest import wait_for
from .helpers.clients import subscribed_media
from .media import CounterVideoTrack
from .test_metrics import scrape, value


def live_participant(server, identity: str):
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            if p.identity == identity:
                return p
    raise AssertionError(f"{identity} is not in a room")


def producer_of(server, identity: str) -> Producer:
    source = next(t.source for t in live_participant(server, identity).published.values() if t.kind == "video")
    assert isinstance(source, Producer)
    return source


def consumer_of(server, subscriber: str, publisher: str) -> Consumer:
    p = live_participant(server, subscriber)
    sink = next(s.sink for s in p.subscriptions.values() if s.track.kind == "video" and s.track.publisher.identity == publisher)
    assert isinstance(sink, Consumer)
    return sink


def camera(priority: str = "standard") -> LocalVideoTrack:
    track = LocalVideoTrack(CounterVideoTrack(), "cam")
    track.priority = priority
    return track


async def test_switch_off_stops_the_packets_and_switch_on_resumes_at_a_keyframe(server) -> None:
    alice = await connect(server.url, server.token("alice"), name="off", tracks=[camera()])
    bob = await connect(
        server.url, server.token("bob"), name="off", receive="packets",
        bandwidth_profile={"video": {"client_track_switch_off_control": "manual"}},
    )  # fmt: skip
    try:
        track = await subscribed_media(bob, "alice", "cam")
        await wait_for(lambda: track.packets_received > 30, message="bob receives alice's video")
        events: list[tuple[str, object]] = []
        track.on("switched_off", lambda reason: events.append(("off", reason)))
        track.on("switched_on", lambda: events.append(("on", None)))
        producer, consumer = producer_of(server, "alice"), consumer_of(server, "bob", "alice")
        router = live_participant(server, "bob").transport.router

        track.switch_off()
        await wait_for(lambda: events == [("off", "disabled-by-subscriber")], message="switchedOff reaches bob")
        assert track.is_switched_off and track.switch_off_reason == "disabled-by-subscriber"
        assert consumer not in router.forwarding(producer), "a switched-off track must leave the fan-out"
        assert value(await scrape(server), "sfu_video_tracks_switched_off") == 1
        # Nothing more arrives while alice goes on sending (after what was in flight).
        start = producer.stats.packets
        await wait_for(lambda: producer.stats.packets > start + 10, message="alice goes on sending")
        received = track.packets_received
        sent = consumer.stats.packets
        await wait_for(lambda: producer.stats.packets > start + 60, message="alice goes on sending")
        assert track.packets_received == received and consumer.stats.packets == sent

        last = None
        while not track._packets.empty():
            last = track._packets.get_nowait()
        after: list = []
        track.on("packet", after.append)
        track.switch_on()
        await wait_for(lambda: events[-1:] == [("on", None)] and len(after) > 5, message="switchedOn and packets again")
        assert not track.is_switched_off and track.switch_off_reason is None
        assert value(await scrape(server), "sfu_video_tracks_switched_off") == 0
        assert vp8.is_keyframe_start(after[0].payload), "a switched-on track must resume at a keyframe"
        if last is not None:  # no sequence gap for what bob never got
            assert (after[0].sequence_number - last.sequence_number) & 0xFFFF == 1
    finally:
        await bob.disconnect()
        await alice.disconnect()


async def test_under_a_bitrate_cap_the_lowest_priority_track_is_switched_off(server) -> None:
    high = await connect(server.url, server.token("high"), name="prio", tracks=[camera("high")])
    low = await connect(server.url, server.token("low"), name="prio", tracks=[camera("low")])
    rooms = [high, low]
    try:
        # What one of these cameras sends (the cap below holds one track, not two).
        producer = await wait_for(lambda: producer_of(server, "high") if live_participant(server, "high").published else None)
        await wait_for(lambda: producer.stats.packets > 30, message="high's video flowing")
        loop = asyncio.get_running_loop()
        octets, began = producer.stats.octets, loop.time()
        await wait_for(lambda: producer.stats.packets > 150, message="high's video for a while")
        rate = (producer.stats.octets - octets) * 8 / (loop.time() - began)
        cap = int(rate * 1.6)
        bob = await connect(
            server.url, server.token("bob"), name="prio", receive="packets",
            bandwidth_profile={"video": {"mode": "presentation", "max_subscription_bitrate": cap}},
        )  # fmt: skip
        rooms.append(bob)
        high_track = await subscribed_media(bob, "high", "cam")
        low_track = await subscribed_media(bob, "low", "cam")
        await wait_for(
            lambda: low_track.is_switched_off and not high_track.is_switched_off,
            message=f"the low-priority track switched off under a cap of {cap} bps",
        )
        assert low_track.switch_off_reason == "max-bandwidth-reached"
        seen = high_track.packets_received
        await wait_for(lambda: high_track.packets_received > seen + 30, message="the high-priority track flows on")
        # The subscriber gives the low track its own high priority: now it is the other that gives way.
        low_track.set_priority("high")
        high_track.set_priority("low")
        await wait_for(lambda: high_track.is_switched_off and not low_track.is_switched_off, message="priorities swapped")
    finally:
        for room in reversed(rooms):
            await room.disconnect()


async def test_the_publishers_priority_reaches_subscribers_and_the_media_plane(server) -> None:
    cam = camera("low")
    alice = await connect(server.url, server.token("alice"), name="pub", tracks=[cam])
    bob = await connect(server.url, server.token("bob"), name="pub", receive="packets")
    try:
        await subscribed_media(bob, "alice", "cam")
        consumer = consumer_of(server, "bob", "alice")
        assert consumer.priority == "low"
        cam.set_priority("high")
        await wait_for(lambda: consumer.priority == "high", message="setPriority reaches the subscription")
        pub = next(iter(next(iter(bob.participants.values())).tracks.values()))
        assert pub.track_sid == cam.sid
    finally:
        await bob.disconnect()
        await alice.disconnect()


@pytest.mark.parametrize(
    "profile",
    [
        "fast",
        {"video": {"mode": "theatre"}},
        {"video": {"max_subscription_bitrate": -1}},
        {"video": {"max_subscription_bitrate": True}},
        {"video": {"dominant_speaker_priority": "urgent"}},
        {"video": {"client_track_switch_off_control": 1}},
        {"video": []},
    ],
)
async def test_a_malformed_bandwidth_profile_refuses_the_connect(server, profile) -> None:
    with pytest.raises(SignalingError) as refused:
        await connect(server.url, server.token("alice"), name="bad", bandwidth_profile=profile)
    assert refused.value.code == 53000


@pytest.mark.parametrize(
    "hints",
    [
        {"sid": "MT1"},
        [{"sid": 5}],
        [{"sid": "MT1", "render_dimensions": {"width": -1, "height": 10}}],
        [{"sid": "MT1", "render_dimensions": {"width": "wide", "height": 10}}],
        [{"sid": "MT1", "switched_off": "yes"}],
        [{"sid": "MT1", "priority": "urgent"}],
        [{"sid": "MT1"}] * 65,
    ],
)
async def test_malformed_track_hints_get_a_protocol_error(server, hints) -> None:
    alice = await connect(server.url, server.token("alice"), name="hints")
    try:
        got: list[SignalingError] = []
        alice.on("error", got.append)
        await alice.send_raw(json.dumps({"type": "update", "version": 1, "track_hints": hints}))
        await wait_for(lambda: got, message="an error for the bad hints")
        assert got[0].code == 53000
        # The session goes on: a good (if pointless) hint is accepted silently.
        await alice.send_raw(json.dumps({"type": "update", "version": 1, "track_hints": [{"sid": "MT1", "switched_off": True}]}))
        await alice.set_subscribe_rules([{"type": "include", "all": True}])
        assert len(got) == 1
    finally:
        await alice.disconnect()


async def test_a_bad_publish_priority_is_refused_and_publishes_nothing(server) -> None:
    alice = await connect(server.url, server.token("alice"), name="badprio")
    try:
        got: list[SignalingError] = []
        alice.on("error", got.append)
        track = {"id": "cam-1", "kind": "video", "name": "cam", "priority": "urgent"}
        await alice.send_raw(json.dumps({"type": "update", "version": 1, "participant": {"tracks": [track]}}))
        await wait_for(lambda: got, message="an error for the bad priority")
        assert got[0].code == 53000 and not live_participant(server, "alice").published
    finally:
        await alice.disconnect()


async def test_render_dimensions_choose_the_simulcast_layer(server) -> None:
    from signaling.client import LocalSimulcastVideoTrack

    from .test_simulcast import Frames, ScaledVideoTrack, Two

    source = Two()
    cam = LocalSimulcastVideoTrack([source.layer(0), ScaledVideoTrack(source.layer(1), 640, 480)], "cam")
    alice = await connect(server.url, server.token("alice"), name="layers", tracks=[cam])
    bob = await connect(server.url, server.token("bob"), name="layers", bandwidth_profile={"video": {"content_preferences_mode": "manual"}})
    reader = None
    try:
        track = await subscribed_media(bob, "alice", "cam")
        reader = Frames(track)
        consumer = consumer_of(server, "bob", "alice")
        await reader.wait_width(640)  # no hint: the top layer
        track.set_content_preferences((160, 120))
        await wait_for(lambda: consumer.target_layer == 0, message="a small tile gets the low layer")
        await reader.wait_width(320)
        track.set_content_preferences((1280, 720))
        await wait_for(lambda: consumer.target_layer == 1, message="a large one the high layer again")
        await reader.wait_width(640)
    finally:
        if reader is not None:
            reader.close()
        await bob.disconnect()
        await alice.disconnect()
