"""A Consumer is one (published track, subscriber) pair going out.

It owns the rewrite state for its subscriber: SSRC, payload types negotiated with that
subscriber, sequence-number and timestamp offsets (gaps preserved, so NACKs map back to
the producer's cache), and the MID header extension. It starts video at a keyframe.
"""

from __future__ import annotations

import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from . import rtp
from .producer import CodecInfo, Producer
from .rtp import InboundPacket

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

# Retransmissions per subscriber: a token bucket, so a NACK storm (or a hostile subscriber)
# cannot turn the SFU into an amplifier.
RTX_RATE = 1000.0  # packets per second
RTX_BURST = 256.0


@dataclass(slots=True)
class SendStats:
    packets: int = 0
    octets: int = 0
    retransmitted: int = 0
    nacks_received: int = 0
    plis_received: int = 0
    remb_bitrate: int | None = None
    remb_at: float = 0.0  # monotonic time of the last REMB
    fraction_lost: int = 0


class Consumer:
    """Forwards one producer's packets to one subscriber transport."""

    def __init__(self, producer: Producer, write: Callable[[bytes], bool], ssrc: int, rtx_ssrc: int) -> None:
        self.producer = producer
        self.kind = producer.kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.stats = SendStats()
        self.paused = True  # until the subscriber's transport and answer are ready
        self._write = write
        self._pt_map: dict[int, int] = {}
        self._rtx_pts: dict[int, int] = {}  # subscriber media pt -> its RTX pt
        self._rtx_seq = random.randint(0, 0x7FFF)
        self._layout = rtp.ExtensionLayout(b"")
        self._clock_rate = 90000 if self.kind == "video" else 48000
        self._needs_keyframe = self.kind == "video"
        self._seq_offset: int | None = None
        self._ts_offset = 0
        self._start_seq = 0
        self._next_seq = random.randint(0, 0x7FFF)
        self._next_ts = random.randint(0, 0xFFFFFFFF)
        self._resume_from: tuple[int, float] | None = None  # (last out timestamp, when) after a pause
        self._attached = False
        self._rtx_tokens = RTX_BURST
        self._rtx_refilled = time.monotonic()

    # --- negotiation -------------------------------------------------------------------

    def configure(self, codecs: list[CodecInfo], rtx_apt: dict[int, int], header_extensions: Sequence[Any], mid: str | None) -> bool:
        """Map the producer's payload types onto the subscriber's; False if none match."""
        by_key = {c.key: c for c in codecs}
        pt_map: dict[int, int] = {}
        for pt, codec in self.producer.codecs.items():
            mine = by_key.get(codec.key)
            if mine is not None:
                pt_map[pt] = mine.payload_type
                self._clock_rate = mine.clock_rate
        self._pt_map = pt_map
        self._rtx_pts = {apt: rtx for rtx, apt in rtx_apt.items()}
        ids = {getattr(e, "uri"): getattr(e, "id") for e in header_extensions}
        mid_id = ids.get(MID_URI, 0)
        fixed = rtp.one_byte_element(mid_id, mid.encode()) if mid_id and mid else b""
        if self.kind == "video":
            self._layout = rtp.ExtensionLayout(fixed, ids.get(ABS_SEND_TIME_URI, 0), 3)
        else:
            self._layout = rtp.ExtensionLayout(fixed, ids.get(AUDIO_LEVEL_URI, 0), 1)
        return bool(pt_map)

    def attach(self) -> None:
        """Start forwarding (the subscriber's sender is up)."""
        logger.debug("track %s -> ssrc %d: attached", self.producer.track_sid, self.ssrc)
        self.paused = False
        if not self._attached:
            self._attached = True
            self.producer.add_consumer(self)
        self._restart()

    @property
    def waiting_for_keyframe(self) -> bool:
        return not self.paused and self._seq_offset is None and self._needs_keyframe

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        if self.paused and self._attached:
            self.paused = False
            self._restart()

    def detach(self) -> None:
        self.paused = True
        if self._attached:
            self._attached = False
            self.producer.remove_consumer(self)

    def continuation(self) -> tuple[int, tuple[int, float] | None, int]:
        """Where the next stream on this SSRC must go on from: (next sequence number,
        (last timestamp, when it was current), next RTX sequence number)."""
        producer = self.producer
        if self._seq_offset is not None and producer.stats.base_seq is not None:
            # Everything sent so far came from input <= the producer's newest packet.
            next_seq = (producer.stats.max_seq + self._seq_offset + 1) & 0xFFFF
            resume = ((producer.last_timestamp + self._ts_offset) & 0xFFFFFFFF, producer.last_arrival)
            return next_seq, resume, self._rtx_seq
        return self._next_seq, self._resume_from, self._rtx_seq

    def continue_from(self, state: tuple[int, tuple[int, float] | None, int]) -> None:
        """Take over an SSRC from an earlier consumer without a sequence or timestamp jump."""
        self._next_seq, self._resume_from, self._rtx_seq = state

    def _restart(self) -> None:
        """Continue the outgoing stream from the next keyframe, without a sequence jump."""
        self.continue_from(self.continuation())
        self._seq_offset = None
        self._needs_keyframe = self.kind == "video"
        if self._needs_keyframe:
            self.producer.request_keyframe()

    # --- the per-packet path -----------------------------------------------------------

    def forward(self, packet: InboundPacket, abs_send_time: bytes) -> None:
        if self.paused:
            return
        offset = self._seq_offset
        if offset is None:
            if self._needs_keyframe and not packet.keyframe:
                return
            self._begin(packet)
            offset = self._seq_offset
            assert offset is not None
        else:
            behind = (packet.sequence_number - self._start_seq) & 0xFFFF
            if behind >= 0x8000:
                return  # older than where this subscriber's stream began
            if behind > 0x4000:  # slide the window so a long stream never looks "old"
                self._start_seq = (packet.sequence_number - 0x1000) & 0xFFFF
        out_pt = self._pt_map.get(packet.payload_type)
        if out_pt is None:
            return
        seq = (packet.sequence_number + offset) & 0xFFFF
        ts = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        if self._write(self._build(packet, out_pt, seq, ts, self.ssrc, abs_send_time, b"")):
            stats = self.stats
            stats.packets += 1
            stats.octets += len(packet.payload)

    def _begin(self, packet: InboundPacket) -> None:
        if self._resume_from is not None:
            timestamp, at = self._resume_from
            elapsed = max(0.0, time.monotonic() - at)
            self._next_ts = (timestamp + int(elapsed * self._clock_rate) + 1) & 0xFFFFFFFF
            self._resume_from = None
        self._seq_offset = (self._next_seq - packet.sequence_number) & 0xFFFF
        self._ts_offset = (self._next_ts - packet.timestamp) & 0xFFFFFFFF
        self._start_seq = packet.sequence_number
        self._needs_keyframe = False
        logger.debug("track %s -> ssrc %d: starting at seq %d", self.producer.track_sid, self.ssrc, packet.sequence_number)

    def _build(self, packet: InboundPacket, pt: int, seq: int, ts: int, ssrc: int, abs_send_time: bytes, prefix: bytes) -> bytes:
        layout = self._layout
        value = abs_send_time if self.kind == "video" else packet.audio_level
        b0 = 0xA0 if packet.padding else 0x80
        if layout.variable and value is not None:
            head = rtp.pack_header(b0 | 0x10, (packet.marker << 7) | pt, seq, ts, ssrc)
            return b"".join((head, layout.prefix, value, layout.suffix, prefix, packet.payload))
        if layout.plain:
            head = rtp.pack_header(b0 | 0x10, (packet.marker << 7) | pt, seq, ts, ssrc)
            return b"".join((head, layout.plain, prefix, packet.payload))
        return b"".join((rtp.pack_header(b0, (packet.marker << 7) | pt, seq, ts, ssrc), prefix, packet.payload))

    # --- RTCP from the subscriber ------------------------------------------------------

    def remb(self, max_age: float = 5.0) -> int | None:
        """The subscriber's latest bandwidth estimate, if it is recent."""
        if self.stats.remb_bitrate is not None and time.monotonic() - self.stats.remb_at <= max_age:
            return self.stats.remb_bitrate
        return None

    def on_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.stats.nacks_received += 1
            self._retransmit(packet.lost)
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.stats.plis_received += 1
                self.producer.request_keyframe()
            elif packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except (ValueError, struct.error):
                    return
                if self.ssrc in ssrcs:
                    self.stats.remb_bitrate = bitrate
                    self.stats.remb_at = time.monotonic()
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == self.ssrc:
                    self.stats.fraction_lost = report.fraction_lost

    def _retransmit(self, lost: list[int]) -> None:
        offset = self._seq_offset
        if offset is None or self.paused:
            return
        now = time.monotonic()
        self._rtx_tokens = min(RTX_BURST, self._rtx_tokens + (now - self._rtx_refilled) * RTX_RATE)
        self._rtx_refilled = now
        abs_send_time = rtp.abs_send_time()
        for seq in lost:
            if self._rtx_tokens < 1:
                return
            seq &= 0xFFFF  # aiortc's NACK parser does not wrap
            source = (seq - offset) & 0xFFFF
            if (source - self._start_seq) & 0xFFFF >= 0x8000:
                continue  # sent before this stream (re)started: another packet had that number
            packet = self.producer.cached(source)
            if packet is None:
                continue
            pt = self._pt_map.get(packet.payload_type)
            if pt is None:
                continue
            ts = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
            rtx_pt = self._rtx_pts.get(pt)
            if rtx_pt is not None:
                data = self._build(packet, rtx_pt, self._rtx_seq, ts, self.rtx_ssrc, abs_send_time, seq.to_bytes(2, "big"))
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            else:
                data = self._build(packet, pt, seq, ts, self.ssrc, abs_send_time, b"")
            if self._write(data):
                self.stats.retransmitted += 1
                self._rtx_tokens -= 1

    # --- RTCP to the subscriber --------------------------------------------------------

    def sender_report(self) -> RtcpSrPacket | None:
        """An SR that maps our timestamps onto the publisher's NTP clock (keeps lip sync)."""
        stats = self.stats
        source = self.producer.stats
        if stats.packets == 0 or self._seq_offset is None or source.sr_ntp is None:
            return None
        elapsed = time.time() - source.sr_arrival
        ntp = source.sr_ntp_full + int(elapsed * (1 << 32))
        rtp_ts = (source.sr_rtp + self._ts_offset + int(elapsed * self._clock_rate)) & 0xFFFFFFFF
        return RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp & 0xFFFFFFFFFFFFFFFF,
                rtp_timestamp=rtp_ts,
                packet_count=stats.packets & 0xFFFFFFFF,
                octet_count=stats.octets & 0xFFFFFFFF,
            ),
        )
