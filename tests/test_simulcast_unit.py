"""Simulcast without a network: the SDP the SFU offers and reads back, RID mapping, and a
subscriber's layer switches driven packet by packet (only at keyframes of the target layer,
with sequence numbers, timestamps, VP8 picture IDs and TL0PICIDX continuous)."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
from aiortc.rtp import RtpPacket

from sfu.media import rtp, simulcast
from sfu.media.codecs import vp8
from sfu.media.consumer import Consumer
from sfu.media.producer import Producer
from sfu.media.router import Router
from sfu.media.source import CodecInfo

VP8 = CodecInfo(97, "video/VP8", 90000, ("video/vp8",))
EXTENSIONS = [Ext(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"), Ext(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]
SSRCS = {"q": 1000, "h": 2000, "f": 3000}


def vp8_payload(pid: int, tl0: int, keyframe: bool, start: bool = True, size: tuple[int, int] = (320, 180)) -> bytes:
    """A VP8 payload descriptor with a 15-bit picture ID and TL0PICIDX, then a frame header."""
    descriptor = bytes([0x90 if start else 0x80, 0xC0, 0x80 | (pid >> 8), pid & 0xFF, tl0])
    if keyframe and start:
        header = b"\x00\x00\x00\x9d\x01\x2a" + size[0].to_bytes(2, "little") + size[1].to_bytes(2, "little")
    else:
        header = b"\x01\x00\x00"
    return descriptor + header + b"x" * 30


class Layer:
    """One simulcast stream of the publisher: its own SSRC, sequence, timestamps and picture IDs."""

    def __init__(self, rid: str, seq: int, ts: int, pid: int, tl0: int) -> None:
        self.rid, self.seq, self.ts, self.pid, self.tl0 = rid, seq, ts, pid, tl0

    def frame(self, keyframe: bool = False, packets: int = 2) -> list[bytes]:
        out = []
        for i in range(packets):
            p = RtpPacket(payload_type=97, sequence_number=self.seq & 0xFFFF, timestamp=self.ts & 0xFFFFFFFF, marker=int(i == packets - 1))
            p.ssrc = SSRCS[self.rid]
            p.payload = vp8_payload(self.pid, self.tl0, keyframe, start=i == 0)
            out.append(p.serialize())
            self.seq += 1
        self.ts += 3000
        self.pid = (self.pid + 1) & 0x7FFF
        self.tl0 = (self.tl0 + 1) & 0xFF
        return out


def setup(rids: list[str]) -> tuple[Producer, Consumer, list[RtpPacket], list[int], Router]:
    plis: list[int] = []
    producer = Producer("MT1", "video", plis.append, lambda ssrc, lost: None)
    producer.configure([VP8], {98: 97}, 0, 1, True)
    producer.set_layers(rids)
    for layer in producer.layers:
        assert layer.rid is not None
        layer.set_ssrcs(SSRCS[layer.rid], None)
    router = Router()
    sent: list[RtpPacket] = []

    def write(data: bytes) -> bool:
        sent.append(RtpPacket.parse(data))
        return True

    consumer = Consumer(producer, router, write, 5555, 6666, guard=None)
    consumer.configure([VP8], {98: 97}, EXTENSIONS, "3")
    consumer.attach()
    return producer, consumer, sent, plis, router


def feed(producer: Producer, packets: list[bytes]) -> None:
    by_ssrc = {layer.ssrc: layer for layer in producer.layers}
    for data in packets:
        by_ssrc[int.from_bytes(data[8:12], "big")].on_rtp(data)


def assert_continuous(sent: list[RtpPacket]) -> None:
    """Each packet's sequence number follows the previous one; timestamps never go back; each
    new picture's ID and TL0PICIDX are the previous picture's plus one."""
    for a, b in zip(sent, sent[1:]):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1, (a.sequence_number, b.sequence_number)
        assert 0 <= (b.timestamp - a.timestamp) & 0xFFFFFFFF < 0x80000000, (a.timestamp, b.timestamp)
        pa, ta = vp8.read_picture_ids(a.payload)
        pb, tb = vp8.read_picture_ids(b.payload)
        assert pa is not None and pb is not None and ta is not None and tb is not None
        if b.timestamp == a.timestamp:
            assert (pb, tb) == (pa, ta)
        else:
            assert (pb - pa) & 0x7FFF == 1, (pa, pb)
            assert (tb - ta) & 0xFF == 1, (ta, tb)


def test_the_offer_carries_rids_for_video_publications_and_the_answer_names_the_layers() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:0\r\na=recvonly\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=rtpmap:97 VP8/90000\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:1\r\na=sendonly\r\na=rtpmap:97 VP8/90000\r\n"
    )
    sdp = simulcast.offer_simulcast(offer, {"0"})
    first, second = sdp.split("m=video")[1:]
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f" in first
    assert f"a=extmap:3 {simulcast.RID_URI}" in first and f"a=extmap:4 {simulcast.REPAIRED_RID_URI}" in first
    assert "a=rid" not in second and sdp.endswith("\r\n")
    answer = first.replace("a=recvonly", "a=sendonly").replace("recv", "send")
    answer = "v=0\r\nm=video" + answer.replace("a=simulcast:send q;h;f", "a=simulcast:send f;~h;q")
    parsed = simulcast.answered_simulcast(answer)
    assert parsed == {"0": simulcast.SimulcastAnswer(["q", "h", "f"], 3, 4)}  # low to high, paused ones too
    assert simulcast.answered_simulcast(offer.replace("a=recvonly", "a=sendonly")) == {}


def test_rid_header_extension_values_are_read_from_a_packet() -> None:
    p = RtpPacket(payload_type=97, sequence_number=1, timestamp=1)
    p.ssrc = 42
    p.payload = b"x"
    data = p.serialize()
    ext = rtp.extension_block(rtp.one_byte_element(1, b"0") + rtp.one_byte_element(10, b"h"))
    data = bytes([data[0] | 0x10]) + data[1:12] + ext + data[12:]
    assert rtp.extension_values(data) == {1: b"0", 10: b"h"}


def test_a_subscriber_gets_one_layer_and_switches_only_at_a_keyframe_of_the_target() -> None:
    producer, consumer, sent, plis, router = setup(["q", "h", "f"])
    q, h, f = Layer("q", 100, 10_000, 1000, 10), Layer("h", 30_000, 500_000, 20_000, 200), Layer("f", 65_530, 4_000_000, 32_760, 250)
    assert consumer.current_layer == 2 and plis == [3000]  # the highest by default, at its next keyframe
    feed(producer, q.frame(True) + h.frame(True) + f.frame(True))
    for _ in range(5):
        feed(producer, q.frame() + h.frame() + f.frame())
    assert {p.ssrc for p in sent} == {5555} and len(sent) == 12  # f only: 6 frames of 2 packets
    assert producer.layers[2].width == 320  # (the size read from the keyframe header)

    # Down to q: f goes on until q's next keyframe, asked for at once.
    consumer.set_target_layer(0)
    assert plis[-1] == 1000 and consumer.current_layer == 2
    for _ in range(3):
        feed(producer, q.frame() + h.frame() + f.frame())
    assert len(sent) == 18
    feed(producer, f.frame() + q.frame(True) + h.frame() + f.frame())
    assert consumer.current_layer == 0 and consumer.stats.layer_switches == 1
    for _ in range(3):
        feed(producer, q.frame() + h.frame() + f.frame())
    assert len(sent) == 20 + 2 + 6
    assert_continuous(sent)
    assert router.forwarding(producer) == [consumer] and producer.layers[2]._forwards == []

    # Up to h, across the picture-ID and sequence wrap of f's numbering is already behind us.
    consumer.set_target_layer(1)
    feed(producer, h.frame(True) + q.frame())
    assert consumer.current_layer == 1
    feed(producer, h.frame() + q.frame())
    assert_continuous(sent)
    # Retransmissions carry the same rewritten picture IDs as the first copies.
    assert sent[-1].payload == vp8.rewrite_picture_ids(
        producer.layers[1].cached((h.seq - 1) & 0xFFFF).payload, consumer._pid_offset, consumer._tl0_offset  # type: ignore[union-attr]
    )[0]


def test_switched_off_a_subscriber_is_in_no_fan_out_and_comes_back_at_a_keyframe() -> None:
    producer, consumer, sent, plis, router = setup(["q", "h"])
    q, h = Layer("q", 0, 0, 0, 0), Layer("h", 9000, 9000, 9000, 90)
    feed(producer, q.frame(True) + h.frame(True) + h.frame())
    assert len(sent) == 4
    consumer.set_target_layer(None)
    assert consumer.current_layer is None and consumer.stats.switch_offs == 1
    assert all(layer._forwards == [] for layer in producer.layers)  # no per-packet cost at all
    for _ in range(10):
        feed(producer, q.frame() + h.frame())
    assert len(sent) == 4
    producer.layers[0].keyframe_max_age = -1.0  # (no start from q's cached keyframe: wait for the next)
    consumer.set_target_layer(0)
    assert plis[-1] == 1000
    feed(producer, q.frame())
    assert len(sent) == 4  # waits for q's keyframe
    feed(producer, q.frame(True) + q.frame())
    assert len(sent) == 8 and consumer.current_layer == 0
    assert [(p.sequence_number - sent[0].sequence_number) & 0xFFFF for p in sent] == list(range(8))
    assert_continuous(sent)


def test_a_track_without_simulcast_has_one_layer_and_no_rewrite() -> None:
    producer = Producer("MT1", "video", lambda ssrc: None, lambda ssrc, lost: None)
    producer.configure([VP8], {}, 0, 1, True)
    producer.set_layers(["q"])  # one RID is no simulcast
    assert producer.layers == [producer] and not producer.simulcast
    consumer = Consumer(producer, Router(), lambda data: True, 1, 2, guard=None)
    assert consumer.producer is producer and consumer.current_layer == 0 and not consumer._munge
