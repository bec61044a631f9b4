"""The forwarding path: never decodes, starts at keyframes, answers NACKs, forwards PLIs, H264."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


from sfu.credentials import generate
from aiortc.rtp import RtcpPsfbPacket

from sfu.media.aiortc_hooks import drop_rtcp, drop_rtp, negotiated_codecs
from sfu.media.codecs import vp8
from sfu.media.consumer import Consumer
from sfu.media.producer import Producer
from sfu.room import RoomSettings
from signaling.client import LocalAudioTrack, LocalVideoTrack, RemoteMediaTrack, connect
from signaling.tokens import mint_token

from .conftest import wait_for
from .media import CounterVideoTrack, ToneAudioTrack, read_counters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def subscribed_track(room, name: str) -> RemoteMediaTrack:
    found: dict[str, RemoteMediaTrack] = {}

    def on_subscribed(track, publication, participant) -> None:
        if publication.track_name == name:
            found[name] = track

    room.on("track_subscribed", on_subscribed)
    for p in room.participants.values():
        for pub in p.tracks.values():
            if pub.track_name == name and pub.track is not None:
                found[name] = pub.track  # type: ignore[assignment]
    await wait_for(lambda: name in found, message=f"subscription to {name}")
    return found[name]


def server_consumers(server, identity: str) -> list[Consumer]:
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            if p.identity == identity:
                return [s.sink for s in p.subscriptions.values() if isinstance(s.sink, Consumer)]
    return []


def server_producer(server, identity: str, kind: str) -> Producer:
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            if p.identity == identity:
                for t in p.published.values():
                    if t.kind == kind and isinstance(t.source, Producer):
                        return t.source
    raise AssertionError(f"no {kind} producer for {identity}")


async def test_server_process_never_decodes_or_encodes(tmp_path: Path, netns: None) -> None:
    """A three-way call through a server whose codec entry points are all instrumented."""
    credentials = generate()
    env = dict(os.environ, SFU_ACCOUNT_SID=credentials.account_sid, SFU_AUTH_TOKEN=credentials.auth_token,
               SFU_API_KEY_SID=credentials.api_key_sid, SFU_API_KEY_SECRET=credentials.api_key_secret)
    port = free_port()
    report = tmp_path / "codecs.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.guarded_server", str(report), "--port", str(port), "--data-dir", str(tmp_path)],
        env=env, cwd=Path(__file__).parent.parent,
    )
    url = f"ws://127.0.0.1:{port}/signaling"
    rooms = []
    try:
        async def join(identity: str):
            for _ in range(200):
                try:
                    return await connect(url, mint_token(credentials, identity), name="guarded",
                                         tracks=[LocalVideoTrack(CounterVideoTrack(), f"{identity}-cam"), LocalAudioTrack(ToneAudioTrack(), f"{identity}-mic")])
                except OSError:
                    await asyncio.sleep(0.1)  # the server process is still starting
            raise AssertionError("server did not start")

        rooms = [await join(name) for name in ("alice", "bob", "carol")]
        for room in rooms:
            for other in ("alice", "bob", "carol"):
                if other != room.local_participant.identity:
                    track = await subscribed_track(room, f"{other}-cam")
                    values = await read_counters(track, 5)
                    assert values == sorted(values)
                    audio = await subscribed_track(room, f"{other}-mic")
                    await asyncio.wait_for(audio.recv(), 20)
    finally:
        for room in rooms:
            await room.disconnect()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    used = json.loads(report.read_text())
    assert used == {}, f"the server constructed codecs or decoder threads: {used}"


async def test_subscriber_starts_at_a_keyframe_and_keyframe_requests_reach_the_publisher(server) -> None:
    alice = await connect(server.url, server.token("alice"), name="kf", tracks=[LocalVideoTrack(CounterVideoTrack(), "cam")])
    # Let alice's stream run well past its first keyframe: aiortc's encoder sends the next
    # one only when asked (gop of 3000 frames), so bob can only start at one if a PLI works.
    await wait_for(lambda: server_producer(server, "alice", "video").stats.packets > 60, message="alice's video flowing")
    # Alice ignores keyframe requests for a while, so delta frames keep coming meanwhile:
    # a subscriber started mid-GOP would see them first.
    loop = asyncio.get_running_loop()
    deaf_until = loop.time() + 3600.0
    sender = next(t.sender for t in alice.pc.getTransceivers() if t.sender.track is not None)
    drop_rtcp(sender, lambda packet: isinstance(packet, RtcpPsfbPacket) and loop.time() < deaf_until)
    bob = await connect(server.url, server.token("bob"), name="kf", receive="packets")
    try:
        track = await subscribed_track(bob, "cam")
        consumer = await wait_for(lambda: next(iter(server_consumers(server, "bob")), None), message="bob's consumer")
        await wait_for(lambda: not consumer.paused, message="bob's consumer attached")
        packets_then = server_producer(server, "alice", "video").stats.packets
        await wait_for(lambda: server_producer(server, "alice", "video").stats.packets > packets_then + 20, message="delta frames")
        deaf_until = 0.0  # alice hears the next PLI: the SFU must ask again while bob waits
        first = await asyncio.wait_for(track.recv(), 20)
        assert vp8.is_keyframe_start(first.payload), "the subscriber's stream must begin with a keyframe"

        keyframes = 0

        def count(packet) -> None:
            nonlocal keyframes
            keyframes += vp8.is_keyframe_start(packet.payload)

        track.on("packet", count)
        producer = server_producer(server, "alice", "video")
        sent_before = producer.keyframe_requests_sent
        for _ in range(10):  # a burst of PLIs from the subscriber
            await track.request_keyframe()
        await wait_for(lambda: keyframes >= 1, message="a keyframe after the PLI")
        await asyncio.sleep(0)  # let a deferred PLI (if any) be scheduled
        # Rate limited per published track: a burst becomes at most two upstream PLIs.
        assert 1 <= producer.keyframe_requests_sent - sent_before <= 2
    finally:
        await bob.disconnect()
        await alice.disconnect()


async def test_nacks_are_answered_from_the_retransmission_cache(server) -> None:
    alice = await connect(server.url, server.token("alice"), name="nack", tracks=[LocalVideoTrack(CounterVideoTrack(), "cam")])
    bob = await connect(server.url, server.token("bob"), name="nack")
    try:
        track = await subscribed_track(bob, "cam")
        media_ssrc: list[int] = []
        dropped: set[int] = set()

        def lossy(packet) -> bool:
            if not media_ssrc:
                media_ssrc.append(packet.ssrc)
            if packet.ssrc != media_ssrc[0] or packet.sequence_number % 7 or packet.sequence_number in dropped:
                return False
            dropped.add(packet.sequence_number)  # lose each such packet once: the retransmission gets through
            return True

        drop_rtp(track.transceiver.receiver, lossy)
        values = await read_counters(track, 90)
        assert len(dropped) >= 5, "the test must actually lose packets"
        consumer = next(c for c in server_consumers(server, "bob") if c.kind == "video")
        assert consumer.stats.nacks_received > 0
        assert consumer.stats.retransmitted >= len(dropped) // 2
        # Every frame after the first loss was recovered: the counter has no holes.
        tail = values[30:]
        assert tail == list(range(tail[0], tail[0] + len(tail))), tail
    finally:
        await bob.disconnect()
        await alice.disconnect()


async def test_h264_room_forwards_h264(server) -> None:
    server.registry.create_room("h264", RoomSettings(video_codecs=["H264"]))
    alice = await connect(server.url, server.token("alice"), name="h264", tracks=[LocalVideoTrack(CounterVideoTrack(), "cam")])
    bob = await connect(server.url, server.token("bob"), name="h264")
    try:
        track = await subscribed_track(bob, "cam")
        values = await read_counters(track, 10)
        assert all(b > a for a, b in zip(values, values[1:])), values
        producer = server_producer(server, "alice", "video")
        assert producer.primary_codec is not None and producer.primary_codec.mime_type.lower() == "video/h264"
        codecs = [c.mimeType.lower() for c in negotiated_codecs(track.transceiver)]
        assert "video/h264" in codecs and "video/vp8" not in codecs
    finally:
        await bob.disconnect()
        await alice.disconnect()


async def test_bogus_rtp_and_rtcp_from_a_participant_do_not_disturb_others(server) -> None:
    import random

    import pylibsrtp

    from sfu.media.aiortc_hooks import send_raw_rtp

    alice = await connect(server.url, server.token("alice"), name="bogus", tracks=[LocalVideoTrack(CounterVideoTrack(), "cam")])
    bob = await connect(server.url, server.token("bob"), name="bogus")
    mallory = await connect(server.url, server.token("mallory"), name="bogus", tracks=[LocalVideoTrack(CounterVideoTrack(), "evil")])
    try:
        track = await subscribed_track(bob, "cam")
        before = await read_counters(track, 5)
        await subscribed_track(bob, "evil")
        sender = next(t.sender for t in mallory.pc.getTransceivers() if t.sender.track is not None)
        rng = random.Random(7)
        ssrc = rng.getrandbits(32).to_bytes(4, "big")
        garbage = [
            bytes([0x80, 96]) + bytes(10),  # header only, unknown SSRC
            bytes([0x90, 97, 0, 1, 0, 0, 0, 1]) + ssrc + b"\xbe\xde\xff\xff",  # extension claims 256 KiB
            bytes([0xB0, 97, 0, 2, 0, 0, 0, 2]) + ssrc + bytes(8) + b"\xff",  # padding longer than packet
            bytes([0x8F, 97]) + bytes(10),  # 15 CSRCs that are not there
            bytes([0x81, 205, 0, 100]) + bytes(8),  # RTCP NACK whose length runs past the end
            bytes([0x81, 206, 0, 2]) + bytes(8),  # PLI for an SSRC nobody has
            bytes([0x80, 200, 0xFF, 0xFF]) + bytes(4),  # SR that lies about its length
        ] + [bytes([0x80 | rng.getrandbits(4), rng.getrandbits(8)]) + rng.randbytes(rng.randint(0, 1100)) for _ in range(300)]
        sent = 0
        for data in garbage:
            try:
                await send_raw_rtp(sender, data)
                sent += 1
            except (pylibsrtp.Error, ValueError):
                pass  # too malformed for the sender's own SRTP library to protect
        assert sent >= 250
        after = await read_counters(track, 30)
        assert after[0] > before[-1] and all(b > a for a, b in zip(after, after[1:]))
        assert "mallory" in {p.identity for p in bob.participants.values()}
    finally:
        for room in (mallory, bob, alice):
            await room.disconnect()


async def test_a_late_subscriber_starts_from_the_cached_keyframe_without_waiting_for_the_publisher(tmp_path: Path, netns: None) -> None:
    """Carol joins after the keyframe went by, and the publisher then ignores every PLI: she
    can only see video if the server starts her from the keyframe in its cache."""
    from .conftest import running_server

    # A big cache, so a slow join on a loaded machine cannot push the keyframe out of it.
    async with running_server(tmp_path, retransmission_cache=8192) as (server, _):
        alice = await connect(server.url, server.token("alice"), name="late", tracks=[LocalVideoTrack(CounterVideoTrack(), "cam")])
        bob = await connect(server.url, server.token("bob"), name="late", receive="packets")
        carol = None
        try:
            await subscribed_track(bob, "cam")
            producer = server_producer(server, "alice", "video")
            producer.keyframe_max_age = 3600.0  # this test makes the keyframe old on purpose
            await wait_for(lambda: producer.recent_keyframe() is not None, message="a complete keyframe in the cache")
            keyframes_asked = producer.keyframe_requests_sent
            sender = next(t.sender for t in alice.pc.getTransceivers() if t.sender.track is not None)
            drop_rtcp(sender, lambda packet: isinstance(packet, RtcpPsfbPacket))  # alice is deaf to PLIs from now on
            packets_then = producer.stats.packets
            await wait_for(lambda: producer.stats.packets > packets_then + 10, message="delta frames after the keyframe")

            carol = await connect(server.url, server.token("carol"), name="late")
            track = await subscribed_track(carol, "cam")
            values = await read_counters(track, 10)
            assert values == sorted(values), values  # decodable from the first frame on
            consumer = next(c for c in server_consumers(server, "carol") if c.kind == "video")
            assert consumer.cached_starts == 1 and producer.cached_starts >= 1
            assert producer.keyframe_requests_sent == keyframes_asked  # she never needed a PLI
        finally:
            for room in (carol, bob, alice):
                if room is not None:
                    await room.disconnect()
