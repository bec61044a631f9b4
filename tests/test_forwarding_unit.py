"""The per-packet rewrite, driven directly: long streams, sequence wraparound, NACK mapping,
restarts and per-codec RTX, with a capturing writer instead of a socket."""

from __future__ import annotations

import functools
import weakref
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket, RtpPacket

from sfu.media import rtp
from sfu.media.keyframes import KeyframeRequester
from sfu.media.consumer import Consumer
from sfu.media.producer import Producer
from sfu.media.router import Router
from sfu.media.source import CodecInfo

from .conftest import wait_for

VP8 = CodecInfo(97, "video/VP8", 90000, ("video/vp8",))
H264 = CodecInfo(99, "video/H264", 90000, ("video/h264", "1", "42e0"))
EXTENSIONS = [Ext(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"), Ext(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]
KEYFRAME = b"\x10\x00" + b"k" * 40  # VP8: S=1, PID=0, P=0
DELTA = b"\x10\x01" + b"d" * 40


def packet(seq: int, payload: bytes = DELTA, pt: int = 97, ssrc: int = 1111) -> bytes:
    p = RtpPacket(payload_type=pt, sequence_number=seq & 0xFFFF, timestamp=(seq * 3000) & 0xFFFFFFFF)
    p.ssrc = ssrc
    p.payload = payload
    return p.serialize()


_routers: weakref.WeakKeyDictionary[Producer, Router] = weakref.WeakKeyDictionary()


def router_for(producer: Producer) -> Router:
    """The fan-out map of the producer's room (one per producer here)."""
    return _routers.setdefault(producer, Router())


def setup(codecs=(VP8,), rtx={98: 97}) -> tuple[Producer, Consumer, list[RtpPacket]]:
    nacks: list[list[int]] = []
    producer = Producer("MT1", "video", lambda ssrc: None, lambda ssrc, lost: nacks.append(lost))
    producer.configure(list(codecs), dict(rtx), 0, 1, True)
    producer.set_ssrcs(1111, 2222)
    producer.nacks = nacks  # type: ignore[attr-defined]
    sent: list[RtpPacket] = []
    consumer = Consumer(producer, router_for(producer), lambda data: record(sent, RtpPacket.parse(data)), 5555, 6666)
    consumer.configure(list(codecs), dict(rtx), EXTENSIONS, "3")
    consumer.attach()
    return producer, consumer, sent


async def test_a_long_stream_keeps_flowing_past_half_the_sequence_space() -> None:
    producer, consumer, sent = setup()
    start = 60000
    producer.on_rtp(packet(start, KEYFRAME))
    for seq in range(start + 1, start + 70000):
        producer.on_rtp(packet(seq))
    assert len(sent) == 70000
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(sent, sent[1:]))


async def test_loss_across_the_wrap_is_nacked_upstream_and_forwarding_goes_on() -> None:
    producer, consumer, sent = setup()
    producer.on_rtp(packet(65530, KEYFRAME))
    for seq in (65531, 65532, 65533, 65534, 2, 3):  # 65535, 0 and 1 lost
        producer.on_rtp(packet(seq))
    assert producer.nacks == [[65535, 0, 1]]  # type: ignore[attr-defined]
    nack = rtp.rtcp_nack(9, 1111, [65535, 0, 1])
    parsed = RtcpPacket.parse(nack)[0]
    assert isinstance(parsed, RtcpRtpfbPacket) and parsed.fmt == RTCP_RTPFB_NACK
    assert [seq & 0xFFFF for seq in parsed.lost] == [65535, 0, 1]
    assert len(sent) == 7


async def test_nacks_near_the_wrap_are_answered_and_map_to_the_right_packet() -> None:
    producer, consumer, sent = setup()
    for i, seq in enumerate(range(65000, 65000 + 800)):
        producer.on_rtp(packet(seq, KEYFRAME if i == 0 else DELTA + bytes([seq & 0xFF])))
    asked = [(p.sequence_number) for p in sent[-5:]]
    # aiortc's NACK parser does not wrap: it can hand over 65536 and up
    unwrapped = [s if s >= asked[0] else s + 65536 for s in asked]
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=7, media_ssrc=5555)
    nack.lost = unwrapped
    before = len(sent)
    consumer.on_rtcp(nack)
    resent = sent[before:]
    assert [p.ssrc for p in resent] == [6666] * 5 and {p.payload_type for p in resent} == {98}
    originals = {p.sequence_number: p.payload for p in sent[:before]}
    for p in resent:
        osn = int.from_bytes(p.payload[:2], "big")
        assert osn in asked and p.payload[2:] == originals[osn]


async def test_after_a_pause_old_sequence_numbers_are_not_answered_with_new_packets() -> None:
    producer, consumer, sent = setup()
    producer.on_rtp(packet(100, KEYFRAME))
    for seq in range(101, 110):
        producer.on_rtp(packet(seq))
    old = [p.sequence_number for p in sent]
    consumer.pause()
    for seq in range(110, 200):
        producer.on_rtp(packet(seq))
    consumer.resume()
    producer.on_rtp(packet(200, KEYFRAME))
    assert (sent[-1].sequence_number - old[-1]) & 0xFFFF >= 1  # continues, never goes back
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=7, media_ssrc=5555)
    nack.lost = old[:3]
    before = len(sent)
    consumer.on_rtcp(nack)
    assert len(sent) == before  # those numbers belonged to the stream before the restart


async def test_retransmissions_use_the_rtx_type_of_the_codec_being_sent() -> None:
    producer, consumer, sent = setup(codecs=(VP8, H264), rtx={98: 97, 100: 99})
    producer.on_rtp(packet(10, bytes([0x65]) + b"i" * 30, pt=99))  # an H264 IDR
    producer.on_rtp(packet(11, bytes([0x41]) + b"p" * 30, pt=99))
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=7, media_ssrc=5555)
    nack.lost = [sent[1].sequence_number]
    consumer.on_rtcp(nack)
    assert sent[-1].payload_type == 100 and sent[-1].ssrc == 6666


async def test_without_a_retransmission_cache_video_still_starts_at_a_keyframe() -> None:
    producer = Producer("MT1", "video", lambda ssrc: None, lambda ssrc, lost: None, cache_size=0)
    producer.configure([VP8], {98: 97}, 0, 1, True)
    producer.set_ssrcs(1111, 2222)
    sent: list[bytes] = []
    consumer = Consumer(producer, router_for(producer), functools.partial(record, sent), 5555, 6666)
    consumer.configure([VP8], {98: 97}, EXTENSIONS, "0")
    consumer.attach()
    producer.on_rtp(packet(1))
    producer.on_rtp(packet(2, KEYFRAME))
    producer.on_rtp(packet(3))
    assert len(sent) == 2


# --- fan-out order -------------------------------------------------------------------------


def record(into: list[Any], item: Any, *_: Any) -> bool:
    """A writer that keeps what it is given."""
    into.append(item)
    return True


async def test_each_packet_starts_the_fan_out_at_a_different_subscriber() -> None:
    producer = Producer("MT1", "video", lambda ssrc: None, lambda ssrc, lost: None)
    producer.configure([VP8], {98: 97}, 0, 1, True)
    producer.set_ssrcs(1111, 2222)
    order: list[int] = []
    for i in range(3):
        consumer = Consumer(producer, router_for(producer), functools.partial(record, order, i), 5000 + i, 6000 + i)
        consumer.configure([VP8], {98: 97}, EXTENSIONS, "0")
        consumer.attach()
    for seq in range(10, 16):
        producer.on_rtp(packet(seq, KEYFRAME if seq == 10 else DELTA))
    rounds = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds), rounds  # everyone gets every packet
    firsts = [r[0] for r in rounds]
    assert firsts == [0, 1, 2, 0, 1, 2], rounds  # nobody is always last


async def test_a_paused_consumer_leaves_the_fan_out_and_comes_back_at_a_keyframe() -> None:
    producer, consumer, sent = setup()
    producer.on_rtp(packet(1, KEYFRAME))
    consumer.pause()
    assert router_for(producer).forwarding(producer) == []
    producer.on_rtp(packet(2))
    producer.keyframe_max_age = -1.0  # (no cached start: this is about the live path)
    consumer.resume()
    assert router_for(producer).forwarding(producer) == [consumer]
    producer.on_rtp(packet(3))
    producer.on_rtp(packet(4, KEYFRAME))
    assert [p.payload for p in sent] == [KEYFRAME, KEYFRAME]
    assert (sent[1].sequence_number - sent[0].sequence_number) & 0xFFFF == 1


async def test_the_router_owns_the_fan_out_and_a_removed_source_leaves_no_consumer_behind() -> None:
    producer, consumer, sent = setup()
    router = router_for(producer)
    producer.on_rtp(packet(1, KEYFRAME))
    assert router.consumers(producer) == [consumer] and router.forwarding(producer) == [consumer]

    router.remove_source(producer)
    producer.on_rtp(packet(2))

    assert router.consumers(producer) == [] and router.forwarding(producer) == []
    assert not consumer.forwarding and len(sent) == 1


# --- time to first frame -------------------------------------------------------------------


def producer_with_plis(cache_size: int = 512) -> tuple[Producer, list[int]]:
    plis: list[int] = []
    producer = Producer("MT1", "video", plis.append, lambda ssrc, lost: None, cache_size=cache_size)
    producer.configure([VP8], {98: 97}, 0, 1, True)
    producer.set_ssrcs(1111, 2222)
    return producer, plis


def subscriber(producer: Producer, ssrc: int = 5555) -> tuple[Consumer, list[RtpPacket]]:
    sent: list[RtpPacket] = []
    consumer = Consumer(producer, router_for(producer), lambda data: record(sent, RtpPacket.parse(data)), ssrc, ssrc + 1)
    consumer.configure([VP8], {98: 97}, EXTENSIONS, "3")
    return consumer, sent


async def test_a_late_subscriber_starts_from_the_cached_keyframe_at_once_without_a_pli() -> None:
    producer, plis = producer_with_plis()
    payloads = {seq: (KEYFRAME if seq == 101 else DELTA) + bytes([seq]) for seq in range(100, 111)}
    for seq in range(100, 111):
        producer.on_rtp(packet(seq, payloads[seq]))
    consumer, sent = subscriber(producer)
    consumer.attach()
    # The keyframe (101) and every packet after it, right away, rewritten as live ones are.
    assert [p.payload for p in sent] == [payloads[seq] for seq in range(101, 111)]
    assert plis == [] and consumer.cached_starts == 1 and producer.cached_starts == 1
    first = sent[0]
    assert all(p.ssrc == 5555 and p.payload_type == 97 for p in sent)
    assert [(p.sequence_number - first.sequence_number) & 0xFFFF for p in sent] == list(range(10))
    assert [(p.timestamp - first.timestamp) & 0xFFFFFFFF for p in sent] == [3000 * i for i in range(10)]
    producer.on_rtp(packet(111))  # live packets go on from the same offsets
    assert (sent[-1].sequence_number - first.sequence_number) & 0xFFFF == 10
    assert (sent[-1].timestamp - first.timestamp) & 0xFFFFFFFF == 30000
    # and a NACK for a packet of the cached start is answered from the same cache
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=7, media_ssrc=5555)
    nack.lost = [sent[2].sequence_number]
    consumer.on_rtcp(nack)
    assert int.from_bytes(sent[-1].payload[:2], "big") == sent[2].sequence_number
    assert sent[-1].payload[2:] == payloads[103]


async def test_no_cached_start_from_an_incomplete_or_stale_keyframe() -> None:
    producer, plis = producer_with_plis()
    for seq in (101, 102, 104):  # 103 lost: the decoder could not use what follows
        producer.on_rtp(packet(seq, KEYFRAME if seq == 101 else DELTA))
    consumer, sent = subscriber(producer)
    consumer.attach()
    assert sent == [] and len(plis) == 1 and consumer.cached_starts == 0
    producer.on_rtp(packet(105, KEYFRAME))
    assert [p.payload for p in sent] == [KEYFRAME]

    stale, stale_plis = producer_with_plis()
    for seq in range(1, 5):
        stale.on_rtp(packet(seq, KEYFRAME if seq == 1 else DELTA))
    stale.keyframe_max_age = 0.0  # any keyframe is too old now
    late, late_sent = subscriber(stale)
    late.attach()
    assert late_sent == [] and len(stale_plis) == 1


async def test_subscribers_joining_together_cause_one_pli_at_once() -> None:
    producer, plis = producer_with_plis()
    producer.on_rtp(packet(1))  # no keyframe cached
    joined = [subscriber(producer, 5000 + 2 * i) for i in range(5)]
    for consumer, _ in joined:
        consumer.attach()
    assert len(plis) == 1  # at once, and one for all five
    producer.on_rtp(packet(2, KEYFRAME))
    assert all([p.payload for p in sent] == [KEYFRAME] for _, sent in joined)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_starting_subscriber_is_not_held_back_by_the_rate_limit_that_protects_the_publisher() -> None:
    clock = FakeClock()
    plis: list[None] = []
    requester = KeyframeRequester(lambda: plis.append(None), min_interval=0.5, floor=0.1, patience=1.0, clock=clock)
    requester.request()  # a subscriber's PLI: the 0.5 s window starts
    requester.request()  # another one inside it: deferred to the window's end
    assert len(plis) == 1
    clock.now += 0.05
    requester.request_urgent()  # a subscriber starts while that PLI is unanswered: it serves both
    assert len(plis) == 1 and requester.coalesced == 1
    requester.keyframe_received()
    clock.now += 0.1
    requester.request_urgent()  # the keyframe went by before it started: a PLI at once
    assert len(plis) == 2
    clock.now += 0.02
    requester.keyframe_received()
    requester.request_urgent()  # within the floor: coalesced into one PLI at the floor's end
    requester.request_urgent()
    assert len(plis) == 2
    await wait_for(lambda: len(plis) == 3, message="the PLI deferred to the floor")
    clock.now += 5.0
    requester.request_urgent()  # unanswered for longer than the patience: asked again
    assert len(plis) == 4
    requester.close()


async def test_a_resumed_stream_from_the_cache_never_goes_back_in_time() -> None:
    producer, consumer, sent = setup()
    for seq in range(1, 4):
        producer.on_rtp(packet(seq, KEYFRAME if seq == 1 else DELTA))
    last = sent[-1]
    consumer.pause()
    for seq in range(4, 9):
        producer.on_rtp(packet(seq, KEYFRAME if seq == 6 else DELTA))
    consumer.resume()  # from the cached keyframe 6: 6, 7 and 8 at once
    resumed = sent[3:]
    assert [p.payload for p in resumed] == [KEYFRAME, DELTA, DELTA] and consumer.cached_starts == 1
    assert (resumed[0].sequence_number - last.sequence_number) & 0xFFFF == 1
    assert all(0 < (p.timestamp - last.timestamp) & 0xFFFFFFFF < 0x80000000 for p in resumed)
    assert [(p.timestamp - resumed[0].timestamp) & 0xFFFFFFFF for p in resumed] == [0, 3000, 6000]


async def test_a_publisher_renumbering_its_codecs_keeps_reaching_the_subscribers_configured_before() -> None:
    """The official SDK offers its own sections: after a renegotiation its VP8 may come with
    another payload type (Chrome's numbering instead of aiortc's); consumers configured on the
    old numbering must follow, not drop every packet."""
    producer, consumer, sent = setup()
    producer.on_rtp(packet(1, KEYFRAME))
    assert [p.payload_type for p in sent] == [97]
    renumbered = CodecInfo(96, "video/VP8", 90000, ("video/vp8",))
    producer.configure([renumbered], {97: 96}, 0, 1, True)

    for seq in range(2, 5):
        producer.on_rtp(packet(seq, pt=96))

    assert [p.payload_type for p in sent] == [97] * 4  # still the subscriber's own VP8 type
    assert [p.sequence_number for p in sent] == [sent[0].sequence_number + i for i in range(4)]
