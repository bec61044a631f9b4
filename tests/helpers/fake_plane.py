"""A media plane without media, for testing the worker channel, host and pool
(``--plane tests.helpers.fake_plane:build``): it keeps the contracts' rules (offers with
revisions, answers checked against them, sinks counting what their source "received")."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sfu.contracts import (
    DataTrackOptions,
    Kind,
    MediaCounters,
    MediaSection,
    NegotiationError,
    Offer,
    PlaneFigures,
    Priority,
    TrackSink,
    TrackSource,
    TransportListener,
)
from sfu.workers import channel


class FakeSource:
    def __init__(self, track_sid: str, kind: Kind, options: DataTrackOptions | None = None) -> None:
        self.track_sid = track_sid
        self.kind = kind
        self.data_options = options
        self.counters = MediaCounters()


class FakeSink:
    def __init__(self, source: FakeSource) -> None:
        self.source = source
        self.track_sid = source.track_sid
        self.kind = source.kind
        self.counters = MediaCounters()
        self.priority: Priority = "standard"

    def set_priority(self, priority: Priority) -> None:
        self.priority = priority


class FakeTransport:
    def __init__(self, plane: FakePlane, room_sid: str, name: str, listener: TransportListener) -> None:
        self.plane = plane
        self.offers_first = False  # (then offers are held until apply_offer, as the contract says)
        self.offered: list[str] = []
        self.held = False  # client track ids published on the participant's own sections
        self.room_sid = room_sid
        self.name = name
        self.listener = listener
        self.revision = 0
        self.pending: int | None = None
        self.sources: list[FakeSource] = []
        self.sinks: list[FakeSink] = []
        self.closed = False
        if name.endswith("/oversize"):  # a worker that breaks the protocol (the front must kill it)
            channel.MAX_FRAME = 1 << 30
            asyncio.get_running_loop().call_soon(self._offer, "x" * (2 << 20))
        if name.endswith("/channel"):
            asyncio.get_running_loop().call_soon(listener.on_data_channel, "chat")

    def _offer(self, sdp: str = "v=0 fake") -> None:
        self.revision += 1
        self.pending = self.revision
        sections = [MediaSection(str(i), s.kind, "publish", s.track_sid) for i, s in enumerate(self.sources)]
        self.listener.on_offer(Offer(sdp, self.revision, sections))

    def publish(self, track_sid: str, kind: Kind, codecs: list[str] | None = None, client_track_id: str | None = None) -> TrackSource:
        source = FakeSource(track_sid, kind)
        self.sources.append(source)
        if client_track_id is not None:
            self.offered.append(client_track_id)
        asyncio.get_running_loop().call_soon(self.listener.on_publication_ready, source)
        return source

    def publish_data(self, track_sid: str, label: str) -> TrackSource | None:
        source = FakeSource(track_sid, "data", DataTrackOptions(ordered=False, max_retransmits=3))
        self.sources.append(source)
        return source

    def unpublish(self, source: TrackSource) -> None:
        self.sources.remove(source)  # type: ignore[arg-type]

    def subscribe(self, source: TrackSource, stream_id: str, priority: Priority = "standard") -> TrackSink:
        assert isinstance(source, FakeSource)
        sink = FakeSink(source)
        sink.priority = priority
        self.sinks.append(sink)
        if stream_id == "reject":
            asyncio.get_running_loop().call_soon(self.listener.on_subscription_failed, sink, "no codec in common")
        return sink

    def unsubscribe(self, sink: TrackSink) -> None:
        self.sinks.remove(sink)  # type: ignore[arg-type]

    def release(self, sink: TrackSink) -> None:
        self.sinks.remove(sink)  # type: ignore[arg-type]

    def request_negotiation(self) -> None:
        if self.offers_first:
            self.held = True
            return
        asyncio.get_running_loop().call_soon(self._offer)

    @property
    def negotiating(self) -> bool:
        return self.pending is not None

    async def apply_answer(self, sdp: str, revision: int) -> None:
        await asyncio.sleep(0)
        if revision != self.pending:
            raise NegotiationError(53000, f"no offer with revision {revision} is waiting for an answer")
        self.pending = None

    async def apply_offer(self, sdp: str, revision: int) -> str:
        self.revision = max(self.revision, revision)
        if self.offers_first:
            self.offers_first = False
            if self.held:
                asyncio.get_running_loop().call_soon(self._offer)
        return f"answer to {sdp}" + (f" receiving {','.join(self.offered)}" if self.offered else "")

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None) -> None:
        if candidate == "bad":
            raise NegotiationError(53000, "malformed ICE candidate")

    async def close(self) -> None:
        self.closed = True
        self.plane.transports.discard(self)


class FakePlane:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.transports: set[FakeTransport] = set()
        self.rooms: set[str] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.spec.get("fail"):
            raise OSError(98, "Address already in use")
        self._ticker = asyncio.ensure_future(self._forward())

    async def _forward(self) -> None:
        """Every source "receives" 10 packets per 50 ms; every sink "sends" them on."""
        while True:
            await asyncio.sleep(0.05)
            for transport in self.transports:
                for source in transport.sources:
                    source.counters.packets += 10
                    source.counters.octets += 10_000
                for sink in transport.sinks:
                    sink.counters.packets = sink.source.counters.packets
                    sink.counters.octets = sink.source.counters.octets

    def create_transport(self, room_sid: str, name: str, listener: TransportListener, offers_first: bool = False) -> FakeTransport:
        transport = FakeTransport(self, room_sid, name, listener)
        transport.offers_first = offers_first
        self.transports.add(transport)
        self.rooms.add(room_sid)
        return transport

    def room_closed(self, room_sid: str) -> None:
        self.rooms.discard(room_sid)

    def figures(self) -> list[PlaneFigures]:
        out = sum(s.counters.packets for t in self.transports for s in t.sinks)
        received = sum(s.counters.packets for t in self.transports for s in t.sources)
        return [PlaneFigures(None, os.getpid(), rooms=len(self.rooms), transports=len(self.transports),
                             packets_in=received, packets_out=out, udp_port=self.spec.get("udp_port") or 40000)]

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()


def build(spec: dict[str, Any]) -> FakePlane:
    return FakePlane(spec)
