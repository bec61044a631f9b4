"""A participant in a room: what it publishes, what it receives, and its media transport
(a ``contracts.ParticipantTransport``, whose ``TransportListener`` it is)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyee.asyncio import AsyncIOEventEmitter

from . import rules as subscribe_rules
from .contracts import BandwidthProfile, DataTrackOptions, MediaPlane, Offer, ParticipantTransport, Priority, TrackSink, TrackSource

if TYPE_CHECKING:
    from .room import Room

logger = logging.getLogger(__name__)

KINDS = ("audio", "video", "data")


class ParticipantError(Exception):
    """A request from the participant that the room refuses (Twilio error code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class PublishedTrack:
    """A track a participant publishes; ``client_id`` is the id its client knows it by."""

    sid: str
    name: str
    kind: str
    client_id: str
    publisher: "Participant"
    created_at: datetime
    enabled: bool = True
    data_options: DataTrackOptions | None = None
    source: TrackSource | None = None  # the media plane's handle, once published
    ready: bool = False
    unpublished: bool = False
    error: tuple[int, str] | None = None  # the publication failed (code, message); kept for the client
    priority: Priority = "standard"  # Twilio's publish priority (publishTrack(track, {priority}))

    def ref(self) -> subscribe_rules.TrackRef:
        return subscribe_rules.TrackRef(self.sid, self.name, self.kind, self.publisher.sid, self.publisher.identity)

    def describe(self) -> dict[str, Any]:
        return {"sid": self.sid, "name": self.name, "kind": self.kind, "enabled": self.enabled, "priority": self.priority}


@dataclass(eq=False)
class Subscription:
    track: PublishedTrack
    sink: TrackSink
    label: str | None = None  # the data channel label, for data tracks
    created_at: datetime | None = None
    # Issue 12: what the subscriber said of it, and whether the media plane switched it off.
    priority: Priority | None = None  # the subscriber's own (RemoteVideoTrack.setPriority); None: the publisher's
    render_dimensions: tuple[int, int] | None = None
    switched_off_by_client: bool = False
    switched_off: bool = False
    switch_off_reason: str | None = None


class Participant(AsyncIOEventEmitter):
    """Events: ``offer`` (Offer), ``subscriptions_changed``, ``published_changed``,
    ``track_switched`` (Subscription: its ``switched_off`` changed, or the reason),
    ``removed`` (code: int | None, message: str | None).

    Its state is written by its room only (``sfu.room.Room``); what its transport reports
    goes to the room too."""

    def __init__(self, sid: str, identity: str, room: "Room", plane: MediaPlane, now: datetime, offers_first: bool = False) -> None:
        super().__init__()
        self.sid = sid
        self.identity = identity
        self.room = room
        self.status = "connected"
        self.revision = 1
        self.connected_at = now
        self.disconnected_at: datetime | None = None
        self.published: dict[str, PublishedTrack] = {}
        self.subscriptions: dict[str, Subscription] = {}
        # Tracks this participant could not subscribe to (its answer rejected the m-section):
        # track SID -> (code, message). Not retried while the track stays wanted.
        self.failed_subscriptions: dict[str, tuple[int, str]] = {}
        self.rules: list[dict[str, Any]] = [dict(r) for r in subscribe_rules.DEFAULT_RULES]
        self.rules_updated_at = now
        self.subscribed_revision = 1
        self.published_revision = 1
        self.bandwidth_profile = BandwidthProfile()
        self.audio_levels: dict[str, float] = {}  # audio track SID -> smoothed level (sfu.speakers)
        self.network_quality_level: int | None = None  # Twilio's 0-5, from the media plane
        self.network_quality_stats: dict[str, Any] | None = None
        self.transport: ParticipantTransport = plane.create_transport(
            room.sid, f"{room.unique_name}/{identity}", self, offers_first=offers_first
        )

    # --- state as the others see it -----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "identity": self.identity,
            "state": self.status,
            "revision": self.revision,
            "tracks": [t.describe() for t in self.published.values() if t.ready and not t.unpublished],
        }

    def published_state(self) -> dict[str, Any]:
        return {
            "revision": self.published_revision,
            "tracks": [self._published_entry(t) for t in self.published.values()],
        }

    @staticmethod
    def _published_entry(t: PublishedTrack) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": t.client_id, "sid": t.sid, "kind": t.kind, "name": t.name}
        if t.error is not None:
            entry.update(state="failed", error={"code": t.error[0], "message": t.error[1]})
        else:
            entry["state"] = "ready" if t.ready else "pending"
        return entry

    def subscribed_state(self) -> dict[str, Any]:
        tracks = []
        for sub in self.subscriptions.values():
            entry: dict[str, Any] = {"sid": sub.track.sid, "kind": sub.track.kind, "publisher": sub.track.publisher.sid}
            if sub.label is not None:
                entry["label"] = sub.label
            if sub.track.kind == "video":
                entry["switched_off"] = sub.switched_off
                if sub.switch_off_reason is not None:
                    entry["switch_off_reason"] = sub.switch_off_reason
            tracks.append(entry)
        for sid, (code, message) in self.failed_subscriptions.items():
            tracks.append({"sid": sid, "error": {"code": code, "message": message}})
        return {"revision": self.subscribed_revision, "tracks": tracks}

    def track_by_client_id(self, client_id: str) -> PublishedTrack | None:
        return next((t for t in self.published.values() if t.client_id == client_id), None)

    def track_by_source(self, source: TrackSource) -> PublishedTrack | None:
        track = self.published.get(source.track_sid)
        return track if track is not None and track.source is source else None

    # --- what the transport reports (contracts.TransportListener) ------------------------

    def on_offer(self, offer: Offer) -> None:
        self.emit("offer", offer)

    def on_publication_ready(self, source: TrackSource) -> None:
        track = self.track_by_source(source)
        if track is not None:
            self.room.track_ready(self, track)

    def on_publication_failed(self, source: TrackSource, reason: str) -> None:
        self.room.publication_failed(self, source, reason)

    def on_publication_closed(self, source: TrackSource) -> None:
        track = self.track_by_source(source)
        if track is not None:
            self.room.unpublish(self, track)

    def on_subscription_failed(self, sink: TrackSink, reason: str) -> None:
        self.room.subscription_failed(self, sink, reason)

    def on_subscription_lost(self, sink: TrackSink) -> None:
        self.room.subscription_lost(self, sink)

    def on_data_channel(self, label: str) -> None:
        track = self.track_by_client_id(label)
        if track is not None and track.kind == "data" and track.source is None and not track.unpublished:
            self.room.attach_data(self, track)

    def on_sink_switched(self, sink: TrackSink, switched_off: bool, reason: str | None) -> None:
        self.room.sink_switched(self, sink, switched_off, reason)

    def on_sink_layer(self, sink: TrackSink, layer: int) -> None:
        pass  # (the layer is the media plane's business; the client sees it in the video)

    def on_failed(self, code: int, reason: str) -> None:
        self.room.transport_failed(self, code, reason)

    def on_audio_activity(self, source: TrackSource, level: float) -> None:
        track = self.track_by_source(source)
        if track is not None:
            self.room.audio_activity(self, track, level)

    def on_network_quality(self, level: int, stats: dict[str, Any]) -> None:
        self.room.network_quality(self, level, stats)
