"""The media plane in this process: ``contracts.MediaPlane`` over aiortc peer connections.

``LocalMediaPlane`` owns the process's one media UDP socket (the ``UdpMux``) and the overload
guard's view of it, keeps one ``Router`` per room (the producer -> consumers fan-out map, as
mediasoup's Router does), and builds a ``PeerTransport`` per participant: the
``contracts.ParticipantTransport`` over one ``Peer``. The room model sees only the contracts;
the switches on media types (audio/video producer or data channel) live here.

A worker process hosts one of these with its own port (``sfu.workers``); ``sfu serve
--workers 1`` runs one in the server's own process.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
from collections.abc import Callable

from aiortc import RTCDataChannel

from .. import errors
from ..contracts import (
    BandwidthProfile,
    Kind,
    PlaneFigures,
    Priority,
    TrackSink,
    TrackSource,
    TransportListener,
)
from . import overload
from .allocator import SubscriberAllocation
from .audiolevel import AudioLevelMeter, window_level
from .consumer import Consumer
from .datatrack import DataConsumer, DataProducer
from .peer import MediaConfig, Peer
from .producer import Producer
from .quality import QualityMonitor
from .router import Router
from .udpmux import UdpMux

logger = logging.getLogger(__name__)

MAX_PENDING_CHANNELS = 16  # data channels held per participant, one per label, for tracks not published yet
ACTIVITY_INTERVAL = 0.25  # seconds between audio level reports (sfu.media.audiolevel)
QUALITY_INTERVAL = 1.0  # seconds between network quality measures (sfu.media.quality)


class UdpPortUnavailable(Exception):
    """The media UDP port could not be bound."""


class PeerTransport:
    """One participant's ``contracts.ParticipantTransport``: a ``Peer`` and the data channels
    its participant opened for tracks not published yet (held by label)."""

    def __init__(
        self, peer: Peer, listener: TransportListener, router: Router, on_closed: Callable[["PeerTransport"], None] | None = None
    ) -> None:
        self.peer = peer
        self._on_closed = on_closed
        self.listener = listener
        self.router = router
        self._pending_channels: dict[str, RTCDataChannel] = {}
        self._arriving: RTCDataChannel | None = None  # the channel on_data_channel is about
        self._data: set[DataProducer | DataConsumer] = set()  # (the Peer keeps the audio and video ones)
        self._meters: dict[Producer, AudioLevelMeter] = {}  # the audio sources' smoothed levels
        self._media: set[Producer | Consumer] = set()  # what network quality is measured on
        self.quality = QualityMonitor()
        self.dominant_speaker_tracks: frozenset[str] = frozenset()  # (for the allocator)
        self.closed = False
        # Which layer of each video sink this subscriber gets, or none (issue 12).
        self.allocation = SubscriberAllocation(
            lambda sink, off, reason: listener.on_sink_switched(sink, off, reason),  # type: ignore[arg-type]
            lambda sink, layer: listener.on_sink_layer(sink, layer),  # type: ignore[arg-type]
            # (the dominant speaker's tracks, kept by set_dominant_speaker: issue 12's speaker work)
            dominant=lambda: getattr(self, "dominant_speaker_tracks", frozenset()),
        )
        peer.on("subscription_ready", self.allocation.enforce)  # (attaching a consumer unpauses it)
        peer.on("offer", listener.on_offer)
        peer.on("publication_ready", listener.on_publication_ready)
        peer.on("publication_failed", listener.on_publication_failed)
        peer.on("subscription_failed", listener.on_subscription_failed)
        peer.on("datachannel", self._on_datachannel)
        peer.on("failed", lambda reason: listener.on_failed(errors.MEDIA_CONNECTION_FAILED, f"Media connection failed: {reason}"))

    # --- publishing --------------------------------------------------------------------

    def publish(
        self, track_sid: str, kind: Kind, codecs: list[str] | None = None, client_track_id: str | None = None
    ) -> TrackSource:
        producer = self.peer.add_publication(track_sid, kind, codecs, client_track_id)
        self._media.add(producer)
        if kind == "audio":
            self._meters[producer] = AudioLevelMeter()
        return producer

    def publish_data(self, track_sid: str, label: str) -> TrackSource | None:
        arriving = self._arriving
        if arriving is not None and arriving.label == label:
            channel: RTCDataChannel | None = arriving
            self._arriving = None
        else:
            channel = self._pending_channels.pop(label, None)
        if channel is None:
            return None
        source = DataProducer(track_sid, channel)
        self._data.add(source)

        def closed() -> None:
            if not source.closed:
                self.listener.on_publication_closed(source)

        channel.on("close", closed)
        return source

    def unpublish(self, source: TrackSource) -> None:
        if isinstance(source, Producer):
            self._media.discard(source)
            self._meters.pop(source, None)
            self.peer.remove_publication(source)  # (detaches its consumers from the router)
        elif isinstance(source, DataProducer):
            self._data.discard(source)
            self.router.remove_source(source)
            source.close()

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        """Offer the channel to the room model (``on_data_channel``); if it publishes no track
        on it now, hold it until one is published, closing it past the cap or when its label is
        already waiting."""
        self._arriving = channel
        try:
            self.listener.on_data_channel(channel.label)
        finally:
            taken = self._arriving is None
            self._arriving = None
        if taken:
            return
        label = channel.label
        if label in self._pending_channels or len(self._pending_channels) >= MAX_PENDING_CHANNELS:
            logger.warning("%s: closing data channel %r: no track to attach it to", self.peer.name, label[:64])
            channel.close()
            return
        self._pending_channels[label] = channel

        def forget() -> None:  # closed while waiting: free its place
            if self._pending_channels.get(label) is channel:
                del self._pending_channels[label]

        channel.on("close", forget)

    # --- subscribing -------------------------------------------------------------------

    def subscribe(self, source: TrackSource, stream_id: str, priority: Priority = "standard") -> TrackSink:
        if isinstance(source, Producer):
            consumer = self.peer.add_subscription(source, stream_id=stream_id)
            consumer.priority = priority  # (what overload sheds first, and the allocator)
            self._media.add(consumer)
            if consumer.kind == "video":
                self.allocation.add(consumer)
            return consumer
        if not isinstance(source, DataProducer):
            raise TypeError(f"not a source of this media plane: {source!r}")
        config = self.peer.config
        channel = self.peer.create_data_channel(source.track_sid, source.options)
        lost = self.listener.on_subscription_lost
        sink = DataConsumer(
            channel,
            source.options,
            high_water_mark=config.data_high_water_mark,
            max_queued=config.data_max_queued,
            max_queued_bytes=config.data_max_queued_bytes,
            on_overflow=lost,
            on_closed=lost,
        )
        self.router.add_data_consumer(source, sink)
        self._data.add(sink)
        return sink

    def unsubscribe(self, sink: TrackSink) -> None:
        if isinstance(sink, Consumer):
            self.allocation.remove(sink)
            self._media.discard(sink)
            self.peer.remove_subscription(sink)
        else:
            self.release(sink)

    def release(self, sink: TrackSink) -> None:
        if isinstance(sink, Consumer):
            self.allocation.remove(sink)
            self._media.discard(sink)
            sink.detach()
        elif isinstance(sink, DataConsumer):
            self._data.discard(sink)
            self.router.remove_data_consumer(sink)

    # --- allocation (issue 12) ----------------------------------------------------------

    def set_bandwidth_profile(self, profile: BandwidthProfile) -> None:
        self.allocation.set_profile(profile)

    def set_sink_hints(self, sink: TrackSink, render_dimensions: tuple[int, int] | None, switched_off_by_client: bool) -> None:
        self.allocation.set_hints(sink, render_dimensions, switched_off_by_client)
    # --- audio activity, network quality, the dominant speaker --------------------------

    def set_dominant_speaker(self, track_sids: frozenset[str]) -> None:
        """(The allocator reads ``dominant_speaker_tracks`` when it decides.)"""
        self.dominant_speaker_tracks = frozenset(track_sids)

    def report_audio_activity(self) -> None:
        """One window of each audio source's RFC 6464 levels: report the changed ones."""
        for producer, meter in list(self._meters.items()):
            level = meter.update(window_level(*producer.take_levels()))
            if level is not None:
                self.listener.on_audio_activity(producer, level)

    def report_network_quality(self, elapsed: float) -> None:
        """One window of network quality: report the level when it changed."""
        media = list(self._media)
        producers = [m for m in media if isinstance(m, Producer)]
        consumers = [m for m in media if isinstance(m, Consumer)]
        if self.quality.measure(producers, consumers, elapsed) and self.quality.level is not None:
            self.listener.on_network_quality(self.quality.level, self.quality.stats or {})

    # --- negotiation -------------------------------------------------------------------

    def request_negotiation(self) -> None:
        self.peer.request_negotiation()

    @property
    def negotiating(self) -> bool:
        return self.peer.negotiating

    async def apply_answer(self, sdp: str, revision: int) -> None:
        await self.peer.apply_answer(sdp, revision)

    async def apply_offer(self, sdp: str, revision: int) -> str:
        return await self.peer.apply_offer(sdp, revision)

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None) -> None:
        await self.peer.add_ice_candidate(candidate, sdp_mid, sdp_mline_index)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.allocation.close()
        channels = list(self._pending_channels.values())
        self._pending_channels.clear()
        for channel in channels:
            channel.close()
        for endpoint in list(self._data):  # (the room released them already, unless it failed)
            if isinstance(endpoint, DataProducer):
                self.unpublish(endpoint)
            else:
                self.release(endpoint)
        if self._on_closed is not None:
            self._on_closed(self)
        await self.peer.close()


class LocalMediaPlane:
    """``contracts.MediaPlane`` in this process.

    ``udp_port``: the one UDP port of all media, bound by ``start`` on ``udp_host`` (None: every
    interface, IPv6 ones too when the announced address is IPv6); 0 lets the OS choose; None
    binds no mux (each peer connection binds sockets of its own, aioice's default).
    ``worker`` is this plane's number in ``figures`` (None: the server's own process)."""

    def __init__(
        self,
        config: MediaConfig,
        udp_port: int | None = 0,
        udp_host: str | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self.udp_port = udp_port
        self.udp_host = udp_host
        self.worker = worker
        self.routers: dict[str, Router] = {}
        self.transports: set[PeerTransport] = set()
        self._guard: overload.OverloadGuard | None = None
        self.activity_interval = ACTIVITY_INTERVAL
        self.quality_interval = QUALITY_INTERVAL
        self._monitor: asyncio.Task[None] | None = None

    @property
    def udp_mux(self) -> UdpMux | None:
        return self.config.udp_mux

    async def start(self) -> None:
        if self.udp_port is not None and self.config.udp_mux is None:
            mux = self.config.udp_mux = self._open_udp_mux(self.udp_port)
            # The overload guard sheds video only when the media input piles up, not on bursts.
            self._guard = overload.guard_for(asyncio.get_running_loop())
            self._guard.backlog = lambda: mux.saturation

    def _open_udp_mux(self, port: int) -> UdpMux:
        announced = self.config.announced_address
        host = self.udp_host or ("::" if announced and ipaddress.ip_address(announced).version == 6 else "0.0.0.0")
        try:
            mux = UdpMux.bind(port, host)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise UdpPortUnavailable(f"cannot bind UDP port {port} for media: {reason}") from None
        logger.info("media on UDP port %d (one socket for every participant)", mux.port)
        return mux

    def router(self, room_sid: str) -> Router:
        router = self.routers.get(room_sid)
        if router is None:
            router = self.routers[room_sid] = Router(room_sid)
        return router

    def create_transport(self, room_sid: str, name: str, listener: TransportListener, offers_first: bool = False) -> PeerTransport:
        router = self.router(room_sid)
        peer = Peer(name, self.config, router, offers_first=offers_first)
        transport = PeerTransport(peer, listener, router, self.transports.discard)
        self.transports.add(transport)
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())
        return transport

    async def _monitor_loop(self) -> None:
        """Audio levels every ``activity_interval``, network quality every
        ``quality_interval``, for every transport, while there are any."""
        loop = asyncio.get_running_loop()
        measured = loop.time()
        while self.transports:
            await asyncio.sleep(self.activity_interval)
            now = loop.time()
            quality_due = now - measured >= self.quality_interval
            for transport in list(self.transports):
                try:
                    transport.report_audio_activity()
                    if quality_due:
                        transport.report_network_quality(now - measured)
                except Exception:
                    logger.exception("%s: audio activity or network quality failed", transport.peer.name)
            if quality_due:
                measured = now

    def room_closed(self, room_sid: str) -> None:
        router = self.routers.pop(room_sid, None)
        if router is not None:
            router.close()

    def figures(self) -> list[PlaneFigures]:
        figures = PlaneFigures(worker=self.worker, pid=os.getpid(), rooms=len(self.routers), transports=len(self.transports))
        extra: dict[str, float] = {}
        mux = self.config.udp_mux
        if mux is not None:
            stats = mux.stats
            figures.udp_port = mux.port
            figures.packets_in, figures.packets_out = stats.received, stats.sent
            extra.update(
                udp_received=stats.received, udp_sent=stats.sent, udp_backlog=mux.backlog, udp_ice_connections=mux.connections,
                udp_dropped_send_failed=stats.send_dropped, udp_dropped_unknown_source=stats.unknown_source,
                udp_dropped_unknown_ufrag=stats.unknown_ufrag, udp_dropped_unauthenticated=stats.unauthenticated,
                udp_dropped_malformed=stats.malformed, udp_dropped_handler_error=stats.handler_errors,
            )  # fmt: skip
        guard = self._guard or overload.guard_for_running_loop()
        if guard is not None:
            extra.update(
                overload_level=int(guard.level), overload_lag_seconds=guard.lag, video_consumers_shed_now=guard.shed_now,
                video_consumers_shed=guard.shed_total, video_consumers_resumed=guard.resumed_total,
            )  # fmt: skip
        # Issue 12: video subscriptions switched off now (they cost no forwarding).
        extra["video_sinks_switched_off"] = sum(t.allocation.switched_off for t in self.transports)
        figures.extra = extra
        return [figures]

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        for transport in list(self.transports):
            await transport.close()
        for room_sid in list(self.routers):
            self.room_closed(room_sid)
        if self.config.udp_mux is not None:
            self.config.udp_mux.close()
            self.config.udp_mux = None
