"""The ports between the room model and the media plane.

The room model (``sfu.room``, ``sfu.participant``, ``sfu.registry``) decides who is in a room,
what they publish and who receives what. The media plane (``sfu.media`` in this process, or a
worker process behind ``sfu.workers``) owns peer connections, DTLS/SRTP and forwarding. Each
side depends only on this module, as Galene's ``conn`` interfaces and mediasoup's
Transport/Producer/Consumer listeners do, so the media plane can live in another process.

Every call the room model makes is synchronous and returns at once; a media plane in
another process carries it out in order and reports back through ``TransportListener``.
Handles (``TrackSource``, ``TrackSink``) are plain objects the room model keeps and passes
back; it never looks inside them beyond what is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Kind = Literal["audio", "video", "data"]
Role = Literal["publish", "subscribe"]
Priority = Literal["high", "standard", "low"]
BandwidthProfileMode = Literal["grid", "collaboration", "presentation"]
SwitchOffControl = Literal["auto", "manual", "disabled"]
ContentPreferencesMode = Literal["auto", "manual"]


class NegotiationError(Exception):
    """The remote description (or candidate) could not be applied (Twilio error code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class MediaSection:
    """One m-section of an offer: which track it carries, and in which direction."""

    mid: str
    kind: str
    role: Role
    track_sid: str


@dataclass(frozen=True)
class Offer:
    sdp: str
    revision: int
    sections: list[MediaSection]


@dataclass(frozen=True, slots=True)
class DataTrackOptions:
    ordered: bool = True
    max_packet_life_time: int | None = None
    max_retransmits: int | None = None

    @property
    def reliable(self) -> bool:
        return self.max_packet_life_time is None and self.max_retransmits is None


@dataclass(frozen=True, slots=True)
class BandwidthProfile:
    """Twilio's ``bandwidthProfile.video`` of one subscriber: how its downlink is shared
    among the video tracks it subscribes to (sfu.media.allocator). ``max_subscription_bitrate``
    in bps (None: no limit). ``dominant_speaker_priority``: the media plane raises the
    room's dominant speaker's tracks to at least that priority for this subscriber."""

    mode: BandwidthProfileMode = "grid"
    max_subscription_bitrate: int | None = None
    dominant_speaker_priority: Priority = "standard"
    client_track_switch_off_control: SwitchOffControl = "auto"
    content_preferences_mode: ContentPreferencesMode = "auto"


@dataclass(slots=True)
class MediaCounters:
    """What one source received or one sink sent, as counted by the media plane (running
    totals; a plane in another process refreshes them about once a second)."""

    packets: int = 0
    octets: int = 0
    lost: int = 0  # sources: sequence gaps found (and NACKed)
    retransmitted: int = 0  # sinks
    nacks: int = 0  # sinks: NACKs received from the subscriber
    plis: int = 0  # sinks: PLIs/FIRs received from the subscriber


class TrackSource(Protocol):
    """The publisher side of one published track (mediasoup's Producer, Galene's UpTrack)."""

    @property
    def track_sid(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    @property
    def data_options(self) -> DataTrackOptions | None:
        """A data track's channel settings (None for audio and video)."""
        ...

    @property
    def counters(self) -> MediaCounters: ...


class TrackSink(Protocol):
    """The subscriber side of one subscription (mediasoup's Consumer, Galene's DownTrack)."""

    @property
    def track_sid(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    @property
    def counters(self) -> MediaCounters: ...

    def set_priority(self, priority: Priority) -> None:
        """Twilio track priority: what the media plane sheds first under overload."""
        ...


class TransportListener(Protocol):
    """What a participant's transport reports to the room model (all after the fact)."""

    def on_offer(self, offer: Offer) -> None:
        """A new offer for the participant (the SFU is always the offerer)."""

    def on_publication_ready(self, source: TrackSource) -> None:
        """The source's media (or data channel) started."""

    def on_publication_failed(self, source: TrackSource, reason: str) -> None:
        """The answer rejected the source's m-section (no codec in common)."""

    def on_publication_closed(self, source: TrackSource) -> None:
        """The publisher closed a data track's channel."""

    def on_subscription_failed(self, sink: TrackSink, reason: str) -> None:
        """The answer rejected the sink's m-section."""

    def on_subscription_lost(self, sink: TrackSink) -> None:
        """A data sink's channel overflowed (reliable track) or the subscriber closed it."""

    def on_data_channel(self, label: str) -> None:
        """The participant opened a data channel; ``publish_data(…, label)`` attaches it."""

    def on_sink_switched(self, sink: TrackSink, switched_off: bool, reason: str | None) -> None:
        """The media plane switched a video sink off (no forwarding at all) or on again
        (resuming at a keyframe). ``reason``: why it is off (sfu.media.allocator's
        ``disabled-by-subscriber``, ``max-bandwidth-reached``, ``network-congestion``)."""

    def on_sink_layer(self, sink: TrackSink, layer: int) -> None:
        """The layer (index, low to high) the media plane now forwards to a video sink."""

    def on_failed(self, code: int, reason: str) -> None:
        """The transport is gone: its connection failed, negotiation timed out, or the
        process carrying it died. The participant must be removed with ``code``."""

    def on_audio_activity(self, source: TrackSource, level: float) -> None:
        """An audio source's smoothed level (0.0 silent to 1.0 loudest, from the RFC 6464
        audio levels its packets carry) changed meaningfully; a few reports a second at most."""

    def on_network_quality(self, level: int, stats: dict[str, Any]) -> None:
        """The transport's network quality changed: ``level`` 0 (broken) to 5 (excellent),
        from RTCP receiver reports (loss, jitter, round-trip time) and the bitrate sent and
        received against what the tracks need. ``stats``: Twilio's detailed form
        (``{"level", "audio": {"send", "recv", "sendStats", "recvStats"}, "video": ...}``)."""


class ParticipantTransport(Protocol):
    """One participant's media connection (a peer connection, in whichever process)."""

    def publish(
        self, track_sid: str, kind: Kind, codecs: list[str] | None = None, client_track_id: str | None = None
    ) -> TrackSource:
        """Receive an audio or video track (``codecs``, e.g. ["H264"], limits what the
        publisher may send). Ready when ``on_publication_ready`` says so.

        Without ``client_track_id`` the SFU offers a ``recvonly`` m-section for it. With it,
        the media comes on the m-section the participant's own offer sends with that msid
        track id (the official twilio-video SDK offers its tracks itself)."""
        ...

    def publish_data(self, track_sid: str, label: str) -> TrackSource | None:
        """A data track on the channel labelled ``label`` the participant opened (see
        ``on_data_channel``); None when no such channel is open."""
        ...

    def unpublish(self, source: TrackSource) -> None: ...

    def subscribe(self, source: TrackSource, stream_id: str, priority: Priority = "standard") -> TrackSink:
        """Forward ``source`` (of another participant of the same room) to this participant.
        A data source gets a channel labelled with its track SID."""
        ...

    def unsubscribe(self, sink: TrackSink) -> None: ...

    def release(self, sink: TrackSink) -> None:
        """Stop forwarding to ``sink`` without renegotiating (the participant is leaving or
        reconnecting has given up)."""
        ...

    def set_bandwidth_profile(self, profile: BandwidthProfile) -> None:
        """How this subscriber's downlink is shared among its video sinks (from now on)."""
        ...

    def set_sink_hints(self, sink: TrackSink, render_dimensions: tuple[int, int] | None, switched_off_by_client: bool) -> None:
        """What the subscriber says of one video sink: the size it draws it at (None:
        unknown, any size) and whether it switched it off (hidden, detached, ``switchOff()``)."""
        ...

    def request_negotiation(self) -> None:
        """Make an offer soon even if nothing changed (the first one opens data channels)."""
        ...

    @property
    def negotiating(self) -> bool:
        """An offer is waiting for its answer."""
        ...

    async def apply_answer(self, sdp: str, revision: int) -> None:
        """Raises NegotiationError."""

    async def apply_offer(self, sdp: str, revision: int) -> str:
        """The participant offers (the official SDK always makes the first offer): apply it
        and return the answer's SDP. Raises NegotiationError. An offer that crosses one of
        the SFU's own is refused with NegotiationError (the SFU wins glare; the SDK offers
        again after answering)."""

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None) -> None:
        """None: the end of the participant's candidates. Raises NegotiationError."""

    def set_dominant_speaker(self, track_sids: frozenset[str]) -> None:
        """The tracks the room's dominant speaker publishes (empty: nobody speaks), so this
        subscriber's allocation can favour them (``dominantSpeakerPriority``)."""
        ...

    async def close(self) -> None: ...


@dataclass
class PlaneFigures:
    """One media process's figures for ``/metrics`` (``worker`` is None for the in-process plane)."""

    worker: int | None
    pid: int
    alive: bool = True
    rooms: int = 0
    transports: int = 0
    packets_in: int = 0
    packets_out: int = 0
    udp_port: int | None = None
    restarts: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class MediaPlane(Protocol):
    """Builds transports. The room model never constructs media objects itself."""

    async def start(self) -> None: ...

    def create_transport(
        self, room_sid: str, name: str, listener: TransportListener, offers_first: bool = False
    ) -> ParticipantTransport:
        """A transport for a participant of ``room_sid`` (``name`` is for logs).

        ``offers_first``: the participant makes the first offer (the official twilio-video
        SDK): the SFU holds its own offers until ``apply_offer`` has applied that one, and
        the participant's tracks always come on the m-sections its offers send."""
        ...

    def room_closed(self, room_sid: str) -> None:
        """The room ended: whatever the plane keeps for it may go."""
        ...

    def figures(self) -> list[PlaneFigures]: ...

    async def close(self) -> None: ...
