"""A Consumer is one (published track, subscriber) pair going out.

It owns the rewrite state for its subscriber: SSRC, payload types negotiated with that
subscriber, sequence-number and timestamp offsets (gaps preserved, so NACKs map back to
the producer's cache), and the MID header extension. It starts video at a keyframe: the
newest one in the producer's retransmission cache when that is complete and recent (no
wait for the publisher), else the next one, asked for with an immediate PLI.

While it forwards it is in its producer's fan-out list, which the room's Router keeps
(``FanOut``); pausing (the subscriber side), shedding (the overload guard,
sfu.media.overload) and detaching take it out, so the per-packet path checks none of that.
It reaches its producer only through ``source.MediaSource`` (keyframes, the cache, the
stream's position).

A simulcast track (``Producer.layers``, several encodings) is consumed one layer at a time:
``producer`` is the layer being forwarded, ``source`` the track. ``set_target_layer`` moves to
another layer at that layer's next keyframe (asked for at once): until then the consumer also
waits in the target layer's fan-out (``FanOut.set_pending``), and the first keyframe packet
there moves it over (``FanOut.move``) with sequence numbers and timestamps going on from the
last packet sent, and VP8 picture IDs and TL0PICIDX rewritten in place to go on as well.
``set_target_layer(None)`` switches it off: in no fan-out at all, so it costs nothing.
"""

from __future__ import annotations

import itertools
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

from ..contracts import MediaCounters, Priority
from . import overload, rtp
from .codecs import vp8
from .rtp import InboundPacket
from .source import CodecInfo, FanOut, MediaSource

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

# Retransmissions per subscriber: a token bucket, so a NACK storm (or a hostile subscriber)
# cannot turn the SFU into an amplifier.
RTX_RATE = 1000.0  # packets per second
RTX_BURST = 256.0

_subscription_order = itertools.count()
_pack_header = rtp.pack_header


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
    # From the subscriber's receiver reports (sfu.media.quality): interarrival jitter in
    # RTP clock units, round-trip time in seconds, and the last SR sent (its middle 32 NTP
    # bits and monotonic time), which the RR's LSR/DLSR answer.
    jitter: int = 0
    rtt: float | None = None
    reports: int = 0
    sr_ntp: int = 0
    sr_sent_at: float = 0.0
    layer_switches: int = 0  # completed moves to another simulcast layer
    switch_offs: int = 0  # times set_target_layer(None) stopped it


class Consumer:
    """Forwards one producer's packets to one subscriber transport."""

    # Slots keep attribute access on the per-packet path at its fastest (measured: some 8%
    # of forward() at 1->200 with a dict of this many attributes).
    __slots__ = (
        "producer", "fan_out", "kind", "ssrc", "rtx_ssrc", "stats", "priority", "order", "shed", "cached_starts",
        "_paused", "_guard", "_write", "_pt_map", "_rtx_pts", "_rtx_seq", "_layout", "_video", "_variable",
        "_b0_variable", "_ext_before", "_ext_after", "_b0_plain", "_ext_plain", "_clock_rate", "_needs_keyframe",
        "_seq_offset", "_ts_offset", "_start_seq", "_next_seq", "_next_ts", "_resume_from", "_attached",
        "_rtx_tokens", "_rtx_refilled", "source", "_layers", "_target", "_pending", "_munge", "_pid_offset",
        "_tl0_offset", "_last_pid", "_last_tl0", "_auto", "deliver", "_by_key", "_mapped",
    )  # fmt: skip

    def __init__(
        self,
        producer: MediaSource,
        fan_out: FanOut,
        write: Callable[[bytes], bool],
        ssrc: int,
        rtx_ssrc: int,
        guard: overload.OverloadGuard | None = None,
    ) -> None:
        """``fan_out`` puts this consumer in ``producer``'s fan-out (the room's Router).
        ``guard`` sheds its video under overload: by default the one of the running event
        loop (overload.guard_for_running_loop), the server's media plane."""
        self.source = producer  # the published track; producer is the layer forwarded (the same without simulcast)
        layers: list[Any] = list(getattr(producer, "layers", None) or [producer])
        self._layers: list[MediaSource] = layers
        self.producer: MediaSource = layers[-1]  # (the highest layer until told otherwise)
        self._target: int | None = len(layers) - 1
        # Until set_target_layer is called: the highest layer the publisher is sending (a
        # browser sends fewer layers than offered for a small camera, or stops one when short
        # of bandwidth), followed by follow_active_layers.
        self._auto = len(layers) > 1
        self._pending: MediaSource | None = None  # the layer waited for (its next keyframe)
        # VP8 picture IDs and TL0PICIDX are rewritten only for a simulcast track: one
        # layer's own numbering is already continuous.
        self._munge = len(layers) > 1 and any(c.mime_type.lower() == "video/vp8" for c in producer.codecs.values())
        self._pid_offset = 0
        self._tl0_offset = 0
        self._last_pid: int | None = None
        self._last_tl0: int | None = None
        # What the fan-out calls per packet: forward itself, unless picture IDs are rewritten
        # (so a track without simulcast pays nothing for it).
        self.deliver: Callable[[InboundPacket, bytes], None] = self._forward_rewritten if self._munge else self.forward
        self.fan_out = fan_out
        self.kind = producer.kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.stats = SendStats()
        # Twilio track priority (high, standard or low): the overload guard sheds low first.
        self.priority = "standard"
        self.order = next(_subscription_order)  # the overload guard sheds the newest first
        self.shed = False  # left out of the fan-out by the overload guard
        self.cached_starts = 0  # (re)starts from the producer's cached keyframe
        self._paused = True  # until the subscriber's transport and answer are ready
        self._guard = guard
        self._write = write
        self._pt_map: dict[int, int] = {}
        self._by_key: dict[Any, CodecInfo] = {}  # the subscriber's codecs
        self._mapped: dict[int, CodecInfo] | None = None  # the producer's codecs _pt_map was made from
        self._rtx_pts: dict[int, int] = {}  # subscriber media pt -> its RTX pt
        self._rtx_seq = random.randint(0, 0x7FFF)
        self._set_layout(rtp.ExtensionLayout(b""))
        self._video = self.kind == "video"
        self._clock_rate = 90000 if self._video else 48000
        self._needs_keyframe = self._video
        self._seq_offset: int | None = None
        self._ts_offset = 0
        self._start_seq = 0
        self._next_seq = random.randint(0, 0x7FFF)
        self._next_ts = random.randint(0, 0xFFFFFFFF)
        self._resume_from: tuple[int, float] | None = None  # (last out timestamp, when) after a pause
        self._attached = False
        self._rtx_tokens = RTX_BURST
        self._rtx_refilled = time.monotonic()

    # --- what the room model sees (contracts.TrackSink) ---------------------------------

    @property
    def track_sid(self) -> str:
        return self.source.track_sid

    @property
    def counters(self) -> MediaCounters:
        s = self.stats
        return MediaCounters(s.packets, s.octets, 0, s.retransmitted, s.nacks_received, s.plis_received)

    def set_priority(self, priority: Priority) -> None:
        self.priority = priority

    # --- negotiation -------------------------------------------------------------------

    def configure(self, codecs: list[CodecInfo], rtx_apt: dict[int, int], header_extensions: Sequence[Any], mid: str | None) -> bool:
        """Map the producer's payload types onto the subscriber's; False if none match."""
        self._by_key = {c.key: c for c in codecs}
        pt_map = self._pt_map = self._map_payload_types()
        self._rtx_pts = {apt: rtx for rtx, apt in rtx_apt.items()}
        ids = {getattr(e, "uri"): getattr(e, "id") for e in header_extensions}
        mid_id = ids.get(MID_URI, 0)
        fixed = rtp.one_byte_element(mid_id, mid.encode()) if mid_id and mid else b""
        if self.kind == "video":
            self._set_layout(rtp.ExtensionLayout(fixed, ids.get(ABS_SEND_TIME_URI, 0), 3))
        else:
            self._set_layout(rtp.ExtensionLayout(fixed, ids.get(AUDIO_LEVEL_URI, 0), 1))
        return bool(pt_map)

    def _map_payload_types(self) -> dict[int, int]:
        """The producer's payload types -> the subscriber's, by codec. A publisher that makes
        its own offers (the official SDK) may renumber its codecs when it renegotiates: the
        map is made again then (``forward`` notices the producer's new codecs)."""
        codecs = self._mapped = self.producer.codecs
        pt_map: dict[int, int] = {}
        for pt, codec in codecs.items():
            mine = self._by_key.get(codec.key)
            if mine is not None:
                pt_map[pt] = mine.payload_type
                self._clock_rate = mine.clock_rate
        return pt_map

    def attach(self) -> None:
        """Start forwarding (the subscriber's sender is up)."""
        logger.debug("track %s -> ssrc %d: attached", self.producer.track_sid, self.ssrc)
        self._paused = False
        if self._auto:
            self.follow_active_layers()
        if not self._attached:
            self._attached = True
            self.fan_out.attach(self)
            if self._video:
                if self._guard is None:
                    self._guard = overload.guard_for_running_loop()
                if self._guard is not None:
                    self._guard.register(self)
        if not self.shed:
            self._restart(from_cache=True)
        self._update_fan_out()

    @property
    def paused(self) -> bool:
        """Paused by the subscriber side (or not attached yet); see also ``shed``."""
        return self._paused

    @property
    def forwarding(self) -> bool:
        return self._attached and not self._paused and not self.shed and self._target is not None

    # --- simulcast layers --------------------------------------------------------------

    @property
    def current_layer(self) -> int | None:
        """The index of the layer forwarded (or about to be) in ``source.layers``; None when
        switched off."""
        if self._target is None:
            return None
        return next(i for i, layer in enumerate(self._layers) if layer is self.producer)

    @property
    def target_layer(self) -> int | None:
        return self._target

    @property
    def pending_layer(self) -> MediaSource | None:
        """The layer this consumer waits to move to (at its next keyframe), if any."""
        return self._pending

    def set_target_layer(self, index: int | None) -> None:
        """Forward layer ``index`` of the track (clamped to those it has), switching at a
        keyframe of that layer; None switches the track off (no forwarding at all)."""
        self._auto = False
        self._set_target(index)

    def follow_active_layers(self, max_age: float = 1.5) -> None:
        """Unless a layer was chosen (``set_target_layer``): target the highest layer that
        received packets in the last ``max_age`` seconds (the highest when none did)."""
        if not self._auto:
            return
        now = time.monotonic()
        active = [i for i, layer in enumerate(self._layers) if layer.stats.packets and now - layer.last_arrival <= max_age]
        self._set_target(active[-1] if active else len(self._layers) - 1)

    def _set_target(self, index: int | None) -> None:
        if index is not None:
            index = max(0, min(index, len(self._layers) - 1))
        if index == self._target:
            return
        was_off = self._target is None
        self._target = index
        if index is None:
            self._set_pending(None)
            self.stats.switch_offs += 1
            self._update_fan_out()
            return
        layer = self._layers[index]
        if not self.forwarding or was_off or self._seq_offset is None:
            # Nothing is flowing to the subscriber: start the target layer directly.
            if self.forwarding:
                self._restart(from_cache=True)
            else:
                self._set_pending(None)
            self._update_fan_out()
            return
        if layer is self.producer:
            self._set_pending(None)  # back to the layer still forwarded: no switch
            return
        self._set_pending(layer)
        layer.request_keyframe(urgent=True)

    def _set_pending(self, layer: MediaSource | None) -> None:
        if layer is not self._pending:
            self._pending = layer
            self.fan_out.set_pending(self, layer)

    def switch_at_keyframe(self, packet: InboundPacket, abs_send_time: bytes) -> None:
        """A packet of the pending layer (its fan-out calls this): move there at its first
        keyframe packet, going on from the last packet sent on the current one."""
        layer = self._pending
        if not packet.keyframe or layer is None:
            return
        state = self.continuation()
        self._set_pending(None)
        self.fan_out.move(self, layer)  # (in layer's fan-out from the next packet on)
        self.continue_from(state)
        self._seq_offset = None
        self._needs_keyframe = True
        self.stats.layer_switches += 1
        logger.debug("track %s -> ssrc %d: switched to layer %s", self.track_sid, self.ssrc, self.current_layer)
        self.deliver(packet, abs_send_time)

    @property
    def waiting_for_keyframe(self) -> bool:
        return self.forwarding and self._seq_offset is None and self._needs_keyframe

    def pause(self) -> None:
        self._paused = True
        self._update_fan_out()

    def resume(self) -> None:
        if self._paused and self._attached:
            self._paused = False
            if not self.shed:
                self._restart(from_cache=True)
            self._update_fan_out()

    def set_shed(self, shed: bool) -> None:
        """Stop (or go on) forwarding because the server is overloaded. Going on starts at
        the next keyframe the publisher sends (an urgent, coalesced PLI), not from the
        cache: a server just out of overload should not burst a second of video to each
        subscriber it resumes."""
        if shed == self.shed:
            return
        self.shed = shed
        if not shed and self._attached and not self._paused:
            self._restart(from_cache=False)
        self._update_fan_out()

    def detach(self) -> None:
        self._paused = True
        self._set_pending(None)
        if self._attached:
            self._attached = False
            self.fan_out.detach(self)
            if self._guard is not None:
                self._guard.unregister(self)

    def _update_fan_out(self) -> None:
        forwarding = self.forwarding
        if not forwarding:
            self._set_pending(None)
        if not forwarding and self._seq_offset is not None:
            # Stopped: the stream goes on later right after the last packet it may have
            # sent, so the subscriber sees no sequence gap for what it never got.
            self.continue_from(self.continuation())
            self._seq_offset = None
        self.fan_out.set_forwarding(self, forwarding)

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

    def _restart(self, from_cache: bool) -> None:
        """Continue the outgoing stream from a keyframe, without a sequence jump: the
        cached one if allowed and usable, else the next one (asked for at once)."""
        self.continue_from(self.continuation())
        self._seq_offset = None
        if self._target is not None:
            self._set_pending(None)
            target = self._layers[self._target]
            if target is not self.producer:
                self.fan_out.move(self, target)
        self._needs_keyframe = self._video
        if not self._needs_keyframe:
            return
        packets = self.producer.recent_keyframe() if from_cache else None
        if packets is None:
            self.producer.request_keyframe(urgent=True)
            return
        # The newest keyframe and everything after it, at once, with this subscriber's
        # offsets; live packets go on from the same offsets.
        self._begin(packets[0], self.producer.last_timestamp)
        abs_send_time = rtp.abs_send_time()
        deliver = self.deliver
        for packet in packets:
            deliver(packet, abs_send_time)
        self.cached_starts += 1
        self.producer.cached_starts += 1
        logger.debug("track %s -> ssrc %d: started from %d cached packets", self.producer.track_sid, self.ssrc, len(packets))

    # --- the per-packet path -----------------------------------------------------------

    def forward(self, packet: InboundPacket, abs_send_time: bytes) -> None:
        """Rewrite one of the producer's packets for this subscriber and write it. Only
        the fan-out (while this consumer forwards) and its own cached start call this."""
        seq = packet.sequence_number
        offset = self._seq_offset
        if offset is None:
            if self._needs_keyframe and not packet.keyframe:
                return
            offset = self._begin(packet)
        else:
            behind = (seq - self._start_seq) & 0xFFFF
            if behind > 0x4000:
                if behind >= 0x8000:
                    return  # older than where this subscriber's stream began
                self._start_seq = (seq - 0x1000) & 0xFFFF  # slide: a long stream never looks "old"
        out_pt = self._pt_map.get(packet.payload_type)
        if out_pt is None:
            if self._mapped is self.producer.codecs:
                return
            self._pt_map = self._map_payload_types()  # (the publisher renumbered its codecs)
            out_pt = self._pt_map.get(packet.payload_type)
            if out_pt is None:
                return
        ts = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        if self._write(self._build(packet, out_pt, (seq + offset) & 0xFFFF, ts, self.ssrc, abs_send_time, b"")):
            stats = self.stats
            stats.packets += 1
            stats.octets += len(packet.payload)

    def _begin(self, packet: InboundPacket, newest_timestamp: int | None = None) -> int:
        """Map ``packet`` onto the next outgoing sequence number and timestamp; returns the
        sequence offset. ``newest_timestamp`` is the newest input timestamp when ``packet``
        is older (a cached start): after a pause it is that newest one, not ``packet``,
        that lands where the time elapsed since the last one sent says, so the stream
        does not run ahead of the clock."""
        if self._resume_from is not None:
            timestamp, at = self._resume_from
            elapsed = int(max(0.0, time.monotonic() - at) * self._clock_rate)
            lead = 0 if newest_timestamp is None else (newest_timestamp - packet.timestamp) & 0xFFFFFFFF
            self._next_ts = (timestamp + max(1, elapsed + 1 - lead)) & 0xFFFFFFFF
            self._resume_from = None
        offset = self._seq_offset = (self._next_seq - packet.sequence_number) & 0xFFFF
        self._ts_offset = (self._next_ts - packet.timestamp) & 0xFFFFFFFF
        self._start_seq = packet.sequence_number
        self._needs_keyframe = False
        if self._munge:
            # The first picture of this stream goes on right after the last one sent.
            pid, tl0 = vp8.read_picture_ids(packet.payload)
            if pid is not None and self._last_pid is not None:
                self._pid_offset = self._last_pid + 1 - pid
            if tl0 is not None and self._last_tl0 is not None:
                self._tl0_offset = self._last_tl0 + 1 - tl0
        logger.debug("track %s -> ssrc %d: starting at seq %d", self.producer.track_sid, self.ssrc, packet.sequence_number)
        return offset

    def _forward_rewritten(self, packet: InboundPacket, abs_send_time: bytes) -> None:
        """``forward`` for a simulcast VP8 track: the layer's picture ID and TL0PICIDX moved
        onto this subscriber's numbering (set where its stream (re)starts, in ``_begin``)."""
        if self._seq_offset is None:
            if self._needs_keyframe and not packet.keyframe:
                return
            self._begin(packet)
        payload, pid, tl0 = vp8.rewrite_picture_ids(packet.payload, self._pid_offset, self._tl0_offset)
        if pid is not None:
            self._last_pid = pid
        if tl0 is not None:
            self._last_tl0 = tl0
        self.forward(self._with_payload(packet, payload), abs_send_time)

    @staticmethod
    def _with_payload(packet: InboundPacket, payload: bytes) -> InboundPacket:
        return InboundPacket(
            packet.payload_type, packet.sequence_number, packet.timestamp, packet.marker, packet.ssrc,
            payload, packet.padding, packet.audio_level, packet.keyframe,
        )  # fmt: skip

    def _set_layout(self, layout: rtp.ExtensionLayout) -> None:
        """Precompute the header pieces _build joins, for the two cases a packet can be in."""
        self._layout = layout
        self._variable = layout.variable
        self._b0_variable = 0x90  # version 2, extension
        self._ext_before, self._ext_after = layout.prefix, layout.suffix
        self._b0_plain = 0x90 if layout.plain else 0x80  # (no per-packet value)
        self._ext_plain = layout.plain

    def _build(self, packet: InboundPacket, pt: int, seq: int, ts: int, ssrc: int, abs_send_time: bytes, prefix: bytes) -> bytes:
        """The packet as this subscriber gets it; ``prefix`` goes before the payload (the
        original sequence number of an RTX packet)."""
        value = abs_send_time if self._video else packet.audio_level
        if value is not None and self._variable:
            b0, before, after = self._b0_variable, self._ext_before, self._ext_after
        else:
            b0, before, value, after = self._b0_plain, self._ext_plain, b"", b""
        if packet.padding:
            b0 |= 0x20
        return b"".join((_pack_header(b0, (packet.marker << 7) | pt, seq, ts, ssrc), before, value, after, prefix, packet.payload))

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
                    stats = self.stats
                    stats.fraction_lost = report.fraction_lost
                    stats.jitter = report.jitter
                    stats.reports += 1
                    if report.lsr and report.lsr == stats.sr_ntp:
                        rtt = time.monotonic() - stats.sr_sent_at - report.dlsr / 65536
                        stats.rtt = max(0.0, rtt)

    def _retransmit(self, lost: list[int]) -> None:
        offset = self._seq_offset
        if offset is None or not self.forwarding:
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
            if self._munge:
                packet = self._with_payload(packet, vp8.rewrite_picture_ids(packet.payload, self._pid_offset, self._tl0_offset)[0])
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
        stats.sr_ntp, stats.sr_sent_at = (ntp >> 16) & 0xFFFFFFFF, time.monotonic()  # (for the RR's round-trip time)
        return RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp & 0xFFFFFFFFFFFFFFFF,
                rtp_timestamp=rtp_ts,
                packet_count=stats.packets & 0xFFFFFFFF,
                octet_count=stats.octets & 0xFFFFFFFF,
            ),
        )
