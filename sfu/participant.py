"""A participant in a room: its peer connection, what it publishes, what it receives."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiortc import RTCDataChannel
from pyee.asyncio import AsyncIOEventEmitter

from . import rules as subscribe_rules
from .media.consumer import Consumer
from .media.datatrack import DataConsumer, DataProducer, DataTrackOptions
from .media.peer import Peer
from .media.producer import Producer

if TYPE_CHECKING:
    from .room import Room

logger = logging.getLogger(__name__)

KINDS = ("audio", "video", "data")
NO_SUPPORTED_CODEC = 53404  # Twilio: the answer rejected the m-section (no codec in common)
MAX_PENDING_CHANNELS = 16  # data channels held, one per label, for tracks not published yet


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
    producer: Producer | DataProducer | None = None
    ready: bool = False
    unpublished: bool = False
    error: tuple[int, str] | None = None  # the publication failed (code, message); kept for the client

    def ref(self) -> subscribe_rules.TrackRef:
        return subscribe_rules.TrackRef(self.sid, self.name, self.kind, self.publisher.sid, self.publisher.identity)

    def describe(self) -> dict[str, Any]:
        return {"sid": self.sid, "name": self.name, "kind": self.kind, "enabled": self.enabled}


@dataclass(eq=False)
class Subscription:
    track: PublishedTrack
    consumer: Consumer | DataConsumer
    label: str | None = None  # the data channel label, for data tracks
    created_at: datetime | None = None

    @property
    def media(self) -> Consumer | None:
        return self.consumer if isinstance(self.consumer, Consumer) else None


class Participant(AsyncIOEventEmitter):
    """Events: ``offer`` (Offer), ``subscriptions_changed``, ``published_changed``,
    ``removed`` (code: int | None, message: str | None)."""

    def __init__(self, sid: str, identity: str, room: "Room", peer: Peer, now: datetime) -> None:
        super().__init__()
        self.sid = sid
        self.identity = identity
        self.room = room
        self.peer = peer
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
        self._pending_channels: dict[str, RTCDataChannel] = {}
        peer.on("offer", lambda offer: self.emit("offer", offer))
        peer.on("publication_ready", self._on_publication_ready)
        peer.on("publication_failed", lambda producer, reason: room.publication_failed(self, producer, reason))
        peer.on("subscription_failed", lambda consumer, reason: room.subscription_failed(self, consumer, reason))
        peer.on("datachannel", self._on_datachannel)

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
            tracks.append(entry)
        for sid, (code, message) in self.failed_subscriptions.items():
            tracks.append({"sid": sid, "error": {"code": code, "message": message}})
        return {"revision": self.subscribed_revision, "tracks": tracks}

    def track_by_client_id(self, client_id: str) -> PublishedTrack | None:
        return next((t for t in self.published.values() if t.client_id == client_id), None)

    # --- media events from the peer -----------------------------------------------------

    def _on_publication_ready(self, producer: Producer) -> None:
        track = self.published.get(producer.track_sid)
        if track is not None and not track.ready and not track.unpublished:
            self.room.track_ready(self, track)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        track = self.track_by_client_id(channel.label)
        if track is None or track.kind != "data" or track.producer is not None:
            self._hold_channel(channel)
            return
        self.attach_data_channel(track, channel)

    def _hold_channel(self, channel: RTCDataChannel) -> None:
        """Keep a channel until its track is published; close it past the cap or when its
        label is already waiting."""
        label = channel.label
        if label in self._pending_channels or len(self._pending_channels) >= MAX_PENDING_CHANNELS:
            logger.warning("%s: closing data channel %r: no track to attach it to", self.identity, label[:64])
            channel.close()
            return
        self._pending_channels[label] = channel

        def forget() -> None:  # closed while waiting: free its place
            if self._pending_channels.get(label) is channel:
                del self._pending_channels[label]

        channel.on("close", forget)

    def attach_data_channel(self, track: PublishedTrack, channel: RTCDataChannel) -> None:
        track.producer = DataProducer(track.sid, channel)
        track.data_options = track.producer.options
        channel.on("close", lambda: self.room.unpublish(self, track) if not track.unpublished else None)
        self.room.track_ready(self, track)

    def take_pending_channel(self, client_id: str) -> RTCDataChannel | None:
        return self._pending_channels.pop(client_id, None)

    def close_pending_channels(self) -> None:
        channels = list(self._pending_channels.values())
        self._pending_channels.clear()
        for channel in channels:
            channel.close()
