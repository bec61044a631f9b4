"""Front-side proxies of one worker's transports and handles (``sfu.contracts`` over a channel).

Every call returns at once, as the contracts require: the proxy sends it to its worker, in
order, and the handles it returns carry ids made here. ``counters`` are copies refreshed
from the worker's stats notifications (about once a second). Events come back through
``RemoteTransport.dispatch`` and go to the room model's listener with the proxies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from .. import errors
from ..contracts import (
    BandwidthProfile,
    DataTrackOptions,
    Kind,
    MediaCounters,
    MediaSection,
    NegotiationError,
    Offer,
    Priority,
    TrackSink,
    TrackSource,
    TransportListener,
)
from .channel import ChannelClosed, RequestError

if TYPE_CHECKING:
    from .pool import Worker

logger = logging.getLogger(__name__)

WORKER_DIED = errors.MEDIA_CONNECTION_FAILED  # 53405: the worker carrying the transport exited
_ids = itertools.count(1)
H = TypeVar("H", bound="RemoteHandle")


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


class RemoteHandle:
    """A source or sink living in a worker; ``counters`` are as of its last stats. Its
    ``transport`` is None for a source made by the worker itself (the end of a pipe)."""

    def __init__(self, worker: Worker, transport: RemoteTransport | None, track_sid: str, kind: Kind) -> None:
        self.id = new_id("h")
        self.worker = worker
        self.transport = transport
        self._track_sid = track_sid
        self._kind = kind
        self._counters = MediaCounters()

    @property
    def track_sid(self) -> str:
        return self._track_sid

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def counters(self) -> MediaCounters:
        return self._counters

    def update(self, row: list[int]) -> None:
        c = self._counters
        c.packets, c.octets, c.lost, c.retransmitted, c.nacks, c.plis = row[:6]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self._kind} {self._track_sid}>"


class RemoteSource(RemoteHandle):
    def __init__(
        self, worker: Worker, transport: RemoteTransport | None, track_sid: str, kind: Kind, options: DataTrackOptions | None = None
    ) -> None:
        super().__init__(worker, transport, track_sid, kind)
        self._options = options
        self.rids: list[str] = []  # a simulcast track's layers (from publication_ready), for the pipe

    @property
    def data_options(self) -> DataTrackOptions | None:
        return self._options


class RemoteSink(RemoteHandle):
    def __init__(self, transport: RemoteTransport, source: RemoteSource) -> None:
        super().__init__(transport.worker, transport, source.track_sid, source.kind)
        self.source = source
        self.sender = transport

    def set_priority(self, priority: Priority) -> None:
        self.sender.call("set_priority", h=self.id, priority=priority)


class RemoteTransport:
    """A participant's transport in a worker process (a ``ParticipantTransport``)."""

    def __init__(self, worker: Worker, room_sid: str, name: str, listener: TransportListener, offers_first: bool = False) -> None:
        self.id = new_id("t")
        self.worker = worker
        self.room_sid = room_sid
        self.name = name
        self.listener = listener
        self.handles: dict[str, RemoteHandle] = {}
        self.closed = False
        self._negotiating = False
        # Channels the participant opened, not yet published: label -> options (None: unknown yet)
        self._channels: dict[str, DataTrackOptions | None] = {}
        self.call("create_transport", room=room_sid, name=name, offers_first=offers_first)

    # --- sending ---------------------------------------------------------------------------

    def call(self, method: str, **data: Any) -> None:
        """A call the room model does not wait for; a failure is logged (the worker already
        reported what it means through an event)."""
        if self.closed or not self.worker.alive:
            return
        future = self.worker.channel.request(method, {"t": self.id, **data})
        future.add_done_callback(self._check)

    def _check(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, RequestError):
            logger.warning("%s: worker %d refused a call: %s", self.name, self.worker.index, exc.message)

    async def _ask(self, method: str, **data: Any) -> Any:
        if self.closed:
            raise NegotiationError(WORKER_DIED, "the transport is closed")
        if not self.worker.alive:
            raise NegotiationError(WORKER_DIED, "Media connection failed: the media worker exited")
        try:
            return await self.worker.channel.request(method, {"t": self.id, **data})
        except RequestError as exc:
            raise NegotiationError(exc.code, exc.message) from None
        except ChannelClosed:
            raise NegotiationError(WORKER_DIED, "Media connection failed: the media worker exited") from None

    # --- ParticipantTransport -----------------------------------------------------------------

    def publish(
        self, track_sid: str, kind: Kind, codecs: list[str] | None = None, client_track_id: str | None = None
    ) -> TrackSource:
        source = self._add(RemoteSource(self.worker, self, track_sid, kind))
        self.call("publish", h=source.id, track_sid=track_sid, kind=kind, codecs=codecs, client_track_id=client_track_id)
        return source

    def publish_data(self, track_sid: str, label: str) -> TrackSource | None:
        if label not in self._channels:
            return None
        options = self._channels.pop(label) or DataTrackOptions()  # (corrected by the worker's answer)
        source = self._add(RemoteSource(self.worker, self, track_sid, "data", options))
        if self.closed or not self.worker.alive:
            return source
        future = self.worker.channel.request("publish_data", {"t": self.id, "h": source.id, "track_sid": track_sid, "label": label})
        future.add_done_callback(lambda f: self._data_published(source, f))
        return source

    def _data_published(self, source: RemoteSource, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        options = future.result()
        if isinstance(options, dict):
            source._options = DataTrackOptions(**options)

    def unpublish(self, source: TrackSource) -> None:
        self.call("unpublish", h=self._drop(source).id)

    def subscribe(self, source: TrackSource, stream_id: str, priority: Priority = "standard") -> TrackSink:
        assert isinstance(source, RemoteSource), source
        local = self.worker.plane.source_on(source, self.worker)
        sink = self._add(RemoteSink(self, local))
        self.call("subscribe", h=sink.id, source=local.id, stream_id=stream_id, priority=priority)
        return sink

    def unsubscribe(self, sink: TrackSink) -> None:
        self.call("unsubscribe", h=self._drop(sink).id)

    def release(self, sink: TrackSink) -> None:
        self.call("release", h=self._drop(sink).id)

    def set_bandwidth_profile(self, profile: BandwidthProfile) -> None:
        self.call("set_bandwidth_profile", profile=asdict(profile))

    def set_sink_hints(self, sink: TrackSink, render_dimensions: tuple[int, int] | None, switched_off_by_client: bool) -> None:
        assert isinstance(sink, RemoteHandle) and sink.transport is self, sink
        self.call("set_sink_hints", h=sink.id, render=list(render_dimensions) if render_dimensions else None, off=switched_off_by_client)

    def request_negotiation(self) -> None:
        self.call("request_negotiation")

    def set_dominant_speaker(self, track_sids: frozenset[str]) -> None:
        self.call("set_dominant_speaker", tracks=sorted(track_sids))

    @property
    def negotiating(self) -> bool:
        return self._negotiating

    async def apply_answer(self, sdp: str, revision: int) -> None:
        self._negotiating = bool(await self._ask("apply_answer", sdp=sdp, revision=revision))

    async def apply_offer(self, sdp: str, revision: int) -> str:
        answer = await self._ask("apply_offer", sdp=sdp, revision=revision)
        return str(answer)

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None) -> None:
        await self._ask("add_ice_candidate", candidate=candidate, sdp_mid=sdp_mid, sdp_mline_index=sdp_mline_index)

    async def close(self) -> None:
        if self.closed:
            return
        handles = list(self.handles)
        if self.worker.alive:
            try:
                await self.worker.channel.request("close_transport", {"t": self.id, "handles": handles})
            except (RequestError, ChannelClosed):
                pass
        self._gone()

    def _add(self, handle: H) -> H:
        self.handles[handle.id] = self.worker.handles[handle.id] = handle
        return handle

    def _drop(self, handle: TrackSource | TrackSink) -> RemoteHandle:
        assert isinstance(handle, RemoteHandle) and handle.transport is self, handle
        self.handles.pop(handle.id, None)
        self.worker.handles.pop(handle.id, None)
        return handle

    def _gone(self) -> None:
        self.closed = True
        self.worker.transports.pop(self.id, None)
        for handle_id in self.handles:
            self.worker.handles.pop(handle_id, None)

    # --- from the worker -----------------------------------------------------------------------

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """A notification about this transport: call the listener with the proxies."""
        if self.closed:
            return
        listener = self.listener
        if event == "offer":
            sections = [MediaSection(**section) for section in data["sections"]]
            self._negotiating = True
            listener.on_offer(Offer(data["sdp"], data["revision"], sections))
        elif event == "data_channel":
            options = data.get("options")
            self._channels[data["label"]] = DataTrackOptions(**options) if isinstance(options, dict) else None
            listener.on_data_channel(data["label"])
        elif event == "failed":  # (the room model still closes it, which frees it in the worker)
            listener.on_failed(int(data["code"]), str(data["reason"]))
        elif event == "network_quality":
            listener.on_network_quality(int(data["level"]), data.get("stats") or {})
        else:
            handle = self.handles.get(data.get("h", ""))
            if handle is None:
                return  # (already unpublished or unsubscribed here)
            if event == "publication_ready":
                if isinstance(handle, RemoteSource):
                    handle.rids = [str(rid) for rid in data.get("rids") or ()]
                listener.on_publication_ready(handle)  # type: ignore[arg-type]
            elif event == "publication_failed":
                listener.on_publication_failed(handle, data["reason"])  # type: ignore[arg-type]
            elif event == "publication_closed":
                listener.on_publication_closed(handle)  # type: ignore[arg-type]
            elif event == "subscription_failed":
                listener.on_subscription_failed(handle, data["reason"])  # type: ignore[arg-type]
            elif event == "subscription_lost":
                listener.on_subscription_lost(handle)  # type: ignore[arg-type]
            elif event == "sink_switched":
                listener.on_sink_switched(handle, bool(data["off"]), data.get("reason"))  # type: ignore[arg-type]
            elif event == "sink_layer":
                listener.on_sink_layer(handle, int(data["layer"]))  # type: ignore[arg-type]
            elif event == "audio_activity":
                listener.on_audio_activity(handle, float(data["level"]))  # type: ignore[arg-type]
            else:
                logger.warning("%s: unknown event %r from worker %d", self.name, event, self.worker.index)

    def lost(self, code: int, reason: str) -> None:
        """The worker carrying the transport died: it is gone."""
        if self.closed:
            return
        self._gone()
        self.listener.on_failed(code, reason)
