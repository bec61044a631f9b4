"""The worker-to-worker pipe (sfu.media.pipe), over real unix datagram sockets: packets cross
once whatever the subscribers on the far end, a far subscriber starts at a keyframe, PLIs and
NACKs go back to the origin, and a reader that does not keep up costs drops, not memory."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket

from sfu.media import rtp
from sfu.media.consumer import Consumer
from sfu.media.pipe import AUDIO_LEVEL_ID, PipeHub, PipeTransport, encode, pipe_pair
from sfu.media.producer import Producer
from sfu.media.router import Router
from sfu.media.rtp import InboundPacket

from .conftest import wait_for
from .test_forwarding_unit import DELTA, EXTENSIONS, KEYFRAME, VP8, packet, record, router_for


class Origin:
    """A publisher's producer on the origin worker, and what it asked the publisher for."""

    def __init__(self) -> None:
        self.plis: list[int] = []
        self.nacks: list[list[int]] = []
        self.producer = Producer("MT1", "video", self.plis.append, lambda ssrc, lost: self.nacks.append(lost))
        self.producer.configure([VP8], {98: 97}, 0, 1, True)
        self.producer.set_ssrcs(1111, 2222)
        self.router = Router()  # the origin room's fan-out map
        self.payloads: dict[int, bytes] = {}

    def unpublish(self) -> None:
        self.router.remove_source(self.producer)
        self.producer.close()

    def send(self, seqs: Iterable[int], keyframe_at: frozenset[int] | set[int] = frozenset()) -> None:
        for seq in seqs:
            payload = (KEYFRAME if seq in keyframe_at else DELTA) + seq.to_bytes(2, "big")
            self.payloads[seq] = payload
            self.producer.on_rtp(packet(seq, payload))


def far_subscriber(producer: Producer, ssrc: int = 5555) -> tuple[Consumer, list[RtpPacket]]:
    sent: list[RtpPacket] = []
    consumer = Consumer(producer, router_for(producer), lambda data: record(sent, RtpPacket.parse(data)), ssrc, ssrc + 1)
    consumer.configure([VP8], {98: 97}, EXTENSIONS, "0")
    consumer.attach()
    return consumer, sent


@pytest.fixture
async def pipe() -> Any:
    a, b = pipe_pair()
    origin_end, far_end = PipeTransport(a), PipeTransport(b)
    origin_end.start()
    far_end.start()
    yield origin_end, far_end
    origin_end.close()
    far_end.close()


async def test_packets_cross_once_for_every_far_subscriber_and_start_at_the_cached_keyframe(pipe: Any) -> None:
    origin_end, far_end = pipe
    origin = Origin()
    origin.send(range(100, 111), keyframe_at={101})
    origin_end.send_track(origin.producer, origin.router)
    far = await wait_for(lambda: far_end.producers.get("MT1"), message="the track opened on the far end")
    # the origin's newest keyframe and what followed went across with the track
    await wait_for(lambda: far.stats.packets == 10, message="the cached keyframe crossed")
    subscribers = [far_subscriber(far, ssrc) for ssrc in (5000, 6000, 7000)]
    for consumer, sent in subscribers:  # started at once from the far cache: no PLI anywhere
        assert consumer.cached_starts == 1 and [p.payload for p in sent] == [origin.payloads[s] for s in range(101, 111)]
    assert origin.plis == []

    sent_before = origin_end.counters.sent
    origin.send(range(111, 161))
    await wait_for(lambda: all(len(sent) == 60 for _, sent in subscribers), message="live packets on the far subscribers")
    for consumer, sent in subscribers:
        assert [p.payload for p in sent] == [origin.payloads[s] for s in range(101, 161)]  # verbatim, in order
        assert {p.ssrc for p in sent} == {consumer.ssrc}  # rewritten per far subscriber
        assert {p.payload_type for p in sent} == {97}  # the publisher's 97, the pipe's 96, the subscriber's 97
        first = sent[0].sequence_number
        assert [(p.sequence_number - first) & 0xFFFF for p in sent] == list(range(60))
    # each packet crossed once for three subscribers, and the origin fan-out has one member for them
    assert origin_end.counters.sent - sent_before == 50
    assert len(origin.router.forwarding(origin.producer)) == 1
    assert origin_end.counters.dropped == 0


async def test_a_far_subscriber_without_a_cached_keyframe_asks_the_publisher_through_the_pipe(pipe: Any) -> None:
    origin_end, far_end = pipe
    origin = Origin()
    origin.send(range(100, 105))  # no keyframe yet
    origin_end.send_track(origin.producer, origin.router)
    far = await wait_for(lambda: far_end.producers.get("MT1"))
    consumer, sent = far_subscriber(far)
    await wait_for(lambda: origin.plis == [1111], message="the far subscriber's PLI reached the publisher")
    assert origin_end.counters.plis == 1
    origin.send(range(105, 110))
    origin.send(range(110, 115), keyframe_at={110})
    await wait_for(lambda: len(sent) == 5, message="the far subscriber started at the keyframe")
    assert sent[0].payload == origin.payloads[110] and consumer.cached_starts == 0

    # a PLI of a far subscriber (a decoder that lost its picture) reaches the publisher too
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=consumer.ssrc)
    consumer.on_rtcp(pli)
    await wait_for(lambda: len(origin.plis) == 2, message="the second PLI (after the far rate limit) at the publisher")


async def test_a_packet_lost_in_the_pipe_is_nacked_to_the_origin_and_resent_from_its_cache(pipe: Any) -> None:
    origin_end, far_end = pipe
    origin = Origin()
    origin.send(range(100, 102), keyframe_at={100})
    (member,) = origin_end.send_track(origin.producer, origin.router) or ()  # (one stream: no simulcast)
    far = await wait_for(lambda: far_end.producers.get("MT1"))
    consumer, sent = far_subscriber(far)
    await wait_for(lambda: len(sent) == 2)
    origin.router.set_forwarding(member, False)  # type: ignore[arg-type]  # 102 never enters the pipe
    origin.send([102])
    origin.router.set_forwarding(member, True)  # type: ignore[arg-type]
    origin.send(range(103, 106))
    await wait_for(lambda: len(sent) == 6, message="the lost packet came back")
    assert origin_end.counters.retransmitted == 1
    assert sorted(p.payload for p in sent) == sorted(origin.payloads[s] for s in range(100, 106))
    first = sent[0].sequence_number  # the retransmitted packet keeps its place in the far stream
    assert sorted((p.sequence_number - first) & 0xFFFF for p in sent) == list(range(6))
    assert origin.nacks == []  # the origin had it: the publisher was not asked


async def test_a_reader_that_does_not_keep_up_costs_drops_never_memory() -> None:
    a, b = pipe_pair()
    origin_end, far_end = PipeTransport(a), PipeTransport(b)
    origin_end.start()  # the far end does not read yet
    origin = Origin()
    origin.send([100], keyframe_at={100})
    origin_end.send_track(origin.producer, origin.router)
    big = DELTA + b"x" * 1100
    fed = 20000  # 22 MB: several times any socket buffer
    for seq in range(101, 101 + fed):
        origin.producer.on_rtp(packet(seq, big))
    counters = origin_end.counters
    assert counters.dropped > 0 and counters.sent + counters.dropped == fed + 2  # + OPEN and the keyframe
    assert counters.sent * len(big) < 16 * 1024 * 1024  # what the kernel held, bounded by the buffers
    # once the far end reads, the track opens and packets flow again
    far_end.start()
    far = await wait_for(lambda: far_end.producers.get("MT1"))
    consumer, sent = far_subscriber(far)
    origin.send(range(101 + fed, 111 + fed), keyframe_at={101 + fed})
    await wait_for(lambda: len(sent) >= 10, message="the stream after the drops")
    origin_end.close()
    far_end.close()


async def test_unpublishing_closes_the_far_track_and_its_subscribers() -> None:
    a, b = pipe_pair()
    closed: list[Producer] = []

    def on_close(producer: Producer) -> None:  # what the far worker does: out of its room's Router
        closed.append(producer)
        router_for(producer).remove_source(producer)

    origin_end, far_end = PipeTransport(a), PipeTransport(b, on_close=on_close)
    origin_end.start()
    far_end.start()
    origin = Origin()
    origin.send([100], keyframe_at={100})
    origin_end.send_track(origin.producer, origin.router)
    far = await wait_for(lambda: far_end.producers.get("MT1"))
    consumer, _ = far_subscriber(far)
    origin.unpublish()
    await wait_for(lambda: closed == [far], message="the far track closed")
    assert far.closed and not consumer.forwarding and "MT1" not in far_end.producers
    origin_end.close()
    far_end.close()


def test_the_pipe_keeps_what_consumers_need_of_a_packet() -> None:
    p = InboundPacket(111, 65535, 0xFFFFFFFF, 1, 4242, b"opus" + bytes([0, 0, 3]), True, b"\x85")
    parsed, _ = rtp.parse(encode(p), AUDIO_LEVEL_ID)
    assert parsed == p
    plain = InboundPacket(97, 7, 9000, 0, 1111, DELTA, False)
    assert rtp.parse(encode(plain))[0] == plain and len(encode(plain)) == 12 + len(DELTA)


def test_two_event_loops_in_two_threads_carry_a_track_and_its_plis() -> None:
    """The two ends as two workers would run them: each on its own loop."""
    a, b = pipe_pair()
    far_ready = threading.Event()
    received: list[RtpPacket] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    async def far_worker() -> None:
        far_end = PipeTransport(b)
        far_end.start()
        far_ready.set()
        far = await wait_for(lambda: far_end.producers.get("MT1"))
        far_subscriber(far)  # no keyframe yet: its PLI goes to the origin's thread
        consumer = Consumer(far, router_for(far), lambda data: record(received, RtpPacket.parse(data)), 8000, 8001)
        consumer.configure([VP8], {98: 97}, EXTENSIONS, "0")
        consumer.attach()
        while not stop.is_set():
            await asyncio.sleep(0.01)
        far_end.close()

    def run() -> None:
        try:
            asyncio.run(far_worker())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        far_ready.wait(30)

        async def origin_worker() -> None:
            origin_end = PipeTransport(a)
            origin_end.start()
            origin = Origin()
            origin.send(range(100, 103))
            origin_end.send_track(origin.producer, origin.router)
            await wait_for(lambda: origin.plis, message="the far thread's PLI")
            origin.send(range(103, 130), keyframe_at={103})
            await wait_for(lambda: len(received) == 27, message="the far thread's subscriber got the stream")
            assert [p.payload for p in received] == [origin.payloads[s] for s in range(103, 130)]
            origin_end.close()

        asyncio.run(origin_worker())
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def _origin_process(name: str) -> None:
    """Worker 1: a publisher's track piped to worker 0, keyframes only when asked."""

    async def main() -> None:
        hub = PipeHub()
        hub.connect(0, name)
        origin = Origin()
        origin.send(range(100, 103))
        hub.send(0, origin.producer, origin.router)  # before the connection is up: sent once it is
        seq, pipe = 103, hub.pipe(0)
        while not pipe.closed and seq < 20000:  # paced like a camera, until worker 0 hangs up
            asked, origin.plis[:] = bool(origin.plis), []
            origin.send([seq], keyframe_at={seq} if asked else set())
            seq += 1
            await asyncio.sleep(0.002)
        hub.close()

    asyncio.run(main())


async def test_two_worker_processes_pipe_a_track_and_the_far_one_gets_its_keyframe_by_pli() -> None:
    name = PipeHub.pipe_name(f"test{os.getpid()}", 0, 1)
    opened: list[tuple[int, Producer]] = []
    hub = PipeHub(on_open=lambda peer, producer: opened.append((peer, producer)))
    hub.listen(1, name)
    child = multiprocessing.get_context("spawn").Process(target=_origin_process, args=(name,), daemon=True)
    child.start()
    try:
        far = hub.expect(1, "MT1", "video")  # a worker may hold it before the track opens
        assert [c.mime_type for c in far.codecs.values()][0] == "video/VP8"  # the pipe's codecs, known at once
        await wait_for(lambda: opened == [(1, far)], message="the track opened")
        consumer, sent = far_subscriber(far)
        await wait_for(lambda: len(sent) >= 30, message="the other process's stream")
        # it started at a keyframe, which the origin sent only because our PLI reached it
        assert sent[0].payload.startswith(KEYFRAME)
        seqs = [int.from_bytes(p.payload[-2:], "big") for p in sent]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost on the way
        assert hub.counters().received >= 30 and hub.counters().sent >= 1
        hub.close()
        await wait_for(lambda: not child.is_alive(), message="the origin saw the pipe close")
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)


# --- a simulcast track: every layer piped, a layered producer on the far end -------------------


class SimulcastOrigin:
    """A publisher's two-layer VP8 track (q 320x180, h 640x360) on the origin worker; each
    layer's payloads end with its RID, so a far subscriber's packets tell which layer they are."""

    SIZES = {"q": (320, 180), "h": (640, 360)}

    def __init__(self) -> None:
        from .test_simulcast_unit import SSRCS, Layer

        self.plis: list[int] = []
        self.nacks: list[tuple[int, list[int]]] = []
        self.producer = Producer("MT1", "video", self.plis.append, lambda ssrc, lost: self.nacks.append((ssrc, lost)))
        self.producer.configure([VP8], {98: 97}, 0, 1, True)
        self.producer.set_layers(["q", "h"])
        for layer in self.producer.layers:
            assert layer.rid is not None
            layer.set_ssrcs(SSRCS[layer.rid], None)
        self.ssrcs = {rid: SSRCS[rid] for rid in self.SIZES}
        self.streams = {"q": Layer("q", 100, 1000, 10, 1), "h": Layer("h", 5000, 777000, 3000, 50)}
        self.router = Router()

    def unpublish(self) -> None:
        self.router.remove_source(self.producer)
        self.producer.close()

    def send(self, rid: str, keyframe: bool = False) -> list[bytes]:
        """One frame (two packets) of layer ``rid``, through the origin producer."""
        from .test_simulcast_unit import vp8_payload

        stream = self.streams[rid]
        layer = self.producer.layer_for(rid)
        assert layer is not None
        packets = []
        for data in stream.frame(keyframe):
            head, payload = data[:12], data[12:]
            if payload[8:11] == b"\x9d\x01\x2a":  # (a keyframe's start: its picture size)
                pid, tl0 = (int.from_bytes(payload[2:4], "big") & 0x7FFF), payload[4]
                payload = vp8_payload(pid, tl0, True, size=self.SIZES[rid])
            data = head + payload[:-30] + rid.encode() * 30
            packets.append(data)
            layer.on_rtp(data)
        return packets


def layer_of(packet: RtpPacket) -> str:
    return chr(packet.payload[-1])


async def test_a_simulcast_track_crosses_as_its_layers_and_far_subscribers_switch_between_them(pipe: Any) -> None:
    """Each layer crosses once on its own number; the far producer has the same layers (sizes
    measured from their keyframes there); a far subscriber's switch asks the right SSRC for a
    keyframe through the pipe and happens at that layer's keyframe; a NACK is answered from the
    right layer's cache; unpublishing ends the far track."""
    from .test_simulcast_unit import assert_continuous

    origin_end, far_end = pipe
    origin = SimulcastOrigin()
    for rid in ("q", "h"):
        origin.send(rid, keyframe=True)
        origin.send(rid)
    members = origin_end.send_track(origin.producer, origin.router)
    assert members is not None and [m.producer for m in members] == origin.producer.layers
    far = await wait_for(lambda: far_end.producers.get("MT1"), message="the track opened on the far end")
    assert far.simulcast and [layer.rid for layer in far.layers] == ["q", "h"] and far.layers[0].parent is far
    await wait_for(lambda: all(layer.stats.packets == 4 for layer in far.layers), message="each layer's cached keyframe crossed")
    assert [(d["rid"], d["ssrc"], d["width"], d["height"]) for d in far.describe_layers()] == [
        ("q", origin.ssrcs["q"], 320, 180), ("h", origin.ssrcs["h"], 640, 360)]  # fmt: skip
    assert far.stats.packets == 0  # the parent itself receives nothing, as at the origin

    low, low_sent = far_subscriber(far, 5000)
    high, high_sent = far_subscriber(far, 7000)
    assert low.current_layer == high.current_layer == 1  # the highest active layer, started from the far cache
    assert [layer_of(p) for p in low_sent] == ["h"] * 4 and origin.plis == []
    low.set_target_layer(0)
    await wait_for(lambda: origin.plis == [origin.ssrcs["q"]], message="the switch's PLI at the publisher, for q's SSRC")
    sent_before = origin_end.counters.sent
    for rid in ("q", "h", "q", "h"):
        origin.send(rid)
    origin.send("q", keyframe=True)
    origin.send("h")
    await wait_for(lambda: low.current_layer == 0 and len(high_sent) == 10, message="the low subscriber switched at q's keyframe")
    assert origin_end.counters.sent - sent_before == 12  # each layer's packets once, for both subscribers
    # low: h until q's keyframe, then q only, continuous; high: h throughout
    assert [layer_of(p) for p in low_sent] == ["h"] * 8 + ["q"] * 2, [layer_of(p) for p in low_sent]
    assert low_sent[8].payload[8:11] == b"\x9d\x01\x2a" and low.stats.layer_switches == 1
    assert_continuous(low_sent)
    assert {layer_of(p) for p in high_sent} == {"h"} and high.current_layer == 1
    assert {p.ssrc for p in low_sent} == {5000} and {p.ssrc for p in high_sent} == {7000}
    assert far.layers[0]._forwards and far.layers[1]._forwards  # (each far layer feeds its own subscriber)

    # A packet of h lost in the pipe: the far h layer NACKs it, the origin resends it from h's cache
    h_member = members[1]
    origin.router.set_forwarding(h_member, False)  # type: ignore[arg-type]
    origin.send("h")
    origin.router.set_forwarding(h_member, True)  # type: ignore[arg-type]
    origin.send("h")
    origin.send("h")
    await wait_for(lambda: len(high_sent) == 16, message="the lost h packets came back from h's cache")
    assert origin_end.counters.retransmitted == 2 and origin.nacks == []  # (the publisher was not asked)
    assert far.layers[1].stats.lost_detected == 2 and far.layers[0].stats.lost_detected == 0
    assert {layer_of(p) for p in high_sent} == {"h"}
    # a far subscriber's PLI asks for its own layer only
    high.on_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=high.ssrc))
    await wait_for(lambda: origin.plis[-1:] == [origin.ssrcs["h"]], message="a PLI for h's SSRC")
    assert origin.ssrcs["h"] not in origin.plis[:-1]

    origin.unpublish()
    await wait_for(lambda: "MT1" not in far_end.producers and far.closed, message="the far track ended")
    assert all(layer.closed for layer in far.layers) and not far_end._incoming


async def test_a_far_worker_makes_the_layers_before_the_track_opens() -> None:
    """The far worker's producer has the layers from the start (the RIDs come with pipe_in), so
    a subscriber made there before the track opens is a simulcast consumer already."""
    a, b = pipe_pair()
    origin_end, far_end = PipeTransport(a), PipeTransport(b)
    try:
        far = far_end.expect("MT1", "video", ["q", "h"])
        consumer, sent = far_subscriber(far)
        consumer.set_target_layer(0)
        origin_end.start()
        far_end.start()
        origin = SimulcastOrigin()
        origin_end.send_track(origin.producer, origin.router)
        await wait_for(lambda: far_end._numbers.get(far.layers[0]) is not None, message="the track opened")
        assert far_end.producers["MT1"] is far
        origin.send("h", keyframe=True)
        origin.send("q", keyframe=True)
        origin.send("q")
        await wait_for(lambda: len(sent) == 4, message="the subscriber made before the open got layer q")
        assert {layer_of(p) for p in sent} == {"q"}
    finally:
        origin_end.close()
        far_end.close()


# --- a room bigger than one worker, end to end ----------------------------------------------------


async def test_a_room_past_its_workers_capacity_spills_onto_the_other_worker_through_one_pipe(
    tmp_path: Path, netns: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """`sfu serve --workers 2 --room-capacity 2`: the publisher and one subscriber fill the
    room's worker; two more subscribers land on the other worker, which gets the publisher's
    packets once over the pipe and decodes on both."""
    from sfu.workers.pool import RemoteMediaPlane

    from .conftest import running_server
    from .helpers.clients import Clients

    async with running_server(tmp_path, workers=2, room_capacity=2) as (server, _):
        clients = Clients(server)
        try:
            publisher = await clients.join("pub", "big", publish="va")
            subscribers = [await clients.join(name, "big", publish="") for name in ("near", "far1", "far2")]
            readers = [await clients.watch(s, "pub") for s in subscribers]
            for reader in readers:
                await reader.advance(10)
            plane = server.registry.plane
            assert isinstance(plane, RemoteMediaPlane)
            home = plane.placement[publisher.sid]
            other = next(w for w in plane.workers if w is not home)
            assert [plane._room_transports(w, publisher.sid) for w in (home, other)] == [2, 2]

            def figures() -> tuple[dict[str, float], dict[str, float], int]:
                f = {w.index: w.plane_figures() for w in plane.workers}
                return f[home.index].extra, f[other.index].extra, f[other.index].packets_out

            await wait_for(lambda: figures()[2] > 2000, message="the far worker forwarding to its two subscribers")
            sent, received, far_out = figures()
            # once across, whatever the far subscribers: about half what the far worker sends them
            assert received.get("pipe_packets_received", 0) > 500 and sent.get("pipe_packets_sent", 0) > 500
            assert sent["pipe_packets_sent"] < 0.8 * far_out, (sent, far_out)
            assert sent.get("pipe_dropped", 0) == 0
            # the workers log to the test's stderr: nothing there chokes on the pipe as a fan-out member
            assert "Traceback" not in capfd.readouterr().err
            # every subscriber keeps decoding, the far ones through the pipe
            for reader in readers:
                await reader.advance(10)
        finally:
            await clients.close()


async def test_killing_the_worker_a_room_spilled_onto_leaves_the_rest_of_the_room_going(
    tmp_path: Path, netns: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """The far worker dies: its participants leave with 53405; the publisher and the
    subscriber on the room's own worker go on, the pipe's end closed cleanly."""
    from sfu.workers.pool import RemoteMediaPlane
    from sfu.workers.remote import WORKER_DIED

    from .conftest import running_server
    from .helpers.clients import Clients, EventLog
    from .test_workers import gaps

    async with running_server(tmp_path, workers=2, room_capacity=2) as (server, _):
        clients = Clients(server)
        try:
            publisher = await clients.join("pub", "big", publish="va")
            near, far = [await clients.join(name, "big", publish="") for name in ("near", "far")]
            near_video, far_video = await clients.watch(near, "pub"), await clients.watch(far, "pub")
            await far_video.advance(10)
            await near_video.advance(45)  # (1.5 s of frames before the kill)
            plane = server.registry.plane
            assert isinstance(plane, RemoteMediaPlane)
            home = plane.placement[publisher.sid]
            victim = next(w for w in plane.workers if w is not home)
            logs = {room.local_participant.identity: EventLog(room) for room in (publisher, near, far)}
            loop = asyncio.get_running_loop()
            killed_at, old_pid = loop.time(), victim.pid
            os.kill(victim.pid, signal.SIGKILL)
            (error,) = await logs["far"].wait("disconnected")
            assert error is not None and error.code == WORKER_DIED
            # the near subscriber's video never paused: frames all through the 4 s around the kill
            await wait_for(lambda: near_video.frames[-1][0] > killed_at + 3.0, message="3 s of video after the kill")
            assert gaps(near_video, killed_at - 1.0, killed_at + 3.0) < 1.0, near_video.frames[-150:]
            assert logs["pub"].find("disconnected") is None and logs["near"].find("disconnected") is None
            await wait_for(lambda: victim.alive and victim.pid != old_pid, message="the replacement worker")
            # the origin's end of the pipe saw it go, without a traceback in the living worker
            assert "Traceback" not in capfd.readouterr().err
        finally:
            await clients.close()


class TwoStoppable:
    """The same picture to two simulcast layers (tests.test_simulcast.Two) whose high layer the
    publisher can stop sending (as a browser short of bandwidth does)."""

    def __init__(self) -> None:
        from .test_simulcast import Two

        self.two = Two()
        self.high_on = True

        async def pump_unless_stopped() -> None:
            while True:
                frame = await self.two.source.recv()
                for index, queue in enumerate(self.two.queues):
                    if index == 1 and not self.high_on:
                        continue
                    if queue.full():
                        queue.get_nowait()
                    queue.put_nowait(frame)

        self.two._pump = pump_unless_stopped  # type: ignore[method-assign]


async def test_a_simulcast_track_spilled_onto_another_worker_is_decoded_there_and_switches_layer(
    tmp_path: Path, netns: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """`--workers 2 --room-capacity 1`: a Python client publishes two simulcast layers on the
    room's worker; a subscriber on the other worker decodes the highest (follow_active_layers
    there), and when the publisher stops sending it, the far worker moves the subscriber to the
    low layer (a keyframe asked for through the pipe from that layer's SSRC)."""
    from signaling.client import LocalSimulcastVideoTrack, connect
    from sfu.workers.pool import RemoteMediaPlane

    from .conftest import running_server
    from .helpers.clients import subscribed_media
    from .test_simulcast import Frames, ScaledVideoTrack

    async with running_server(tmp_path, workers=2, room_capacity=1) as (server, _):
        source = TwoStoppable()
        track = LocalSimulcastVideoTrack([source.two.layer(0), ScaledVideoTrack(source.two.layer(1), 640, 480)], "cam")
        alice = await connect(server.url, server.token("alice"), name="spill", tracks=[track])
        bob = await connect(server.url, server.token("bob"), name="spill", tracks=[])
        reader: Frames | None = None
        try:
            plane = server.registry.plane
            assert isinstance(plane, RemoteMediaPlane)
            room_sid = alice.sid
            home = plane.placement[room_sid]
            other = next(w for w in plane.workers if w is not home)
            assert [plane._room_transports(w, room_sid) for w in (home, other)] == [1, 1]
            reader = Frames(await subscribed_media(bob, "alice", "cam"))
            await reader.wait_width(640, count=15)
            figures = home.plane_figures().extra
            assert figures.get("pipe_packets_sent", 0) > 0 and figures.get("pipe_dropped", 0) == 0
            (piped,) = [s for (_, w, _), (_, s) in plane._piped.items() if w == other.index]
            assert piped.rids == ["q", "h"]

            source.high_on = False  # the publisher stops the high layer: the far worker follows
            await reader.wait_width(320, count=15)
            pairs = list(zip(reader.frames, reader.frames[1:]))
            assert all(b[1] > a[1] or (b[1] == a[1] and b[0] != a[0]) for a, b in pairs), [p for p in pairs if p[1][1] <= p[0][1]]
            assert "Traceback" not in capfd.readouterr().err
        finally:
            if reader is not None:
                reader.close()
            for room in (alice, bob):
                await room.disconnect()
