"""What a consumer needs of its source, and of the fan-out it is a member of.

A Consumer (sfu.media.consumer) forwards one source's packets to one subscriber; the source
is a Producer (sfu.media.producer) or, for a pipe between workers, whatever plays its part.
Producer and Consumer never import each other: both depend on this module, and the per-room
Router (sfu.media.router) owns the source -> consumers map, as mediasoup's Router does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..contracts import Kind
from .codecs import codec_key
from .rtp import InboundPacket

if TYPE_CHECKING:
    from .consumer import Consumer


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """A payload type as negotiated with one peer."""

    payload_type: int
    mime_type: str
    clock_rate: int
    key: tuple[str, ...]
    parameters: dict[str, object] = field(default_factory=dict, compare=False, hash=False)


@dataclass(slots=True)
class ReceiveStats:
    """What an RTCP receiver report to the publisher needs (RFC 3550 A.3)."""

    packets: int = 0
    octets: int = 0
    base_seq: int | None = None
    max_seq: int = 0
    cycles: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    lost_detected: int = 0
    sr_ntp: int | None = None  # middle 32 bits of the last SR's NTP time
    sr_ntp_full: int = 0
    sr_rtp: int = 0
    sr_arrival: float = 0.0

    def expected(self) -> int:
        if self.base_seq is None:
            return 0
        return self.cycles + self.max_seq - self.base_seq + 1




def codec_infos(codecs: Sequence[Any]) -> tuple[list[CodecInfo], dict[int, int]]:
    """Split aiortc codec parameters into media codecs and an RTX pt -> apt map."""
    media: list[CodecInfo] = []
    rtx: dict[int, int] = {}
    for c in codecs:
        mime = getattr(c, "mimeType")
        params = dict(getattr(c, "parameters") or {})
        if mime.lower().endswith("/rtx"):
            apt = params.get("apt")
            if isinstance(apt, int):
                rtx[getattr(c, "payloadType")] = apt
            continue
        media.append(CodecInfo(getattr(c, "payloadType"), mime, getattr(c, "clockRate"), codec_key(mime, params), params))
    return media, rtx


class MediaSource(Protocol):
    """The source side of a consumer: its codecs, stream position, retransmission cache and
    keyframes (a Producer)."""

    track_sid: str
    kind: Kind
    codecs: dict[int, CodecInfo]
    stats: ReceiveStats
    last_timestamp: int  # RTP timestamp of the newest packet, and when it came
    last_arrival: float
    cached_starts: int

    def cached(self, sequence_number: int) -> InboundPacket | None: ...

    def recent_keyframe(self) -> list[InboundPacket] | None: ...

    def request_keyframe(self, urgent: bool = False) -> None: ...


class FanOut(Protocol):
    """Who keeps the consumer in its source's fan-out (the room's Router)."""

    def attach(self, consumer: "Consumer") -> None:
        """The consumer is up: a member of its source's fan-out (forwarding or not)."""

    def detach(self, consumer: "Consumer") -> None: ...

    def set_forwarding(self, consumer: "Consumer", forwarding: bool) -> None:
        """Include the attached consumer in the packets' fan-out, or leave it out."""
