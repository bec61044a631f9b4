"""Two and three participants exchange audio, video and data through the SFU."""

from __future__ import annotations

import asyncio

from av import AudioFrame, VideoFrame

from signaling.client import LocalAudioTrack, LocalDataTrack, LocalVideoTrack, RemoteDataTrack, RemoteMediaTrack, connect

from .conftest import wait_event, wait_for
from .media import CounterVideoTrack, ToneAudioTrack, read_counter


async def read_counters(track: RemoteMediaTrack, count: int) -> list[int]:
    values = []
    while len(values) < count:
        frame = await asyncio.wait_for(track.recv(), 20)
        assert isinstance(frame, VideoFrame)
        values.append(read_counter(frame))
    return values


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
