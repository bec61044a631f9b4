"""Simulcast with Python clients: one publishes a track as two VP8 layers (its own encodings,
with RIDs), two subscribers decode the layer ``Consumer.set_target_layer`` gives them, and
layer switches mid-call keep the frames coming, in order, at the new size."""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import MediaStreamTrack
from av import VideoFrame

from sfu.media.consumer import Consumer
from sfu.media.producer import Producer
from signaling.client import LocalSimulcastVideoTrack, RemoteMediaTrack, connect
from signaling.sources import read_counter

from .conftest import DEADLINE, wait_for
from .helpers.clients import subscribed_media
from .media import CounterVideoTrack

ROOM = "layers"


class ScaledVideoTrack(MediaStreamTrack):
    """Another track's frames at another size (one simulcast layer of the same picture)."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, width: int, height: int) -> None:
        super().__init__()
        self.source, self.width, self.height = source, width, height

    async def recv(self) -> VideoFrame:
        frame = await self.source.recv()
        assert isinstance(frame, VideoFrame)
        scaled = frame.reformat(width=self.width, height=self.height)
        scaled.pts, scaled.time_base = frame.pts, frame.time_base
        return scaled


class Frames:
    """Decodes a remote counter video in the background: (width, counter) per frame."""

    def __init__(self, track: RemoteMediaTrack) -> None:
        self.frames: list[tuple[int, int]] = []
        self._task = asyncio.create_task(self._run(track))

    async def _run(self, track: RemoteMediaTrack) -> None:
        while True:
            frame = await track.recv()
            assert isinstance(frame, VideoFrame)
            self.frames.append((frame.width, read_counter(frame)))

    async def wait_width(self, width: int, count: int = 10) -> None:
        """Wait for ``count`` frames of ``width`` after the last frame of another width."""

        def done() -> bool:
            tail = 0
            for w, _ in reversed(self.frames):
                if w != width:
                    break
                tail += 1
            return tail >= count

        await wait_for(done, timeout=DEADLINE * 2, message=f"{count} frames {width} wide (got {self.frames[-3:]})")

    def close(self) -> None:
        self._task.cancel()


def manual_layers(server: Any, identity: str) -> None:
    """Stop the subscriber's stream allocator, so the layers these tests set by hand stay
    set (the allocator picks layers from bandwidth and render size: tests/test_allocation*.py)."""
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            if p.identity == identity:
                p.transport.allocation.close()


def consumer_of(server: Any, identity: str) -> Consumer | None:
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            for s in p.subscriptions.values():
                if p.identity == identity and isinstance(s.sink, Consumer) and s.sink.kind == "video":
                    return s.sink
    return None


class Two:
    """Hands each frame of one source to two layers (each layer gets every frame)."""

    def __init__(self) -> None:
        self.source = CounterVideoTrack(fps=15)
        self.queues: list[asyncio.Queue[VideoFrame]] = [asyncio.Queue(maxsize=4), asyncio.Queue(maxsize=4)]
        self._task: asyncio.Task[None] | None = None

    def layer(self, index: int) -> MediaStreamTrack:
        outer = self

        class Layer(MediaStreamTrack):
            kind = "video"

            async def recv(self) -> VideoFrame:
                if outer._task is None:
                    outer._task = asyncio.create_task(outer._pump())
                return await outer.queues[index].get()

        return Layer()

    async def _pump(self) -> None:
        while True:
            frame = await self.source.recv()
            for queue in self.queues:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(frame)


async def test_python_clients_publish_layers_and_each_subscriber_gets_the_one_it_is_set_to(server) -> None:
    source = Two()
    track = LocalSimulcastVideoTrack([source.layer(0), ScaledVideoTrack(source.layer(1), 640, 480)], "cam")
    alice = await connect(server.url, server.token("alice"), name=ROOM, tracks=[track])
    small = await connect(server.url, server.token("small"), name=ROOM, tracks=[])
    large = await connect(server.url, server.token("large"), name=ROOM, tracks=[])
    readers: list[Frames] = []
    try:
        producer = await wait_for(
            lambda: next((p.source for r in server.registry.rooms.values() for q in r.participants.values() for p in q.published.values()
                          if isinstance(p.source, Producer) and p.source.simulcast), None),
            message="alice's track as simulcast layers",
        )  # fmt: skip
        assert [layer.rid for layer in producer.layers] == ["q", "h"]
        small_sink = await wait_for(lambda: consumer_of(server, "small"), message="small's consumer")
        large_sink = await wait_for(lambda: consumer_of(server, "large"), message="large's consumer")
        manual_layers(server, "small")
        manual_layers(server, "large")
        small_sink.set_target_layer(0)
        large_sink.set_target_layer(1)
        readers = [Frames(await subscribed_media(small, "alice", "cam")), Frames(await subscribed_media(large, "alice", "cam"))]
        await readers[0].wait_width(320)
        await readers[1].wait_width(640)
        # Both layers arrive at the server, each on its SSRC, mapped by its RID.
        assert all(layer.ssrc is not None and layer.stats.packets > 0 for layer in producer.layers)
        assert (producer.layers[0].width, producer.layers[1].width) == (320, 640)

        # Swap them mid-call: the frames go on, in order, at the other size.
        small_sink.set_target_layer(1)
        large_sink.set_target_layer(0)
        await readers[0].wait_width(640)
        await readers[1].wait_width(320)
        # Off, then on again: nothing while off, then frames at a keyframe.
        small_sink.set_target_layer(None)
        assert producer.layers[1]._forwards == [] and small_sink.current_layer is None
        sent, seen = small_sink.stats.packets, len(readers[1].frames)
        await wait_for(lambda: len(readers[1].frames) >= seen + 15, message="15 frames more for large while small is off")
        assert small_sink.stats.packets == sent
        small_sink.set_target_layer(0)
        await readers[0].wait_width(320)
        assert small_sink.stats.packets > sent
        for reader in readers:
            # Decoded in order across every switch: a new layer starts at its keyframe, which may
            # be the same picture as the last one of the old layer (the layers are encoded side by
            # side), never an older one.
            pairs = list(zip(reader.frames, reader.frames[1:]))
            assert all(b[1] > a[1] or (b[1] == a[1] and b[0] != a[0]) for a, b in pairs), [p for p in pairs if p[1][1] <= p[0][1]]
        assert small_sink.stats.layer_switches >= 1 and large_sink.stats.layer_switches >= 1
    finally:
        for reader in readers:
            reader.close()
        for room in (alice, small, large):
            await room.disconnect()


async def test_simulcast_works_in_a_worker_process(tmp_path, netns) -> None:
    """With ``--workers 2`` the layers live in the worker hosting the room: the offer with RIDs
    and the answer with a=simulcast:send cross the channel as SDP text, and a subscriber nobody
    sets a layer for gets the highest layer the publisher sends."""
    from .conftest import running_server

    async with running_server(tmp_path, workers=2) as (server, _):
        source = Two()
        track = LocalSimulcastVideoTrack([source.layer(0), ScaledVideoTrack(source.layer(1), 640, 480)], "cam")
        alice = await connect(server.url, server.token("alice"), name=ROOM, tracks=[track])
        bob = await connect(server.url, server.token("bob"), name=ROOM, tracks=[])
        reader: Frames | None = None
        try:
            reader = Frames(await subscribed_media(bob, "alice", "cam"))
            await reader.wait_width(640, count=15)
            layers = next(iter(alice._layer_senders.values()))
            assert layers.answer is not None and layers.answer.rids == ["q", "h"]
            assert all(sent > 0 for sent in layers.packets_sent)  # both layers go to the worker
        finally:
            if reader is not None:
                reader.close()
            for room in (alice, bob):
                await room.disconnect()
