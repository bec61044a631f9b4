"""A Producer is one audio or video track as it arrives from its publisher.

It parses each decrypted packet once, unwraps RTX, keeps a retransmission cache shared
by all its consumers, asks the publisher for lost packets (NACK) and keyframes (PLI),
and hands the packet to each forward function of its fan-out list. It never decodes, and
it knows no consumers: the room's Router (sfu.media.router) owns the producer -> consumers
map and hands the producer the list of forward methods (``set_fan_out``).

The fan-out starts at a different consumer for each packet (round robin), so no
subscriber consistently waits for all the others' copies to be built and queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..contracts import Kind, MediaCounters
from . import rtp
from .audiolevel import ACTIVE_DBOV
from .codecs import KeyframeProbe, keyframe_probe
from .keyframes import KeyframeRequester
from .rtp import InboundPacket
from .source import CodecInfo, ReceiveStats

logger = logging.getLogger(__name__)

MAX_NACK_BATCH = 64
KEYFRAME_MAX_AGE = 1.0  # seconds: a cached keyframe older than this does not start a consumer


class Producer:
    """Receives one publisher track and fans its packets out to consumers (a
    ``contracts.TrackSource``)."""

    data_options = None  # (a media track)

    def __init__(
        self,
        track_sid: str,
        kind: Kind,
        send_pli: Callable[[int], None],
        send_nack: Callable[[int, list[int]], None],
        cache_size: int = 512,
        keyframe_interval: float = 0.5,
    ) -> None:
        self.track_sid = track_sid
        self.kind = kind
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.codecs: dict[int, CodecInfo] = {}
        self.rtx_apt: dict[int, int] = {}
        self.audio_level_id = 0
        self.mid_id = 0
        self.nack_enabled = False
        self.remb_enabled = False
        # The forward methods of the consumers that forward now (attached, not paused, not
        # shed), set by the Router: replaced, never mutated, so a fan-out in progress is never
        # disturbed.
        self._forwards: list[Callable[[InboundPacket, bytes], None]] = []
        self._turn = 0  # where the next fan-out starts in _forwards
        self.stats = ReceiveStats()
        self.last_timestamp = 0  # RTP timestamp of the newest packet, and when it came
        self.last_arrival = 0.0
        self._send_nack = send_nack
        self._send_pli = send_pli
        self._probes: dict[int, KeyframeProbe] = {}
        self._cache_size = cache_size if kind == "video" else 0
        self._cache: list[InboundPacket | None] = [None] * self._cache_size
        self._keyframes = KeyframeRequester(self._pli_now, keyframe_interval)
        self._keyframe_seq: int | None = None  # first packet of the newest keyframe seen
        self._keyframe_at = 0.0
        self.keyframe_max_age = KEYFRAME_MAX_AGE
        self.cached_starts = 0  # consumers started from the cached keyframe (no PLI waited for)
        # RFC 6464 audio levels since the media plane last read them (sfu.media.audiolevel):
        # packets carrying one, those at voice level, and their summed -dBov values.
        self.level_packets = 0
        self.level_active = 0
        self.level_active_dbov = 0
        self.closed = False

    # --- negotiation -------------------------------------------------------------------

    def configure(
        self,
        codecs: list[CodecInfo],
        rtx_apt: dict[int, int],
        audio_level_id: int,
        mid_id: int,
        nack_enabled: bool,
        remb_enabled: bool = False,
    ) -> None:
        self.codecs = {c.payload_type: c for c in codecs}
        self.remb_enabled = remb_enabled and self.kind == "video"
        self.rtx_apt = dict(rtx_apt)
        self.audio_level_id = audio_level_id
        self.mid_id = mid_id
        self.nack_enabled = nack_enabled and self.kind == "video"
        self._probes = {}
        for c in codecs:
            probe = keyframe_probe(c.mime_type)
            if probe is not None:
                self._probes[c.payload_type] = probe

    def set_ssrcs(self, ssrc: int | None, rtx_ssrc: int | None) -> None:
        if ssrc is not None:
            self.ssrc = ssrc
        if rtx_ssrc is not None:
            self.rtx_ssrc = rtx_ssrc

    @property
    def counters(self) -> MediaCounters:
        stats = self.stats
        return MediaCounters(packets=stats.packets, octets=stats.octets, lost=stats.lost_detected)

    @property
    def primary_codec(self) -> CodecInfo | None:
        return next(iter(self.codecs.values()), None)

    # --- the per-packet path -----------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        """Handle one decrypted packet from the publisher."""
        try:
            packet, _ = rtp.parse(data, self.audio_level_id)
        except rtp.MalformedRtp:
            return
        if packet.ssrc != self.ssrc:
            if packet.ssrc == self.rtx_ssrc or packet.payload_type in self.rtx_apt:
                unwrapped = self._unwrap_rtx(packet)
                if unwrapped is None:
                    return
                packet = unwrapped
            elif self.ssrc is None:
                self.ssrc = packet.ssrc
            else:
                return  # a stray SSRC (e.g. a stale stream after renegotiation)
        elif packet.payload_type in self.rtx_apt:
            return
        if packet.payload_type not in self.codecs:
            return
        cache = self._cache
        if cache:
            slot = packet.sequence_number % self._cache_size
            cached = cache[slot]
            if cached is not None and cached.sequence_number == packet.sequence_number:
                return  # duplicate (a retransmission we already had)
            cache[slot] = packet
        probe = self._probes.get(packet.payload_type)
        if probe is not None and packet.payload and probe(packet.payload):
            packet.keyframe = True
            self._keyframe_seen(packet.sequence_number)
        self._count(packet, len(data))
        level = packet.audio_level
        if level is not None:  # (one byte, already sliced by rtp.parse)
            dbov = level[0] & 0x7F
            self.level_packets += 1
            if dbov <= ACTIVE_DBOV:
                self.level_active += 1
                self.level_active_dbov += dbov
        forwards = self._forwards
        if not forwards:
            return
        abs_send_time = rtp.abs_send_time() if self.kind == "video" else b""
        start = self._turn
        if start >= len(forwards):
            start = 0
        self._turn = start + 1
        for forward in forwards[start:]:
            forward(packet, abs_send_time)
        if start:
            for forward in forwards[:start]:
                forward(packet, abs_send_time)

    def _unwrap_rtx(self, packet: InboundPacket) -> InboundPacket | None:
        apt = self.rtx_apt.get(packet.payload_type)
        payload = packet.payload
        if packet.padding:
            payload = payload[: len(payload) - payload[-1]]
        if apt is None or len(payload) <= 2:
            return None  # padding-only RTX is bandwidth probing: nothing to forward
        if self.rtx_ssrc is None:
            self.rtx_ssrc = packet.ssrc
        osn = (payload[0] << 8) | payload[1]
        return InboundPacket(apt, osn, packet.timestamp, packet.marker, self.ssrc or 0, payload[2:], False, packet.audio_level)

    def _count(self, packet: InboundPacket, size: int) -> None:
        stats = self.stats
        seq = packet.sequence_number
        stats.packets += 1
        stats.octets += size
        if stats.base_seq is None:
            stats.base_seq = seq
            stats.max_seq = seq
            self.last_timestamp, self.last_arrival = packet.timestamp, time.monotonic()
            return
        delta = (seq - stats.max_seq) & 0xFFFF
        if delta == 0 or delta >= 0x8000:
            return  # late or duplicate
        if seq < stats.max_seq:
            stats.cycles += 0x10000
        if delta > 1 and self.nack_enabled and self.ssrc is not None:
            missing = [(stats.max_seq + i) & 0xFFFF for i in range(1, min(delta, MAX_NACK_BATCH + 1))]
            stats.lost_detected += len(missing)
            self._send_nack(self.ssrc, missing)
        stats.max_seq = seq
        self.last_timestamp, self.last_arrival = packet.timestamp, time.monotonic()

    def take_levels(self) -> tuple[int, int, int]:
        """The audio level counts since the last call (packets, voice packets, their summed
        -dBov), and start counting again."""
        counts = (self.level_packets, self.level_active, self.level_active_dbov)
        self.level_packets = self.level_active = self.level_active_dbov = 0
        return counts

    # --- retransmission and keyframes --------------------------------------------------

    def _keyframe_seen(self, seq: int) -> None:
        last = self._keyframe_seq
        if last is not None and (seq - last) & 0xFFFF >= 0x8000:
            return  # a retransmitted older keyframe: not the newest
        self._keyframe_seq = seq
        self._keyframe_at = time.monotonic()
        self._keyframes.keyframe_received()

    def recent_keyframe(self) -> list[InboundPacket] | None:
        """The newest keyframe and every packet after it, in order, if the cache holds them
        all (no gap up to the newest packet) and the keyframe is at most ``keyframe_max_age``
        seconds old: a new subscriber can start from these without waiting for a PLI."""
        first = self._keyframe_seq
        stats = self.stats
        if first is None or not self._cache or stats.base_seq is None:
            return None
        if time.monotonic() - self._keyframe_at > self.keyframe_max_age:
            return None
        count = ((stats.max_seq - first) & 0xFFFF) + 1
        if count > self._cache_size:
            return None
        packets = []
        for i in range(count):
            packet = self.cached((first + i) & 0xFFFF)
            if packet is None:
                return None
            packets.append(packet)
        return packets if packets[0].keyframe else None

    def cached(self, sequence_number: int) -> InboundPacket | None:
        if not self._cache:
            return None
        packet = self._cache[sequence_number % self._cache_size]
        if packet is not None and packet.sequence_number == sequence_number:
            return packet
        return None

    def request_keyframe(self, urgent: bool = False) -> None:
        """Ask the publisher for a keyframe: ``urgent`` for a subscriber that is starting
        (not held back by the rate limit, coalesced with a PLI already on its way)."""
        if self.kind == "video" and not self.closed:
            if urgent:
                self._keyframes.request_urgent()
            else:
                self._keyframes.request()

    @property
    def keyframe_requests_sent(self) -> int:
        return self._keyframes.sent

    @property
    def keyframe_requests_coalesced(self) -> int:
        """Starting subscribers served by a PLI already on its way (no PLI of their own)."""
        return self._keyframes.coalesced

    def _pli_now(self) -> None:
        logger.debug("track %s: PLI to ssrc %s", self.track_sid, self.ssrc)
        if self.ssrc is not None:
            self._send_pli(self.ssrc)

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        stats = self.stats
        stats.sr_ntp = (ntp_timestamp >> 16) & 0xFFFFFFFF
        stats.sr_ntp_full = ntp_timestamp
        stats.sr_rtp = rtp_timestamp
        stats.sr_arrival = time.time()

    # --- lifecycle ---------------------------------------------------------------------

    def set_fan_out(self, forwards: list[Callable[[InboundPacket, bytes], None]]) -> None:
        """The forward methods each packet goes to from now on (the Router's list)."""
        self._forwards = forwards

    def close(self) -> None:
        """(The Router detaches its consumers: ``Router.remove_source``.)"""
        self.closed = True
        self._keyframes.close()
        self._forwards = []
        self._cache = []
