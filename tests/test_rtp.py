"""Raw RTP parsing and the per-codec keyframe probes, against aiortc's own serializer."""

from __future__ import annotations

import pytest
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from sfu.media import rtp
from sfu.media.codecs import codec_key, h264, vp8


def aiortc_packet(**fields) -> RtpPacket:
    packet = RtpPacket(payload_type=fields.get("pt", 96), sequence_number=fields.get("seq", 65535), timestamp=fields.get("ts", 4_000_000_000))
    packet.ssrc = fields.get("ssrc", 0x12345678)
    packet.marker = fields.get("marker", 1)
    packet.payload = fields.get("payload", b"\x10\x00payload")
    return packet


def extensions_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=2, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    ]))
    return m


def test_parse_reads_header_fields_and_extensions() -> None:
    packet = aiortc_packet()
    packet.extensions.mid = "7"
    packet.extensions.audio_level = (True, 42)
    packet.extensions.abs_send_time = 0x123456
    data = packet.serialize(extensions_map())
    parsed, mid = rtp.parse(data, audio_level_id=2, mid_id=1)
    assert (parsed.payload_type, parsed.sequence_number, parsed.timestamp, parsed.ssrc, parsed.marker) == (96, 65535, 4_000_000_000, 0x12345678, 1)
    assert parsed.payload == b"\x10\x00payload"
    assert mid == b"7"
    assert parsed.audio_level == bytes([0x80 | 42])


def test_rewritten_packet_parses_back_with_aiortc() -> None:
    packet = aiortc_packet(payload=b"abc" * 100)
    parsed, _ = rtp.parse(packet.serialize(extensions_map()))
    elements = rtp.one_byte_element(1, b"12") + bytes(((3 << 4) | 2,)) + (0xABCDEF).to_bytes(3, "big")
    out = rtp.pack_header(0x90, (parsed.marker << 7) | 111, 17, 99, 0xCAFEBABE) + rtp.extension_block(elements) + parsed.payload
    again = RtpPacket.parse(out, extensions_map())
    assert (again.payload_type, again.sequence_number, again.timestamp, again.ssrc) == (111, 17, 99, 0xCAFEBABE)
    assert again.extensions.mid == "12"
    assert again.extensions.abs_send_time == 0xABCDEF
    assert again.payload == b"abc" * 100


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80" * 11, b"\x00" * 12, b"\x90\x60" + b"\x00" * 10, b"\x90\x60" + b"\x00" * 10 + b"\xbe\xde\x00\x09", b"\xa0\x60" + b"\x00" * 10 + b"\x00\x05"],
    ids=["empty", "short", "version0", "truncated-ext-header", "ext-past-end", "bad-padding"],
)
def test_parse_refuses_garbage(data: bytes) -> None:
    with pytest.raises(rtp.MalformedRtp):
        rtp.parse(data)



def test_vp8_keyframe_probe() -> None:
    # S=1, PID=0, then a payload header with the P bit clear: a keyframe start.
    assert vp8.is_keyframe_start(bytes([0x10, 0x00]))
    assert not vp8.is_keyframe_start(bytes([0x10, 0x01]))  # P bit set: interframe
    assert not vp8.is_keyframe_start(bytes([0x00, 0x00]))  # not the start of a partition
    # X with a 15-bit picture id, TL0PICIDX and TID/KEYIDX
    assert vp8.is_keyframe_start(bytes([0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x00]))
    assert not vp8.is_keyframe_start(bytes([0x90, 0xE0, 0x81]))  # truncated


def test_h264_keyframe_probe() -> None:
    assert h264.is_keyframe_start(bytes([0x67, 0x42]))  # SPS
    assert h264.is_keyframe_start(bytes([0x65, 0x88]))  # IDR slice
    assert not h264.is_keyframe_start(bytes([0x41, 0x9A]))  # non-IDR slice
    stap = bytes([0x78]) + (2).to_bytes(2, "big") + bytes([0x67, 0x42]) + (2).to_bytes(2, "big") + bytes([0x68, 0xCE])
    assert h264.is_keyframe_start(stap)
    assert h264.is_keyframe_start(bytes([0x7C, 0x85, 0x00]))  # FU-A start of an IDR
    assert not h264.is_keyframe_start(bytes([0x7C, 0x05, 0x00]))  # FU-A continuation
    assert not h264.is_keyframe_start(bytes([0x78, 0x00, 0x00]))  # empty STAP-A


def test_codec_identity_for_forwarding() -> None:
    assert codec_key("video/VP8", {}) == codec_key("video/vp8", {"x": 1})
    assert codec_key("video/H264", {"packetization-mode": 1, "profile-level-id": "42e01f"}) != codec_key(
        "video/H264", {"packetization-mode": 1, "profile-level-id": "42001f"}
    )
