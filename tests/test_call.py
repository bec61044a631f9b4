"""Two and three participants exchange audio, video and data through the SFU."""

from __future__ import annotations

import asyncio

from av import AudioFrame

from signaling.client import LocalAudioTrack, LocalDataTrack, LocalVideoTrack, RemoteDataTrack, RemoteMediaTrack, connect

from .conftest import wait_for
from .helpers.clients import Clients, VideoReader, local_track, read_audio, subscribed_data, subscribed_media
from .media import CounterVideoTrack, ToneAudioTrack, read_counters


async def test_two_participants_exchange_video_audio_and_data(server):
    alice_tracks = [LocalVideoTrack(CounterVideoTrack(), "cam"), LocalAudioTrack(ToneAudioTrack(), "mic"), LocalDataTrack("chat")]
    alice = await connect(server.url, server.token("alice"), name="standup", tracks=alice_tracks)
    bob = await connect(server.url, server.token("bob"), name="standup", tracks=[LocalDataTrack("chat")])
    try:
        assert alice.sid == bob.sid and alice.sid.startswith("RM")
        subscribed: dict[str, object] = {}
        bob.on("track_subscribed", lambda track, pub, p: subscribed.__setitem__(pub.track_name, track))
        await wait_for(lambda: {"cam", "mic", "chat"} <= set(subscribed), message="bob subscribed to alice's tracks")
        video = subscribed["cam"]
        assert isinstance(video, RemoteMediaTrack)
        counters = await read_counters(video, 20)
        # Frames arrive in order, starting at a keyframe, and carry the sender's counter.
        assert all(b > a for a, b in zip(counters, counters[1:])), counters
        audio = subscribed["mic"]
        assert isinstance(audio, RemoteMediaTrack)
        frame = await asyncio.wait_for(audio.recv(), 20)
        assert isinstance(frame, AudioFrame)
        data = subscribed["chat"]
        assert isinstance(data, RemoteDataTrack)
        got: list[str] = []
        data.on("message", got.append)
        for i in range(50):
            alice_tracks[2].send(f"m{i}")
        await wait_for(lambda: len(got) == 50, message="50 data messages")
        assert got == [f"m{i}" for i in range(50)]
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_three_participants_each_receive_the_other_two(clients: Clients) -> None:
    names = ("alice", "bob", "carol")
    rooms = {name: await clients.join(name, "trio") for name in names}
    assert len({room.sid for room in rooms.values()}) == 1
    pairs = [(me, other) for me in names for other in names if other != me]

    # Video: each decodes both others' counters, increasing.
    readers = {pair: await clients.watch(rooms[pair[0]], pair[1]) for pair in pairs}
    for reader in readers.values():
        await reader.advance(15)

    # Audio: frames of both others' tone arrive.
    for me, other in pairs:
        frames = await read_audio(await subscribed_media(rooms[me], other, "mic"), 5)
        assert all(frame.sample_rate == 48000 for frame in frames)

    # Data: each gets both others' messages, in order and only theirs.
    received: dict[tuple[str, str], list[str]] = {pair: [] for pair in pairs}
    for me, other in pairs:
        (await subscribed_data(rooms[me], other)).on("message", received[(me, other)].append)
    for sender in names:
        chat = local_track(rooms[sender], "chat")
        assert isinstance(chat, LocalDataTrack)
        for i in range(30):
            chat.send(f"{sender}:{i}")
    await wait_for(lambda: all(len(got) >= 30 for got in received.values()), message="30 messages on each data subscription")
    for (me, other), got in received.items():
        assert got == [f"{other}:{i}" for i in range(30)], (me, other)


async def test_late_joiner_starts_at_a_keyframe_within_a_second(clients: Clients) -> None:
    await clients.join("alice", "late", publish="v")
    early = await clients.join("early", "late", publish="")
    # Let alice's encoder run well past its first keyframe (aiortc sends the next one
    # only when asked): a late subscriber can only start quickly if the SFU asks for one.
    await (await clients.watch(early, "alice")).advance(45)
    carol = await clients.join("carol", "late", publish="", receive="frames")
    video = await subscribed_media(carol, "alice", "cam")
    assert video.subscribed_at is not None
    reader = VideoReader(video)
    clients.readers.append(reader)
    counters = await reader.advance(10)
    first_at, first_pts, _ = reader.frames[0]
    latency = first_at - video.subscribed_at
    assert latency < 1.0, f"first frame {latency:.3f}s after subscribing"
    # aiortc numbers decoded frames from the first complete frame received (pts 0): a
    # stream starting mid-GOP would fail to decode and the first frame would be later.
    assert first_pts == 0, f"first decoded frame has pts {first_pts}: the stream did not start at a keyframe"
    consumer = next(s.sink for r in clients.server.registry.rooms.values() for p in r.participants.values()
                    if p.identity == "carol" for s in p.subscriptions.values() if s.track.kind == "video")
    # A fresh keyframe asked of alice, or the SFU's cached one, at most a second old (issue 9 item 5).
    assert counters[0] > 45 or consumer.cached_starts == 1, counters
