"""Raw RTP header access for the forwarding path (RFC 3550, RFC 8285).

Packets stay ``bytes`` from decryption to re-encryption: the SFU reads the few header
fields it needs with ``struct`` and writes a new header per subscriber. Parsing a full
``aiortc.rtp.RtpPacket`` costs several times more and is never done per packet.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_RTCP_HEADER = struct.Struct("!BBHII")
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000



class MalformedRtp(ValueError):
    """The bytes are not a well-formed RTP packet."""


@dataclass(slots=True)
class InboundPacket:
    """One publisher packet, parsed once and shared by every consumer of the track."""

    payload_type: int
    sequence_number: int
    timestamp: int
    marker: int
    ssrc: int
    payload: bytes  # payload plus any padding, copied verbatim
    padding: bool
    audio_level: bytes | None = None  # the one-byte ssrc-audio-level element value, if present
    keyframe: bool = False



def parse(data: bytes, audio_level_id: int = 0, mid_id: int = 0) -> tuple[InboundPacket, bytes | None]:
    """Parse the header fields the SFU needs; also return the MID extension value if asked."""
    length = len(data)
    if length < 12:
        raise MalformedRtp("shorter than an RTP header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
    if b0 >> 6 != 2:
        raise MalformedRtp("not RTP version 2")
    offset = 12 + 4 * (b0 & 0x0F)
    audio_level: bytes | None = None
    mid: bytes | None = None
    if b0 & 0x10:
        if length < offset + 4:
            raise MalformedRtp("truncated extension header")
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        start = offset + 4
        offset = start + 4 * words
        if offset > length:
            raise MalformedRtp("truncated extension block")
        if audio_level_id or mid_id:
            audio_level, mid = _read_extensions(data, start, offset, profile, audio_level_id, mid_id)
    padding = bool(b0 & 0x20)
    if padding:
        if length <= offset or data[-1] == 0 or data[-1] > length - offset:
            raise MalformedRtp("bad padding")
    elif offset > length:
        raise MalformedRtp("truncated packet")
    packet = InboundPacket(b1 & 0x7F, seq, ts, b1 >> 7, ssrc, data[offset:], padding, audio_level)
    return packet, mid


def _elements(data: bytes, start: int, end: int, profile: int) -> Iterator[tuple[int, int, int]]:
    """Yield (id, value offset, value size) for each RFC 8285 element in a block."""
    one_byte = profile == ONE_BYTE_PROFILE
    if not one_byte and profile & TWO_BYTE_PROFILE_MASK != TWO_BYTE_PROFILE:
        return
    i = start
    while i < end:
        byte = data[i]
        if byte == 0:  # padding
            i += 1
            continue
        if one_byte:
            if byte >> 4 == 15:
                return
            ext_id, size, value_at = byte >> 4, (byte & 0x0F) + 1, i + 1
        else:
            if i + 1 >= end:
                return
            ext_id, size, value_at = byte, data[i + 1], i + 2
        yield ext_id, value_at, size
        i = value_at + size


def _read_extensions(
    data: bytes, start: int, end: int, profile: int, audio_level_id: int, mid_id: int
) -> tuple[bytes | None, bytes | None]:
    audio_level: bytes | None = None
    mid: bytes | None = None
    for ext_id, value_at, size in _elements(data, start, end, profile):
        if ext_id == audio_level_id and size >= 1:
            audio_level = data[value_at : value_at + 1]
        elif ext_id == mid_id:
            mid = data[value_at : value_at + size]
    return audio_level, mid


def extension_values(data: bytes) -> dict[int, bytes]:
    """{id: value} of every header extension element of a packet (not for the per-packet
    path: for learning what an unknown SSRC is)."""
    if len(data) < 12 or not data[0] & 0x10:
        return {}
    offset = 12 + 4 * (data[0] & 0x0F)
    if len(data) < offset + 4:
        return {}
    profile, words = _EXT_HEADER.unpack_from(data, offset)
    end = min(len(data), offset + 4 + 4 * words)
    return {ext_id: data[at : at + size] for ext_id, at, size in _elements(data, offset + 4, end, profile)}


pack_header = _HEADER.pack


def one_byte_element(ext_id: int, value: bytes) -> bytes:
    """An RFC 8285 one-byte-header element (1-16 bytes of value)."""
    if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
        raise ValueError("extension does not fit the one-byte form")
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value


def extension_block(elements: bytes) -> bytes:
    """Wrap one-byte elements in an extension block, padded to 32-bit words."""
    pad = -len(elements) % 4
    return _EXT_HEADER.pack(ONE_BYTE_PROFILE, (len(elements) + pad) // 4) + elements + b"\x00" * pad


class ExtensionLayout:
    """One subscriber's extension block: fixed one-byte elements (its MID) plus at most
    one element whose value changes per packet (abs-send-time or audio level).

    Built once per negotiation, so the per-packet cost is a join of ready-made pieces.
    """

    def __init__(self, fixed: bytes, variable_id: int = 0, variable_size: int = 0) -> None:
        self.variable = bool(variable_id)
        body = len(fixed) + (1 + variable_size if variable_id else 0)
        pad = -body % 4
        self.prefix = _EXT_HEADER.pack(ONE_BYTE_PROFILE, (body + pad) // 4) + fixed
        if variable_id:
            self.prefix += bytes(((variable_id << 4) | (variable_size - 1),))
        self.suffix = b"\x00" * pad
        self.plain = extension_block(fixed) if fixed else b""  # when the variable value is absent

    @property
    def empty(self) -> bool:
        return not self.variable and not self.plain


def rtcp_nack(ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    """A generic NACK (RFC 4585 6.2.1) for ``lost``, given in sending order.

    Built here rather than with aiortc's RtcpRtpfbPacket, whose bitmask arithmetic fails
    when the lost range wraps from 65535 to 0.
    """
    fci = bytearray()
    pid: int | None = None
    blp = 0
    for seq in lost:
        seq &= 0xFFFF
        if pid is not None:
            distance = (seq - pid - 1) & 0xFFFF
            if distance < 16:
                blp |= 1 << distance
                continue
            fci += _EXT_HEADER.pack(pid, blp)
        pid, blp = seq, 0
    if pid is not None:
        fci += _EXT_HEADER.pack(pid, blp)
    return _RTCP_HEADER.pack(0x81, 205, 2 + len(fci) // 4, ssrc, media_ssrc) + bytes(fci)


def abs_send_time() -> bytes:
    """Now, as the 24-bit 6.18 fixed-point abs-send-time extension value."""
    return (int(time.time() * 262144) & 0xFFFFFF).to_bytes(3, "big")
