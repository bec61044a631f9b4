"""``GET /metrics``: the server's state in the Prometheus text format, read at scrape time.

Nothing here runs per packet. The media plane already counts what it forwards (each track
source's and sink's ``contracts.MediaCounters``); the collector walks the live room model
when scraped (rooms -> participants -> published tracks and subscriptions) and adds the final
counts of the tracks and subscriptions that went away, which it folds into running totals
when the model says they changed. So the ``*_total`` counters never go down while the
process lives. The media plane's own figures (its UDP port, the overload guard, and one entry
per media worker process) come from ``MediaPlane.figures()``.

``/metrics`` answers only with the REST credentials in HTTP Basic auth (API key SID/secret or
account SID/auth token), like ``/v1``: the server may listen on a public address, and the
numbers describe who uses it. Prometheus: ``basic_auth: {username: SK..., password: ...}``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from rest.auth import authorized
from sfu.credentials import Credentials
from sfu.contracts import MediaCounters, MediaPlane, PlaneFigures, TrackSink, TrackSource
from sfu.participant import Participant
from sfu.registry import RoomRegistry
from sfu.room import Room
from signaling.server import SignalingService

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
KINDS = ("audio", "video")


# --- event-loop lag ----------------------------------------------------------------------------


class LoopLagMonitor:
    """Sleeps ``interval`` seconds in a loop and records how late each wake-up was.

    A late wake-up means the loop was busy (or the process starved of CPU): every packet,
    websocket message and timer waited that long too.
    """

    def __init__(self, interval: float = 0.25, window: float = 30.0) -> None:
        self.interval = interval
        self.last = 0.0
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._window = window
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.last = max(0.0, now - before - self.interval)
            self._samples.append((now, self.last))
            while self._samples and self._samples[0][0] < now - self._window:
                self._samples.popleft()

    @property
    def worst(self) -> float:
        """The largest lag seen in the last ``window`` seconds."""
        return max((lag for _, lag in self._samples), default=0.0)


# --- media counters ----------------------------------------------------------------------------


@dataclass
class _Totals:
    """Per kind: counts of producers/consumers that are gone."""

    received_packets: collections.Counter[str] = field(default_factory=collections.Counter)
    received_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    lost_packets: collections.Counter[str] = field(default_factory=collections.Counter)
    sent_packets: collections.Counter[str] = field(default_factory=collections.Counter)
    sent_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    retransmitted: collections.Counter[str] = field(default_factory=collections.Counter)
    nacks: collections.Counter[str] = field(default_factory=collections.Counter)
    plis: collections.Counter[str] = field(default_factory=collections.Counter)

    def add_source(self, kind: str, counters: MediaCounters) -> None:
        self.received_packets[kind] += counters.packets
        self.received_bytes[kind] += counters.octets
        self.lost_packets[kind] += counters.lost

    def add_sink(self, kind: str, counters: MediaCounters) -> None:
        self.sent_packets[kind] += counters.packets
        self.sent_bytes[kind] += counters.octets
        self.retransmitted[kind] += counters.retransmitted
        self.nacks[kind] += counters.nacks
        self.plis[kind] += counters.plis

    def add(self, handle: "TrackSource | TrackSink", is_source: bool) -> None:
        if handle.kind in KINDS:
            (self.add_source if is_source else self.add_sink)(handle.kind, handle.counters)

    def plus(self, other: "_Totals") -> "_Totals":
        return _Totals(**{name: getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__})


_Handle = tuple["TrackSource | TrackSink", bool]  # (handle, is it a source)


def _media_of(participant: Participant) -> dict[int, _Handle]:
    """The participant's live audio/video sources and sinks, by identity."""
    found: dict[int, _Handle] = {}
    for track in participant.published.values():
        if track.source is not None and track.kind in KINDS:
            found[id(track.source)] = (track.source, True)
    for sub in participant.subscriptions.values():
        if sub.track.kind in KINDS:
            found[id(sub.sink)] = (sub.sink, False)
    return found


class SfuCollector(Collector):
    """Reads rooms, participants, tracks, media counters, signaling and store state when scraped."""

    def __init__(self, registry: RoomRegistry, signaling: SignalingService, lag: LoopLagMonitor, plane: MediaPlane | None = None) -> None:
        self.registry = registry
        self.plane = plane or registry.plane
        self.signaling = signaling
        self.lag = lag
        self._gone = _Totals()
        # Per participant SID: the producers/consumers seen last, so the ones that go away
        # are folded into ``_gone`` with their final counts (the objects are kept only until then).
        self._known: dict[str, dict[int, _Handle]] = {}
        registry.on("room_created", self._watch_room)

    # Model events (control plane only): keep ``_known`` in step and fold what went away.

    def _watch_room(self, room: Room) -> None:
        room.on("participant_connected", self._watch_participant)
        room.on("participant_disconnected", self._participant_gone)

    def _watch_participant(self, participant: Participant) -> None:
        self._known[participant.sid] = {}
        sync = lambda *_: self._sync(participant)  # noqa: E731
        for event in ("published_changed", "subscriptions_changed", "removed"):
            participant.on(event, sync)

    def _participant_gone(self, participant: Participant) -> None:
        self._sync(participant)
        self._fold(self._known.pop(participant.sid, {}).values())

    def _sync(self, participant: Participant) -> None:
        known = self._known.get(participant.sid)
        if known is None:
            return
        live = _media_of(participant)  # empty once removed: its tracks and subscriptions are dropped
        self._fold(media for key, media in known.items() if key not in live)
        self._known[participant.sid] = live

    def _fold(self, gone: Any) -> None:
        for handle, is_source in gone:
            self._gone.add(handle, is_source)

    # Scrape.

    def collect(self) -> Iterator[Metric]:
        rooms = list(self.registry.rooms.values())
        participants = [p for room in rooms for p in room.participants.values()]
        live = _Totals()
        published: collections.Counter[str] = collections.Counter()
        subscribed: collections.Counter[str] = collections.Counter()
        for p in participants:
            self._sync(p)  # also catches changes no event announced
            for handle, is_source in _media_of(p).values():
                live.add(handle, is_source)
            for track in p.published.values():
                if track.ready and not track.unpublished:
                    published[track.kind] += 1
            for sub in p.subscriptions.values():
                subscribed[sub.track.kind] += 1
        total = self._gone.plus(live)

        yield _gauge("sfu_rooms", "Rooms in progress", len(rooms))
        yield _gauge("sfu_participants", "Participants connected (or reconnecting) in rooms in progress", len(participants))
        yield _by_kind(GaugeMetricFamily, "sfu_published_tracks", "Published tracks, by kind", published, ("audio", "video", "data"))
        yield _by_kind(GaugeMetricFamily, "sfu_subscribed_tracks", "Subscriptions (a track forwarded to a participant), by kind",
                       subscribed, ("audio", "video", "data"))
        yield _by_kind(CounterMetricFamily, "sfu_packets_received", "RTP packets received from publishers", total.received_packets)
        yield _by_kind(CounterMetricFamily, "sfu_bytes_received", "RTP bytes received from publishers (whole packets)", total.received_bytes)
        yield _by_kind(CounterMetricFamily, "sfu_packets_sent", "RTP packets forwarded to subscribers (retransmissions excluded)",
                       total.sent_packets)
        yield _by_kind(CounterMetricFamily, "sfu_bytes_sent", "RTP payload bytes forwarded to subscribers (headers excluded, as in RTCP sender reports)", total.sent_bytes)
        yield _by_kind(CounterMetricFamily, "sfu_packets_lost",
                       "Packets found missing from publishers' streams: sequence gaps the SFU NACKs (video with NACK)",
                       total.lost_packets)
        yield _by_kind(CounterMetricFamily, "sfu_nacks_received", "NACKs received from subscribers", total.nacks)
        yield _by_kind(CounterMetricFamily, "sfu_plis_received", "PLIs (keyframe requests) received from subscribers", total.plis)
        yield _by_kind(CounterMetricFamily, "sfu_retransmissions", "Packets resent to subscribers in answer to NACKs", total.retransmitted)

        family = GaugeMetricFamily("sfu_signaling_connections", "Open signaling websockets, by state", labels=["state"])
        for state, value in sorted(self.signaling.connection_counts().items()):
            family.add_metric([state], value)
        yield family

        records = self.registry.records
        yield CounterMetricFamily("sfu_store_write_failures", "Failed attempts to write a record to the store", value=records.write_failures)
        yield _gauge("sfu_store_pending_records", "Records queued and not yet stored", records.pending)
        yield _gauge("sfu_store_healthy", "1 when the last store write succeeded or nothing is pending", int(records.healthy))

        yield from self._media_plane()

        yield _gauge("sfu_event_loop_lag_seconds", f"How late the last {self.lag.interval}s sleep woke up", self.lag.last)
        yield _gauge("sfu_event_loop_lag_max_seconds", "The largest event-loop lag in the last 30 seconds", self.lag.worst)


    def _media_plane(self) -> Iterator[Metric]:
        """The media plane's figures: its UDP ports and overload guards summed over its
        processes (as one process has them), then one series per process (``worker``)."""
        figures = self.plane.figures()
        total: collections.Counter[str] = collections.Counter()
        for f in figures:
            total.update(f.extra)
        if any("udp_received" in f.extra for f in figures):
            yield CounterMetricFamily("sfu_udp_datagrams_received", "Datagrams read from the media UDP port", value=total["udp_received"])
            yield CounterMetricFamily("sfu_udp_datagrams_sent", "Datagrams sent from the media UDP port", value=total["udp_sent"])
            family = CounterMetricFamily("sfu_udp_datagrams_dropped", "Datagrams the media UDP port dropped, by reason",
                                         labels=["reason"])
            for reason in ("send_failed", "unknown_source", "unknown_ufrag", "unauthenticated", "malformed", "handler_error"):
                family.add_metric([reason], total[f"udp_dropped_{reason}"])
            yield family
            yield _gauge("sfu_udp_send_backlog", "Datagrams waiting for room in the media socket's send buffer", total["udp_backlog"])
            yield _gauge("sfu_udp_ice_connections", "ICE connections registered on the media UDP port", total["udp_ice_connections"])
        if any("overload_level" in f.extra for f in figures):
            level = max(f.extra.get("overload_level", 0) for f in figures)
            lag = max(f.extra.get("overload_lag_seconds", 0.0) for f in figures)
            yield _gauge("sfu_overload_level", "Media plane load: 0 on time, 1 busy, 2 overloaded (video is being shed)", level)
            yield _gauge("sfu_overload_lag_seconds", "The overload guard's smoothed event-loop lag", lag)
            yield _gauge("sfu_video_consumers_shed_now", "Video subscriptions paused by the overload guard now", total["video_consumers_shed_now"])
            yield CounterMetricFamily("sfu_video_consumers_shed", "Video subscriptions the overload guard paused",
                                      value=total["video_consumers_shed"])
            yield CounterMetricFamily("sfu_video_consumers_resumed", "Shed video subscriptions the overload guard let back",
                                      value=total["video_consumers_resumed"])
        yield from _per_worker(figures)


def _worker_label(f: PlaneFigures) -> str:
    return "local" if f.worker is None else str(f.worker)


def _per_worker(figures: list[PlaneFigures]) -> Iterator[Metric]:
    """One series per media process (``worker="local"``: the in-process plane)."""
    yield _gauge("sfu_media_workers", "Media processes alive (1: the media plane runs in the server's process)",
                 sum(1 for f in figures if f.alive))
    gauges = (
        ("sfu_media_worker_up", "1 while the media process runs", lambda f: int(f.alive)),
        ("sfu_media_worker_rooms", "Rooms placed on the media process", lambda f: f.rooms),
        ("sfu_media_worker_transports", "Participants' transports on the media process", lambda f: f.transports),
    )
    for name, documentation, read in gauges:
        gauge = GaugeMetricFamily(name, documentation, labels=["worker"])
        for f in figures:
            gauge.add_metric([_worker_label(f)], read(f))
        yield gauge
    counters = (
        ("sfu_media_worker_packets_received", "Datagrams the media process read", lambda f: f.packets_in),
        ("sfu_media_worker_packets_sent", "Datagrams the media process sent", lambda f: f.packets_out),
        ("sfu_media_worker_restarts", "Times the media process was replaced after it died", lambda f: f.restarts),
    )
    for name, documentation, read in counters:
        counter = CounterMetricFamily(name, documentation, labels=["worker"])
        for f in figures:
            counter.add_metric([_worker_label(f)], read(f))
        yield counter


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_kind(
    cls: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    values: collections.Counter[str],
    kinds: tuple[str, ...] = KINDS,
) -> Metric:
    family = cls(name, documentation, labels=["kind"])
    for kind in kinds:
        family.add_metric([kind], values[kind])
    return family


# --- wiring ------------------------------------------------------------------------------------


class Metrics:
    """The ``/metrics`` endpoint of one server: its own collector registry (not the global one)."""

    def __init__(
        self, registry: RoomRegistry, signaling: SignalingService, credentials: Credentials, plane: MediaPlane | None = None
    ) -> None:
        """``plane``: whose figures to show (default: the registry's)."""
        self.credentials = credentials
        self.lag = LoopLagMonitor()
        self.collectors = CollectorRegistry()
        self.collectors.register(SfuCollector(registry, signaling, self.lag, plane))
        ProcessCollector(registry=self.collectors)  # process_cpu_seconds_total, process_resident_memory_bytes, fds

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(METRICS_PATH, self.handle)

        async def start(app: web.Application) -> None:
            self.lag.start()

        async def stop(app: web.Application) -> None:
            await self.lag.stop()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)

    async def handle(self, request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), self.credentials):
            return web.Response(status=401, text="Authenticate\n", headers={"WWW-Authenticate": 'Basic realm="SFU metrics"'})
        started = time.perf_counter()
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # text, or OpenMetrics if asked
        body = encode(self.collectors)
        logger.debug("metrics scraped in %.1f ms", (time.perf_counter() - started) * 1000)
        return web.Response(body=body, headers={"Content-Type": content_type})
