"""A Peer is the SFU's end of one participant's peer connection.

One aiortc ``RTCPeerConnection`` per participant (max-bundle, rtcp-mux). The SFU is always
the offerer: publishing adds a ``recvonly`` m-section, subscribing a ``sendonly`` one, and
one offer at a time is outstanding (requests made meanwhile are coalesced into the next
offer), so there is never glare and aiortc's missing rollback does not matter. The first
offer always carries an SCTP m-section, so data channels open without renegotiation.

M-sections are reused, as Janus, mediasoup and LiveKit do: an unpublished or unsubscribed
track's m-section goes ``inactive`` in the next offer, and once the answer to that offer
is applied it is free for the next publication or subscription of the same kind, with a new
msid and new sender SSRCs. A browser fires ``track`` only when an m-section starts
receiving, and a receiver must not splice two streams: hence the one negotiated round as
``inactive`` in between. A peer's SDP therefore holds at most as many m-sections as it ever
had live at once (plus the SCTP one).

A section the answer rejects (port 0, e.g. Firefox without the room's video codec) is
applied as ``inactive`` (aiortc cannot apply it as such), its subscription or publication
fails (``subscription_failed`` / ``publication_failed``), and it is reused like any other.

The official twilio-video SDK offers too (``apply_offer``): first, and again whenever it
publishes or unpublishes. Its sending m-sections are its own (its offers say which track each
carries, by msid track id; ``bind_publication``); subscriptions still go out in our offers on
the same peer connection. One description is applied at a time, and the SFU wins glare.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import (
    RTCRtpCodecCapability,
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
    RTCRtpSendParameters,
)
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSrPacket,
    pack_remb_fci,
)
from aiortc.sdp import candidate_from_sdp
from pyee.asyncio import AsyncIOEventEmitter

from .. import errors
from ..contracts import DataTrackOptions, Kind, MediaSection, NegotiationError, Offer, Role
from . import aiortc_hooks as hooks
from . import rtp, simulcast
from .codecs import codec_key
from .consumer import AUDIO_LEVEL_URI, MID_URI, Consumer
from .producer import Producer
from .router import Router
from .source import codec_infos
from .udpmux import UdpMux

logger = logging.getLogger(__name__)

IceRelay = Literal["off", "fallback", "only"]

MAX_UNKNOWN_SSRCS = 64
MAX_REMOTE_CANDIDATES = 32  # per peer: each one makes the server send STUN checks somewhere


@dataclass
class MediaConfig:
    """Media-plane settings of a server."""

    ice_servers: list[RTCIceServer] = field(default_factory=list)
    # Whether the server's own connections use the TURN servers in ice_servers (STUN ones are
    # always used): "off" (host and server-reflexive candidates only; TURN is for clients),
    # "fallback" (relayed candidates too), "only" (relayed candidates only).
    ice_relay: IceRelay = "off"
    announced_address: str | None = None  # an IP address (the mux's host candidates carry it)
    # The server's one UDP socket for media, opened at startup; None: each peer connection
    # binds sockets of its own (aioice's default).
    udp_mux: UdpMux | None = None
    retransmission_cache: int = 512
    keyframe_interval: float = 0.5
    negotiation_timeout: float = 30.0
    max_video_bitrate: int = 2_500_000
    data_high_water_mark: int = 1 << 20
    data_max_queued: int = 1024
    data_max_queued_bytes: int = 4 << 20
    rtcp_interval: float = 1.0


def _is_turn(server: RTCIceServer) -> bool:
    urls = [server.urls] if isinstance(server.urls, str) else server.urls
    return any(url.startswith("turn") for url in urls)


class Peer(AsyncIOEventEmitter):
    """Events: ``offer`` (Offer), ``publication_ready`` (Producer), ``subscription_ready``
    (Consumer), ``publication_failed`` (Producer, reason str), ``subscription_failed``
    (Consumer, reason str), ``datachannel`` (RTCDataChannel), ``failed`` (reason str)."""

    def __init__(self, name: str, config: MediaConfig, router: Router | None = None, offers_first: bool = False) -> None:
        """``router``: the fan-out map of the peer's room (its producers' consumers).
        ``offers_first``: the participant makes the first offer; ours wait until it is applied."""
        super().__init__()
        self.name = name
        self.config = config
        self.router = router if router is not None else Router()
        relay = config.ice_relay
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[s for s in config.ice_servers if relay != "off" or not _is_turn(s)],
                iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay == "only" else RTCIceTransportPolicy.ALL,
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        )
        hooks.create_sctp_transport_first(self.pc)
        if config.udp_mux is not None:
            hooks.use_udp_mux(self.pc, config.udp_mux, config.announced_address)
        hooks.start_when_connected(self.pc)
        self.revision = 0
        self.closed = False
        self._publications: dict[RTCRtpTransceiver, Producer] = {}
        self._subscriptions: dict[RTCRtpTransceiver, Consumer] = {}
        self._sections: dict[RTCRtpTransceiver, tuple[Role, str]] = {}
        # Retired m-sections: the revision of the first offer that carried them inactive
        # (None until one does). Free once the answer to that offer is applied.
        self._retired: dict[RTCRtpTransceiver, int | None] = {}
        self._free: list[RTCRtpTransceiver] = []
        self._by_ssrc: dict[int, Producer] = {}
        self._unknown_ssrcs: dict[int, None] = {}  # SSRCs that matched nothing (bounded, oldest out)
        self._remote_candidates = 0
        self._writers: dict[int, Callable[[bytes], bool]] = {}
        self._sinks: set[int] = set()
        self._negotiation_needed = False
        self._negotiation_task: asyncio.Task[None] | None = None
        self._pending_answer: tuple[int, asyncio.Future[None]] | None = None
        self._rtcp_task: asyncio.Task[None] | None = None
        self._simulcast: dict[str, simulcast.SimulcastAnswer] = {}  # the last answer's, by mid
        # Participant-made offers (apply_offer): one description applied at a time; the
        # m-sections the participant sends, by msid track id; producers waiting for theirs.
        self._sdp_lock = asyncio.Lock()
        self._client_offers = offers_first
        self._awaiting_first_offer = offers_first  # (our offers are held meanwhile)
        self._offered: dict[RTCRtpTransceiver, tuple[str, int | None, int | None]] = {}  # -> (track id, ssrc, rtx ssrc)
        self._offered_started: dict[RTCRtpTransceiver, bool | None] = {}  # hooked: None; True once DTLS is up
        self._offered_producers: dict[str, Producer] = {}
        self.pc.on("connectionstatechange", self._on_connection_state)
        self.pc.on("datachannel", lambda channel: self.emit("datachannel", channel))

    # --- publishing --------------------------------------------------------------------

    def add_publication(self, track_sid: str, kind: Kind, codecs: list[str] | None = None, client_track_id: str | None = None) -> Producer:
        """Offer a ``recvonly`` m-section for a track; ``codecs`` (e.g. ["H264"]) limits what
        the publisher may send (a room's VideoCodecs). For a participant that offers (made
        ``offers_first``, or once ``apply_offer`` ran), its media comes on the m-section its
        offer sends with msid track id ``client_track_id`` instead (see ``bind_publication``);
        for one that never offers, ``client_track_id`` is not used."""
        if self._client_offers:
            return self._offered_publication(track_sid, kind, client_track_id)
        transceiver = self._transceiver(kind, "recvonly")
        preferences: list[RTCRtpCodecCapability] = []
        if codecs:
            wanted = {f"{kind}/{name.lower()}" for name in codecs}
            capabilities = RTCRtpSender.getCapabilities(kind).codecs
            preferences = [c for c in capabilities if c.mimeType.lower() in wanted or c.mimeType.lower().endswith("/rtx")]
        transceiver.setCodecPreferences(preferences)  # (empty: aiortc's defaults, also on a reused section)
        rtcp_ssrc = hooks.sender_ssrcs(transceiver.sender)[0]
        producer = Producer(
            track_sid,
            kind,
            send_pli=lambda ssrc: self._send_rtcp(
                transceiver, bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=rtcp_ssrc, media_ssrc=ssrc))
            ),
            send_nack=lambda ssrc, lost: self._send_nack(transceiver, rtcp_ssrc, ssrc, lost),
            cache_size=self.config.retransmission_cache,
            keyframe_interval=self.config.keyframe_interval,
        )
        hooks.hook_receiver(
            transceiver.receiver,
            on_started=lambda params: self._publication_started(transceiver, producer, params),
            on_rtcp=lambda packet: self._publisher_rtcp(producer, packet),
        )
        self._publications[transceiver] = producer
        self._sections[transceiver] = ("publish", track_sid)
        self.request_negotiation()
        return producer

    def remove_publication(self, producer: Producer) -> None:
        if producer in self._offered_producers.values():
            self._unbind_offered(producer)  # the participant's own m-section: its offers say what it carries
        else:
            transceiver = self._retire(self._publications, producer)
            if transceiver is not None:
                hooks.unhook_receiver(transceiver.receiver)
        for ssrc in [s for s, p in self._by_ssrc.items() if p is producer]:
            del self._by_ssrc[ssrc]
        self.router.remove_source(producer)
        producer.close()

    def _publication_started(self, transceiver: RTCRtpTransceiver, producer: Producer, params: RTCRtpReceiveParameters) -> None:
        if self.closed or self._publications.get(transceiver) is not producer:
            return  # removed while its offer was outstanding
        self._configure_producer(transceiver, producer, params)
        layers = self._simulcast.get(str(transceiver.mid))
        if layers is not None and producer.kind == "video":
            producer.set_layers(layers.rids)  # (SSRCs learned from the RID in each stream's packets)
            logger.info("%s: track %s arrives as simulcast layers %s", self.name, producer.track_sid, layers.rids)
        for encoding in params.encodings if not producer.simulcast else ():
            producer.set_ssrcs(encoding.ssrc, encoding.rtx.ssrc if encoding.rtx else None)
        for ssrc in (producer.ssrc, producer.rtx_ssrc):
            if ssrc is not None:
                self._by_ssrc[ssrc] = producer  # (a reused section's publisher may keep its SSRC)
        self._unknown_ssrcs.clear()  # an SSRC refused before this publication may be its own now
        transport = transceiver.receiver.transport
        if id(transport) not in self._sinks:
            self._sinks.add(id(transport))
            hooks.attach_rtp_sink(transport, self._on_rtp)
        self._ensure_rtcp_loop()
        self.emit("publication_ready", producer)

    def _configure_producer(self, transceiver: RTCRtpTransceiver, producer: Producer, params: RTCRtpReceiveParameters | None = None) -> None:
        codecs = params.codecs if params is not None else hooks.negotiated_codecs(transceiver)
        extensions = params.headerExtensions if params is not None else hooks.negotiated_header_extensions(transceiver)
        media, rtx = codec_infos(codecs)
        ids = {e.uri: e.id for e in extensions}
        feedback = [(fb.type, fb.parameter) for c in codecs for fb in (c.rtcpFeedback or [])]
        nack = ("nack", None) in feedback
        remb = any(kind == "goog-remb" for kind, _ in feedback)
        producer.configure(media, rtx, ids.get(AUDIO_LEVEL_URI, 0), ids.get(MID_URI, 0), nack, remb)

    def _on_rtp(self, data: bytes) -> None:
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        producer = self._by_ssrc.get(ssrc)
        if producer is None:
            if ssrc in self._unknown_ssrcs:
                return
            producer = self._learn_ssrc(ssrc, data)
            if producer is None:
                if len(self._unknown_ssrcs) >= MAX_UNKNOWN_SSRCS:
                    self._unknown_ssrcs.pop(next(iter(self._unknown_ssrcs)))
                self._unknown_ssrcs[ssrc] = None
                return
        producer.on_rtp(data)

    def _learn_ssrc(self, ssrc: int, data: bytes) -> Producer | None:
        """Map an SSRC the SDP did not announce to its producer: by MID, else by a payload
        type only one publication negotiated. Only an SSRC the SDP left open is learned, so
        a stray or hostile SSRC never takes over a stream that is already known; and only
        for a publication whose answer is applied, so the tail of a removed publication's
        stream never lands in the new one on a reused m-section."""
        mid_id = next((p.mid_id for p in self._publications.values() if p.mid_id), 0)
        try:
            packet, mid = rtp.parse(data, 0, mid_id)
        except rtp.MalformedRtp:
            return None
        pt = packet.payload_type
        if mid is not None:
            name = mid.decode(errors="replace")
            candidates = [p for t, p in self._publications.items() if t.mid == name and p.codecs]
        else:
            candidates = [p for p in self._publications.values() if pt in p.codecs or pt in p.rtx_apt]
        if len(candidates) != 1:
            return None
        producer = candidates[0]
        if producer.simulcast:
            return self._learn_layer(producer, ssrc, data, pt)
        if pt in producer.rtx_apt:
            if producer.rtx_ssrc is not None:
                return None
            producer.rtx_ssrc = ssrc
        elif pt in producer.codecs and producer.ssrc is None:
            producer.ssrc = ssrc
        else:
            return None
        self._by_ssrc[ssrc] = producer
        return producer

    def _learn_layer(self, producer: Producer, ssrc: int, data: bytes, pt: int) -> Producer | None:
        """The simulcast layer of a new SSRC: by its RID header extension (the repaired RID for
        RTX), else by MID and SSRC order (the first layer still without one)."""
        answer = self._simulcast.get(next((str(t.mid) for t, p in self._publications.items() if p is producer), ""))
        values = rtp.extension_values(data)
        rtx = pt in producer.rtx_apt
        rid: bytes | None = None
        if answer is not None:
            rid = values.get(answer.repaired_rid_id) if rtx and answer.repaired_rid_id else None
            rid = rid or values.get(answer.rid_id)
        if rid is not None:
            layer = producer.layer_for(rid.decode(errors="replace"))
        else:
            layer = next((l for l in producer.layers if (l.rtx_ssrc if rtx else l.ssrc) is None), None)
        if layer is None:
            return None
        if rtx:
            if layer.rtx_ssrc is not None:
                return None
            layer.rtx_ssrc = ssrc
        elif pt in producer.codecs and layer.ssrc is None:
            layer.ssrc = ssrc
        else:
            return None
        self._by_ssrc[ssrc] = layer
        transceiver = next((t for t, p in self._publications.items() if p is producer), None)
        if transceiver is not None:
            hooks.route_ssrc(transceiver.receiver, ssrc)  # (its sender reports)
        logger.debug("%s: ssrc %d is layer %s of track %s", self.name, ssrc, layer.rid, producer.track_sid)
        return layer

    def _publisher_rtcp(self, producer: Producer, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket):
            for layer in producer.layers:
                if packet.ssrc == layer.ssrc:
                    layer.on_sender_report(packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp)

    def _send_nack(self, transceiver: RTCRtpTransceiver, rtcp_ssrc: int, media_ssrc: int, lost: list[int]) -> None:
        self._send_rtcp(transceiver, rtp.rtcp_nack(rtcp_ssrc, media_ssrc, lost))

    # --- subscribing -------------------------------------------------------------------

    def add_subscription(self, producer: Producer, stream_id: str) -> Consumer:
        transceiver = self._transceiver(producer.kind, "sendonly")
        transceiver.setCodecPreferences(self._codec_preferences(producer))
        hooks.set_sender_msid(transceiver.sender, stream_id, producer.track_sid)
        ssrc, rtx_ssrc = hooks.sender_ssrcs(transceiver.sender)
        consumer = Consumer(producer, self.router, lambda data: False, ssrc, rtx_ssrc)
        hooks.hook_sender(
            transceiver.sender,
            on_started=lambda params: self._subscription_started(transceiver, consumer, params),
            on_rtcp=consumer.on_rtcp,
        )
        self._subscriptions[transceiver] = consumer
        self._sections[transceiver] = ("subscribe", producer.track_sid)
        self.request_negotiation()
        return consumer

    def remove_subscription(self, consumer: Consumer) -> None:
        consumer.detach()
        transceiver = self._retire(self._subscriptions, consumer)
        if transceiver is not None:
            hooks.unhook_sender(transceiver.sender)

    def _retire(self, table: dict[RTCRtpTransceiver, Producer] | dict[RTCRtpTransceiver, Consumer], endpoint: object) -> RTCRtpTransceiver | None:
        """Make the m-section of ``endpoint`` inactive in the next offer (then reusable)."""
        transceiver = next((t for t, e in table.items() if e is endpoint), None)
        if transceiver is not None:
            del table[transceiver]  # type: ignore[arg-type]
            self._sections.pop(transceiver, None)
            transceiver.direction = "inactive"
            self._retired[transceiver] = None
            self.request_negotiation()
        return transceiver

    def _transceiver(self, kind: str, direction: Literal["sendonly", "recvonly"]) -> RTCRtpTransceiver:
        """A free m-section of ``kind`` (inactive in a negotiated offer), else a new one.

        A reused section gets new sender SSRCs, so neither side's receiver mistakes the new
        stream for the old one (a subscriber's jitter buffer and decoder, the publisher's
        feedback); the caller sets its msid, codecs and hooks as for a new one."""
        transceiver = next((t for t in self._free if t.kind == kind), None)
        if transceiver is None:
            return self.pc.addTransceiver(kind, direction=direction)
        self._free.remove(transceiver)
        hooks.renew_sender_ssrcs(transceiver)
        transceiver.direction = direction
        return transceiver

    @staticmethod
    def _codec_preferences(producer: Producer) -> list[RTCRtpCodecCapability]:
        keys = {c.key for c in producer.codecs.values()}
        capabilities = RTCRtpSender.getCapabilities(producer.kind).codecs
        preferred = [c for c in capabilities if codec_key(c.mimeType, dict(c.parameters)) in keys]
        preferred += [c for c in capabilities if c.mimeType.lower().endswith("/rtx")]
        return preferred

    def _subscription_started(self, transceiver: RTCRtpTransceiver, consumer: Consumer, params: RTCRtpSendParameters) -> None:
        if self.closed or self._subscriptions.get(transceiver) is not consumer:
            return  # unsubscribed while its offer was outstanding: never resurrect it
        consumer._write = self._writer(transceiver.sender.transport)
        media, rtx = codec_infos(params.codecs)
        if not consumer.configure(media, rtx, params.headerExtensions, params.muxId):
            logger.warning("%s: no common codec to forward track %s", self.name, consumer.producer.track_sid)
            return
        consumer.attach()
        self._ensure_rtcp_loop()
        self.emit("subscription_ready", consumer)

    # --- data channels -----------------------------------------------------------------

    def create_data_channel(self, label: str, options: DataTrackOptions) -> RTCDataChannel:
        return self.pc.createDataChannel(
            label,
            ordered=options.ordered,
            maxPacketLifeTime=options.max_packet_life_time,
            maxRetransmits=options.max_retransmits,
        )

    # --- negotiation -------------------------------------------------------------------

    def request_negotiation(self) -> None:
        if self.closed:
            return
        self._negotiation_needed = True
        if self._awaiting_first_offer:
            return  # made once the participant's first offer is applied (apply_offer)
        if self._negotiation_task is None or self._negotiation_task.done():
            self._negotiation_task = asyncio.create_task(self._negotiate())

    @property
    def negotiating(self) -> bool:
        return self._pending_answer is not None

    async def _negotiate(self) -> None:
        while self._negotiation_needed and not self.closed:
            self._negotiation_needed = False
            async with self._sdp_lock:  # (a participant's own offer is applied whole, before or after)
                if self.closed:
                    return
                # createOffer reads every direction before it first yields: the sections retired
                # by now are the ones this offer carries inactive (not those retired meanwhile).
                retiring = [t for t, revision in self._retired.items() if revision is None]
                offer = await self.pc.createOffer()
                if not self._client_offers:  # (the participant laid out the first sections)
                    offer = hooks.data_section_first(self.pc, offer)
                await self.pc.setLocalDescription(offer)
            if self.closed:
                return
            self.revision += 1
            for transceiver in retiring:
                if transceiver in self._retired and transceiver.mid is not None:
                    self._retired[transceiver] = self.revision
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending_answer = (self.revision, waiter)
            # Simulcast rids go on the sections the SFU offers for publications; a participant
            # that offers its own sections (the official SDK) lays out its simulcast itself.
            videos = set() if self._client_offers else {
                str(t.mid) for t, p in self._publications.items() if p.kind == "video" and t.mid is not None
            }
            sdp = simulcast.offer_simulcast(self.pc.localDescription.sdp, videos)
            self.emit("offer", Offer(self._announce(sdp), self.revision, self.sections()))
            try:
                await asyncio.wait_for(waiter, self.config.negotiation_timeout)
            except asyncio.TimeoutError:
                logger.warning("%s: no answer to offer %d", self.name, self.revision)
                self.emit("failed", "negotiation timed out")
                return
            finally:
                self._pending_answer = None

    def sections(self) -> list[MediaSection]:
        return [
            MediaSection(t.mid, t.kind, role, sid)
            for t, (role, sid) in self._sections.items()
            if t.mid is not None
        ]

    async def apply_answer(self, sdp: str, revision: int) -> None:
        pending = self._pending_answer
        if pending is None or pending[0] != revision:
            raise NegotiationError(errors.SIGNALING_ERROR, f"no offer with revision {revision} is waiting for an answer")
        sdp, rejected = self._accept_rejected_sections(sdp)
        self._simulcast = simulcast.answered_simulcast(sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:  # aiortc raises ValueError, OperationError, InvalidStateError...
            raise NegotiationError(errors.SERVER_REMOTE_DESCRIPTION_FAILED, f"unable to apply the answer: {exc}") from None
        for transceiver, when in list(self._retired.items()):
            if when is not None and when <= revision:
                del self._retired[transceiver]
                self._free.append(transceiver)
        failures: list[tuple[str, Consumer | Producer, str]] = []
        for transceiver in self.pc.getTransceivers():
            reason = rejected.get(str(transceiver.mid))
            if reason is None:
                continue
            consumer = self._subscriptions.get(transceiver)
            producer = self._publications.get(transceiver)
            if consumer is not None:
                self.remove_subscription(consumer)
                failures.append(("subscription_failed", consumer, reason))
            elif producer is not None:
                self.remove_publication(producer)
                failures.append(("publication_failed", producer, reason))
        self._reconfigure()
        if not pending[1].done():
            pending[1].set_result(None)
        for event, endpoint, reason in failures:
            self.emit(event, endpoint, reason)

    def _reconfigure(self) -> None:
        """Codecs and header extensions as the last negotiation agreed them."""
        for transceiver, consumer in self._subscriptions.items():
            if consumer._attached:
                media, rtx = codec_infos(hooks.negotiated_codecs(transceiver))
                consumer.configure(media, rtx, hooks.negotiated_header_extensions(transceiver), transceiver.mid)
        for transceiver, producer in self._publications.items():
            if producer.codecs:
                self._configure_producer(transceiver, producer)

    def _accept_rejected_sections(self, sdp: str) -> tuple[str, dict[str, str]]:
        """Rewrite each audio/video m-section the answer rejects (port 0) as an ``inactive``
        one aiortc can apply; returns the SDP and {mid: reason} of the rejected sections.

        A rejected section may carry no ICE credentials, no DTLS setup and no codecs (Firefox
        without the room's codec answers ``m=video 0 ... a=inactive``), which aiortc refuses
        or trips over. The replacement takes our offer's codecs for that section and the
        bundle's transport attributes from an accepted section of the same answer.
        """
        offer = self.pc.localDescription
        if offer is None or not re.search(r"^m=\S+ 0 ", sdp, flags=re.MULTILINE):
            return sdp, {}
        session, answer_blocks = sdp_blocks(sdp)
        _, offer_blocks = sdp_blocks(offer.sdp)
        accepted = next((b for b in answer_blocks if b[0].split()[1:2] != ["0"]), None)
        if accepted is None or len(offer_blocks) != len(answer_blocks):
            return sdp, {}  # nothing to take the transport from: let aiortc refuse it
        transport = [
            line for line in accepted
            if line.startswith(("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:", "a=candidate:", "a=end-of-candidates"))
        ]
        rejected: dict[str, str] = {}
        blocks = []
        for answered, offered in zip(answer_blocks, offer_blocks):
            m_line = offered[0].split()
            kind = m_line[0][2:]
            if answered[0].split()[1:2] != ["0"] or kind not in ("audio", "video"):
                blocks.append(answered)
                continue
            mid = next((line[6:] for line in offered if line.startswith("a=mid:")), "")
            codecs = [line.split(" ", 1)[1].split("/")[0] for line in offered if line.startswith("a=rtpmap:")]
            offered_codecs = ", ".join(c for c in dict.fromkeys(codecs) if c.lower() != "rtx")
            rejected[mid] = f"the answer rejected the {kind} m-section {mid} (offered {offered_codecs})"
            blocks.append(
                [f"m={kind} 9 {' '.join(m_line[2:])}", "c=IN IP4 0.0.0.0", "a=inactive", f"a=mid:{mid}", "a=rtcp-mux"]
                + [line for line in offered if line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))]
                + transport
            )
        return "\r\n".join(session + [line for block in blocks for line in block]) + "\r\n", rejected

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None) -> None:
        """A trickled remote candidate (``None`` or empty: end of candidates).

        Every m-section is bundled on one ICE transport, for which aiortc's own
        ``addIceCandidate`` does nothing (it skips bundled sections): add it there directly.
        """
        ice = self.pc.sctp.transport.transport  # type: ignore[union-attr]
        if not candidate:
            await ice.addRemoteCandidate(None)
            return
        text = candidate.split(":", 1)[1] if candidate.startswith("candidate:") else candidate
        try:
            parsed = candidate_from_sdp(text)
        except (ValueError, IndexError, AssertionError) as exc:  # aiortc asserts on too few fields
            raise NegotiationError(errors.SIGNALING_ERROR, f"malformed ICE candidate: {exc!r}") from None
        if parsed.component != 1 or parsed.protocol.lower() != "udp":
            return  # rtcp-mux and UDP only: nothing to check against
        if self._remote_candidates >= MAX_REMOTE_CANDIDATES:
            raise NegotiationError(errors.SIGNALING_ERROR, "too many ICE candidates")
        self._remote_candidates += 1
        parsed.sdpMid = sdp_mid
        parsed.sdpMLineIndex = sdp_mline_index
        try:
            await ice.addRemoteCandidate(parsed)
        except Exception as exc:
            raise NegotiationError(errors.SIGNALING_ERROR, f"unable to add ICE candidate: {exc}") from None

    def _announce(self, sdp: str) -> str:
        """Replace host candidate addresses with the operator's announced address."""
        address = self.config.announced_address
        if not address:
            return sdp
        return re.sub(
            r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host)",
            lambda m: m.group(1) + address + m.group(3),
            sdp,
            flags=re.MULTILINE,
        )

    # --- participant-made offers (the official twilio-video SDK offers first) -----------

    async def apply_offer(self, sdp: str, revision: int) -> str:
        """Apply the participant's offer; returns the answer's SDP (``revision`` is the offer's:
        our next offer carries a higher one). Raises NegotiationError.

        Glare: an offer that crosses one of ours (waiting for its answer, or being made) is
        refused; the SDK then rolls its own back, answers ours and offers again (aiortc has
        no rollback, so the SFU always wins). Each m-section the participant sends gets a
        forwarding receiver; the publication bound to its msid track id receives from it.
        """
        if self.closed:
            raise NegotiationError(errors.SIGNALING_ERROR, "the peer connection is closed")
        pending = self._pending_answer  # (answered already if its waiter is done)
        if (pending is not None and not pending[1].done()) or self._sdp_lock.locked():
            raise NegotiationError(errors.SIGNALING_ERROR, f"offer {revision} crosses the server's offer: the server's goes first")
        async with self._sdp_lock:
            self._client_offers = True
            sending = offered_tracks(sdp)
            try:
                with hooks.unnegotiated_transceivers_hidden(self.pc) as hide_new:
                    await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                    self._receive_offered(sending)
                    hide_new()
                    answer = await self.pc.createAnswer()
                    hide_new()
                    await self.pc.setLocalDescription(answer)
            except Exception as exc:  # aiortc raises ValueError, OperationError, InvalidStateError...
                logger.debug("%s: offer %d not applied", self.name, revision, exc_info=True)
                raise NegotiationError(errors.SERVER_REMOTE_DESCRIPTION_FAILED, f"unable to apply the offer: {exc}") from None
            self.revision = max(self.revision, revision)
            self._reconfigure()
        if self._awaiting_first_offer:
            self._awaiting_first_offer = False
            if self._negotiation_needed:  # (what the room asked for while we waited)
                self.request_negotiation()
        return self._announce(self.pc.localDescription.sdp)

    def bind_publication(self, producer: Producer, client_track_id: str) -> None:
        """Receive ``producer``'s media on the m-section the participant's offers send with
        msid track id ``client_track_id`` (now, or once an offer carries it)."""
        self._offered_producers[client_track_id] = producer
        self._bind_offered()

    def _offered_publication(self, track_sid: str, kind: Kind, client_track_id: str | None) -> Producer:
        def transceiver() -> RTCRtpTransceiver | None:
            return next((t for t, p in self._publications.items() if p is producer), None)

        def send_pli(ssrc: int) -> None:
            t = transceiver()
            if t is not None:
                self._send_rtcp(t, bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=hooks.sender_ssrcs(t.sender)[0], media_ssrc=ssrc)))

        def send_nack(ssrc: int, lost: list[int]) -> None:
            t = transceiver()
            if t is not None:
                self._send_nack(t, hooks.sender_ssrcs(t.sender)[0], ssrc, lost)

        producer = Producer(
            track_sid, kind, send_pli=send_pli, send_nack=send_nack,
            cache_size=self.config.retransmission_cache, keyframe_interval=self.config.keyframe_interval,
        )  # fmt: skip
        if client_track_id is not None:
            self.bind_publication(producer, client_track_id)
        return producer

    def _receive_offered(self, sending: dict[str, tuple[str, int | None, int | None]]) -> None:
        """After the participant's offer is set: hook a forwarding receiver on each m-section
        it sends (also one it reuses from our earlier offers), answer it with ``recv``, and
        forget the sections it stopped sending on."""
        for transceiver in self.pc.getTransceivers():
            entry = sending.get(str(transceiver.mid)) if transceiver.mid is not None else None
            if entry is None:
                if self._offered.pop(transceiver, None) is not None and transceiver in self._publications:
                    self._sections.pop(transceiver, None)
                    del self._publications[transceiver]
                continue
            if transceiver not in self._offered_started:
                self._offered_started[transceiver] = None
                hooks.hook_receiver(
                    transceiver.receiver,
                    on_started=functools.partial(self._offered_receiver_started, transceiver),
                    on_rtcp=functools.partial(self._offered_rtcp, transceiver),
                )
            transceiver.direction = "sendrecv" if transceiver in self._subscriptions else "recvonly"
            self._retired.pop(transceiver, None)
            if transceiver in self._free:
                self._free.remove(transceiver)
            previous = self._offered.get(transceiver)
            self._offered[transceiver] = entry
            if previous is not None and previous[0] != entry[0] and transceiver in self._publications:
                self._sections.pop(transceiver, None)  # another track on the same section now
                del self._publications[transceiver]
        self._bind_offered()

    def _bind_offered(self) -> None:
        for transceiver, (track_id, _, _) in self._offered.items():
            producer = self._offered_producers.get(track_id)
            if producer is None or self._publications.get(transceiver) is producer:
                continue
            self._publications[transceiver] = producer
            self._sections[transceiver] = ("publish", producer.track_sid)
            if self._offered_started.get(transceiver) is not None:
                self._start_offered(transceiver, producer)

    def _offered_receiver_started(self, transceiver: RTCRtpTransceiver, params: RTCRtpReceiveParameters) -> None:
        """DTLS is up for the section: start its publication if one is bound."""
        self._offered_started[transceiver] = True
        producer = self._publications.get(transceiver)
        if producer is not None and producer in self._offered_producers.values():
            self._start_offered(transceiver, producer)

    def _start_offered(self, transceiver: RTCRtpTransceiver, producer: Producer) -> None:
        """Start with the SSRCs of the participant's latest offer (a reused section's first
        receive parameters name the old track's)."""
        _, ssrc, rtx_ssrc = self._offered[transceiver]
        codecs = hooks.negotiated_codecs(transceiver)
        encodings = []
        if ssrc is not None and codecs:
            rtx = RTCRtpRtxParameters(ssrc=rtx_ssrc) if rtx_ssrc is not None else None
            encodings.append(RTCRtpDecodingParameters(ssrc=ssrc, payloadType=codecs[0].payloadType, rtx=rtx))
        params = RTCRtpReceiveParameters(
            codecs=codecs, headerExtensions=hooks.negotiated_header_extensions(transceiver), muxId=transceiver.mid or "", encodings=encodings
        )
        self._publication_started(transceiver, producer, params)

    def _offered_rtcp(self, transceiver: RTCRtpTransceiver, packet: AnyRtcpPacket) -> None:
        producer = self._publications.get(transceiver)
        if producer is not None:
            self._publisher_rtcp(producer, packet)

    def _unbind_offered(self, producer: Producer) -> None:
        for track_id in [k for k, p in self._offered_producers.items() if p is producer]:
            del self._offered_producers[track_id]
        for transceiver in [t for t, p in self._publications.items() if p is producer]:
            del self._publications[transceiver]
            self._sections.pop(transceiver, None)

    # --- RTCP --------------------------------------------------------------------------

    def _writer(self, transport: RTCDtlsTransport) -> Callable[[bytes], bool]:
        writer = self._writers.get(id(transport))
        if writer is None:
            writer = self._writers[id(transport)] = hooks.rtp_writer(transport)
        return writer

    def _send_rtcp(self, transceiver: RTCRtpTransceiver, data: bytes) -> None:
        self._writer(transceiver.receiver.transport)(data)

    def _ensure_rtcp_loop(self) -> None:
        if self._rtcp_task is None and not self.closed:
            self._rtcp_task = asyncio.create_task(self._rtcp_loop())

    async def _rtcp_loop(self) -> None:
        """Sender reports to the subscriber, receiver reports and REMB to the publisher."""
        while not self.closed:
            await asyncio.sleep(self.config.rtcp_interval)
            try:
                self._send_reports()
            except Exception:
                logger.exception("%s: RTCP report failed", self.name)

    def _send_reports(self) -> None:
        for transceiver, consumer in list(self._subscriptions.items()):
            if consumer.waiting_for_keyframe:
                consumer.producer.request_keyframe()  # the last PLI (or its keyframe) was lost
            consumer.follow_active_layers()
            pending = consumer.pending_layer
            if pending is not None:
                pending.request_keyframe()  # (a layer switch waits for that layer's keyframe)
            report = consumer.sender_report()
            if report is not None:
                self._writer(transceiver.sender.transport)(bytes(report))
        for transceiver, track in list(self._publications.items()):
            for producer in track.layers:
                self._report_to_publisher(transceiver, track, producer)

    def _report_to_publisher(self, transceiver: RTCRtpTransceiver, track: Producer, producer: Producer) -> None:
        """A receiver report (and REMB) for one RTP stream of a published track."""
        if producer.ssrc is None or producer.stats.base_seq is None:
            return
        rtcp_ssrc = hooks.sender_ssrcs(transceiver.sender)[0]
        stats = producer.stats
        expected = stats.expected()
        interval_expected = expected - stats.expected_prior
        interval_lost = interval_expected - (stats.packets - stats.received_prior)
        stats.expected_prior, stats.received_prior = expected, stats.packets
        fraction = (interval_lost << 8) // interval_expected if interval_expected > 0 and interval_lost > 0 else 0
        lost = max(-0x800000, min(0x7FFFFF, expected - stats.packets))
        data = bytes(
            RtcpRrPacket(
                ssrc=rtcp_ssrc,
                reports=[
                    RtcpReceiverInfo(
                        ssrc=producer.ssrc,
                        fraction_lost=min(fraction, 255),
                        packets_lost=lost,
                        highest_sequence=(stats.cycles + stats.max_seq) & 0xFFFFFFFF,
                        jitter=0,
                        lsr=stats.sr_ntp or 0,
                        dlsr=int((time.time() - stats.sr_arrival) * 65536) & 0xFFFFFFFF if stats.sr_ntp is not None else 0,
                    )
                ],
            )
        )
        if producer.remb_enabled:
            data += bytes(
                RtcpPsfbPacket(
                    fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(self._upstream_bitrate(track), [producer.ssrc])
                )
            )
        self._send_rtcp(transceiver, data)

    def _upstream_bitrate(self, producer: Producer) -> int:
        """The lowest recent estimate of its subscribers; for simulcast the server's cap: slow
        subscribers get a lower layer, not a throttled publisher."""
        cap = self.config.max_video_bitrate
        if producer.simulcast:
            return cap
        estimates = [e for e in (c.remb() for c in self.router.consumers(producer)) if e]
        return max(100_000, min([cap, *estimates]))

    # --- lifecycle ---------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        logger.info("%s: peer connection %s", self.name, state)
        if state == "failed":
            self.emit("failed", "peer connection failed")

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._negotiation_task, self._rtcp_task):
            if task is not None and not task.done():
                task.cancel()
        if self._pending_answer is not None and not self._pending_answer[1].done():
            self._pending_answer[1].cancel()
        for consumer in self._subscriptions.values():
            consumer.detach()
        for producer in self._publications.values():
            self.router.remove_source(producer)
            producer.close()
        self._subscriptions.clear()
        self._publications.clear()
        self._retired.clear()
        self._free.clear()
        await self.pc.close()


def sdp_blocks(sdp: str) -> tuple[list[str], list[list[str]]]:
    """The session lines and the lines of each m-section (each block starts with its m=)."""
    session: list[str] = []
    blocks: list[list[str]] = []
    for line in sdp.splitlines():
        if not line:
            continue
        if line.startswith("m="):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
        else:
            session.append(line)
    return session, blocks


def offered_tracks(sdp: str) -> dict[str, tuple[str, int | None, int | None]]:
    """The audio/video m-sections an offer sends on: mid -> (msid track id, SSRC, RTX SSRC).

    A section sends when its direction is ``sendrecv`` / ``sendonly`` and it names a track
    (media-level ``a=msid:<stream> <track>``, else an ``a=ssrc:<n> msid:`` line)."""
    out: dict[str, tuple[str, int | None, int | None]] = {}
    for block in sdp_blocks(sdp)[1]:
        if not block[0].startswith(("m=audio", "m=video")) or block[0].split()[1:2] == ["0"]:
            continue
        if not any(line in ("a=sendrecv", "a=sendonly") for line in block):
            continue
        mid = next((line[6:] for line in block if line.startswith("a=mid:")), None)
        msid = next((line[7:].split() for line in block if line.startswith("a=msid:")), None)
        if msid is None:
            msid = next((line.split("msid:", 1)[1].split() for line in block if line.startswith("a=ssrc:") and " msid:" in line), None)
        if mid is None or not msid or len(msid) < 2:
            continue
        ssrc = rtx = None
        fid = next((line.split()[1:] for line in block if line.startswith("a=ssrc-group:FID ")), None)
        if fid and len(fid) >= 2:
            ssrc, rtx = int(fid[0]), int(fid[1])
        else:
            first = next((line for line in block if line.startswith("a=ssrc:")), None)
            ssrc = int(first[7:].split()[0]) if first else None
        out[mid] = (msid[1], ssrc, rtx)
    return out
