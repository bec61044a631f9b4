"""The per-packet rewrite, driven directly: long streams, sequence wraparound, NACK mapping,
restarts and per-codec RTX, with a capturing writer instead of a socket."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket, RtpPacket

from sfu.media import rtp
from sfu.media.consumer import Consumer
from sfu.media.producer import CodecInfo, Producer

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


def setup(codecs=(VP8,), rtx={98: 97}) -> tuple[Producer, Consumer, list[RtpPacket]]:
    nacks: list[list[int]] = []
    producer = Producer("MT1", "video", lambda ssrc: None, lambda ssrc, lost: nacks.append(lost))
    producer.configure(list(codecs), dict(rtx), 0, 1, True)
    producer.set_ssrcs(1111, 2222)
    producer.nacks = nacks  # type: ignore[attr-defined]
    sent: list[RtpPacket] = []
    consumer = Consumer(producer, lambda data: sent.append(RtpPacket.parse(data)) or True, 5555, 6666)
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
    consumer = Consumer(producer, lambda data: sent.append(data) or True, 5555, 6666)
    consumer.configure([VP8], {98: 97}, EXTENSIONS, "0")
    consumer.attach()
    producer.on_rtp(packet(1))
    producer.on_rtp(packet(2, KEYFRAME))
    producer.on_rtp(packet(3))
    assert len(sent) == 2
