"""A room: its participants, their published tracks, and who subscribes to what."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyee.asyncio import AsyncIOEventEmitter

from . import rules as subscribe_rules
from . import sids
from .media.datatrack import DataConsumer, DataProducer, DataTrackOptions
from .media.peer import Peer
from .media.producer import Producer
from .media.consumer import Consumer
from .participant import KINDS, NO_SUPPORTED_CODEC, Participant, ParticipantError, PublishedTrack, Subscription

if TYPE_CHECKING:
    from .registry import RoomRegistry

logger = logging.getLogger(__name__)

ROOM_TYPES = {"go": 2, "peer-to-peer": 10, "group-small": 4, "group": 50}
MAX_TRACK_NAME = 128
MAX_ROOM_DURATION = 24 * 3600  # seconds: Twilio ends every room after 24 hours

# Twilio error codes used by the room model.
ROOM_FULL = 53105
ROOM_COMPLETED = 53118
DUPLICATE_IDENTITY = 53205
TRACK_KIND_NOT_SUPPORTED = 53125
MAX_TRACKS_EXCEEDED = 53203
TRACK_INVALID = 53300
PARTICIPANT_NOT_FOUND = 53204
SESSION_LENGTH_EXCEEDED = 53216


@dataclass
class RoomSettings:
    """What a room is created with (Twilio's Rooms resource parameters)."""

    type: str = "group"
    max_participants: int = 50
    max_participant_duration: int = 14400
    empty_room_timeout: int = 5
    unused_room_timeout: int = 5
    audio_only: bool = False
    video_codecs: list[str] | None = None
    media_region: str | None = None
    record_participants_on_connect: bool = False
    status_callback: str | None = None
    status_callback_method: str = "POST"
    max_concurrent_published_tracks: int | None = None
    enable_turn: bool = True
    large_room: bool = False
    created_via_rest: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Room(AsyncIOEventEmitter):
    """Events (all after the state changed): ``participant_connected`` (p),
    ``participant_disconnected`` (p), ``participant_updated`` (p), ``track_added``,
    ``track_removed``, ``track_enabled``, ``track_disabled`` (p, track), ``ended`` ()."""

    def __init__(self, sid: str, unique_name: str, settings: RoomSettings, registry: "RoomRegistry", created_at: datetime) -> None:
        super().__init__()
        self.sid = sid
        self.unique_name = unique_name
        self.settings = settings
        self.registry = registry
        self.status = "in-progress"
        self.created_at = created_at
        self.updated_at = created_at
        self.ended_at: datetime | None = None
        self.participants: dict[str, Participant] = {}
        self._membership = asyncio.Lock()
        self._empty_timer: asyncio.TimerHandle | None = None
        self._session_timers: dict[str, asyncio.TimerHandle] = {}
        self._lifetime_timer = registry.call_later(MAX_ROOM_DURATION, lambda: asyncio.ensure_future(self.end()))
        self.recording_rules: list[dict[str, Any]] | None = None
        self.on("participant_updated", registry.records.participant)  # e.g. reconnecting

    @property
    def in_progress(self) -> bool:
        return self.status == "in-progress"

    @property
    def duration(self) -> int | None:
        if self.ended_at is None:
            return None
        return int((self.ended_at - self.created_at).total_seconds())

    def find_participant(self, sid_or_identity: str) -> Participant | None:
        found = self.participants.get(sid_or_identity)
        if found is None:
            found = next((p for p in self.participants.values() if p.identity == sid_or_identity), None)
        return found

    # --- joining and leaving ------------------------------------------------------------

    async def join(self, identity: str, rules: list[dict[str, Any]] | None = None) -> Participant:
        """Add a participant; an existing one with the same identity is disconnected (53205).

        ``rules`` (already validated) replace the default subscribe-to-all rules."""
        async with self._membership:
            if not self.in_progress:
                raise ParticipantError(ROOM_COMPLETED, "Room completed")
            existing = next((p for p in self.participants.values() if p.identity == identity), None)
            if existing is not None:
                await self._remove(existing, DUPLICATE_IDENTITY, "Participant disconnected because of duplicate identity")
            if len(self.participants) >= self.settings.max_participants:
                raise ParticipantError(ROOM_FULL, "Room contains too many Participants")
            self._cancel_empty_timer()
            now = self.registry.now()
            peer = Peer(f"{self.unique_name}/{identity}", self.registry.media_config)
            participant = Participant(sids.new_sid(sids.PARTICIPANT), identity, self, peer, now)
            peer.on("failed", lambda reason: self._peer_failed(participant, reason))
            if rules is not None:
                participant.rules = rules
            self.participants[participant.sid] = participant
            self._session_timers[participant.sid] = self.registry.call_later(
                self.settings.max_participant_duration,
                lambda: asyncio.ensure_future(
                    self.remove(participant, SESSION_LENGTH_EXCEEDED, "Participant session length exceeded")
                ),
            )
            self.registry.records.participant(participant)
            self.registry.records.rules(participant)
            self.emit("participant_connected", participant)
            self._reconcile(participant)
            peer.request_negotiation()  # the first offer always opens the data channel transport
            return participant

    async def remove(self, participant: Participant, code: int | None = None, message: str | None = None) -> None:
        async with self._membership:
            await self._remove(participant, code, message)

    async def _remove(self, participant: Participant, code: int | None, message: str | None) -> None:
        if self.participants.get(participant.sid) is not participant:
            return
        del self.participants[participant.sid]
        timer = self._session_timers.pop(participant.sid, None)
        if timer is not None:
            timer.cancel()
        participant.status = "disconnected"
        participant.disconnected_at = self.registry.now()
        participant.revision += 1
        for track in list(participant.published.values()):
            self._unpublish(participant, track, notify=False)
        for sub in list(participant.subscriptions.values()):
            self._drop_subscription(participant, sub)
        participant.subscriptions.clear()
        participant.failed_subscriptions.clear()
        participant.close_pending_channels()
        participant.emit("removed", code, message)
        await participant.peer.close()
        self.registry.records.participant(participant)
        self.emit("participant_disconnected", participant)
        if not self.participants and self.in_progress:
            self._on_empty()

    def _peer_failed(self, participant: Participant, reason: str) -> None:
        logger.info("removing %s from %s: %s", participant.identity, self.unique_name, reason)
        asyncio.ensure_future(self.remove(participant, 53405, f"Media connection failed: {reason}"))

    def _on_empty(self) -> None:
        if not self.settings.created_via_rest:
            # Not end(): a join waiting on the membership lock (say, the same identity
            # replacing itself, 53205) may fill the room again before this runs.
            asyncio.ensure_future(self._end_if_empty())
            return
        self._schedule_end(self.settings.empty_room_timeout * 60)

    def _schedule_end(self, delay: float) -> None:
        self._cancel_empty_timer()
        self._empty_timer = self.registry.call_later(delay, lambda: asyncio.ensure_future(self._end_if_empty()))

    async def _end_if_empty(self) -> None:
        await self.end(only_if_empty=True)

    def _cancel_empty_timer(self) -> None:
        if self._empty_timer is not None:
            self._empty_timer.cancel()
            self._empty_timer = None

    async def end(self, status: str = "completed", only_if_empty: bool = False) -> None:
        """End the room: every participant is disconnected at once (53118). With
        ``only_if_empty``, only if nobody is in it once the membership lock is ours."""
        if not self.in_progress:
            return
        async with self._membership:
            if not self.in_progress or (only_if_empty and self.participants):
                return
            self._cancel_empty_timer()
            self._lifetime_timer.cancel()
            for participant in list(self.participants.values()):
                await self._remove(participant, ROOM_COMPLETED, "Room completed")
            self.status = status
            self.ended_at = self.updated_at = self.registry.now()
            self.registry.room_ended(self)
            self.emit("ended")

    # --- publishing ---------------------------------------------------------------------

    def publish(
        self,
        participant: Participant,
        client_id: str,
        kind: str,
        name: str | None = None,
        enabled: bool = True,
    ) -> PublishedTrack:
        if participant.status != "connected":
            raise ParticipantError(53204, "Participant is not connected")
        if kind not in KINDS:
            raise ParticipantError(TRACK_KIND_NOT_SUPPORTED, f"Track kind '{kind}' is not supported")
        if kind == "video" and self.settings.audio_only:
            raise ParticipantError(TRACK_KIND_NOT_SUPPORTED, "Video tracks are not allowed in an audio-only room")
        if not client_id or len(client_id) > 256:
            raise ParticipantError(TRACK_INVALID, "Track id is invalid")
        name = name or client_id
        if len(name) > MAX_TRACK_NAME:
            raise ParticipantError(TRACK_INVALID, "Track name is too long")
        live = [t for t in participant.published.values() if not t.unpublished]
        if any(t.client_id == client_id for t in live):
            raise ParticipantError(TRACK_INVALID, f"Track id '{client_id}' is already published")
        if any(t.name == name for t in live):
            raise ParticipantError(53304, f"Track name '{name}' is duplicated")
        limit = self.settings.max_concurrent_published_tracks
        if limit is not None and len(live) >= limit:
            raise ParticipantError(MAX_TRACKS_EXCEEDED, "Maximum number of published tracks exceeded")
        track = PublishedTrack(
            sid=sids.new_sid(sids.TRACK),
            name=name,
            kind=kind,
            client_id=client_id,
            publisher=participant,
            created_at=self.registry.now(),
            enabled=enabled,
        )
        participant.published[track.sid] = track
        participant.published_revision += 1
        if kind == "data":
            channel = participant.take_pending_channel(client_id)
            if channel is not None:
                participant.attach_data_channel(track, channel)
        else:
            codecs = self.settings.video_codecs if kind == "video" else None
            track.producer = participant.peer.add_publication(track.sid, kind, codecs)
        participant.emit("published_changed")
        return track

    def track_ready(self, participant: Participant, track: PublishedTrack) -> None:
        """The track's media started. A reconnecting publisher's media goes on without its
        websocket, so its tracks become ready too (``synced`` tells it on resume)."""
        if track.ready or track.unpublished or participant.status == "disconnected":
            return
        track.ready = True
        participant.revision += 1
        participant.published_revision += 1
        self.registry.records.track(track)
        participant.emit("published_changed")
        self.emit("participant_updated", participant)
        self.emit("track_added", participant, track)
        for other in list(self.participants.values()):
            if other is not participant:
                self._reconcile(other)

    def unpublish(self, participant: Participant, track: PublishedTrack) -> None:
        self._unpublish(participant, track, notify=True)

    def _unpublish(self, participant: Participant, track: PublishedTrack, notify: bool) -> None:
        if track.unpublished:
            if track.error is not None and participant.published.pop(track.sid, None) is not None:
                participant.published_revision += 1  # the client dropped its failed track
                if notify:
                    participant.emit("published_changed")
            return
        track.unpublished = True
        was_ready = track.ready
        for other in list(self.participants.values()):
            self._unsubscribe(other, track.sid)
        if isinstance(track.producer, Producer):
            participant.peer.remove_publication(track.producer)
        elif isinstance(track.producer, DataProducer):
            track.producer.close()
        participant.published.pop(track.sid, None)
        participant.published_revision += 1
        if was_ready:
            self.registry.records.track(track)
            participant.revision += 1
            self.emit("track_removed", participant, track)
        if notify:
            participant.emit("published_changed")
            if was_ready:
                self.emit("participant_updated", participant)

    def publication_failed(self, participant: Participant, producer: Producer, reason: str) -> None:
        """The publisher's answer rejected the track's m-section (say, the room's only video
        codec is one its browser lacks). The track is unpublished from the room but stays in
        the publisher's list as ``failed``, so the client's track list does not publish it
        again; it leaves when the client drops it."""
        track = participant.published.get(producer.track_sid)
        if track is None or track.producer is not producer or track.unpublished:
            return
        code, message = NO_SUPPORTED_CODEC, f"No supported codec: {reason}"
        logger.warning(
            "%s (%s) in %s: publication of track %s (%s) failed: %d %s",
            participant.identity, participant.sid, self.unique_name, track.sid, track.kind, code, message,
        )
        was_ready = track.ready
        self._unpublish(participant, track, notify=False)
        track.error = (code, message)
        participant.published[track.sid] = track
        participant.published_revision += 1
        participant.emit("published_changed")
        if was_ready:
            self.emit("participant_updated", participant)

    def subscription_failed(self, subscriber: Participant, consumer: Consumer, reason: str) -> None:
        """The subscriber's answer rejected the track's m-section: the track counts as not
        subscribed for it, and is not offered again while it stays wanted."""
        sid = consumer.producer.track_sid
        sub = subscriber.subscriptions.get(sid)
        if sub is None or sub.consumer is not consumer:
            return
        code, message = NO_SUPPORTED_CODEC, f"No supported codec: {reason}"
        logger.warning(
            "%s (%s) in %s: subscription to track %s (%s) failed: %d %s",
            subscriber.identity, subscriber.sid, self.unique_name, sid, sub.track.kind, code, message,
        )
        del subscriber.subscriptions[sid]
        self._drop_subscription(subscriber, sub)
        subscriber.failed_subscriptions[sid] = (code, message)
        subscriber.subscribed_revision += 1
        subscriber.emit("subscriptions_changed")

    def set_track_enabled(self, participant: Participant, track: PublishedTrack, enabled: bool) -> None:
        if track.enabled == enabled:
            return
        track.enabled = enabled
        if track.ready:
            participant.revision += 1
            self.registry.records.track(track)
            self.emit("participant_updated", participant)
            self.emit("track_enabled" if enabled else "track_disabled", participant, track)

    # --- subscribing --------------------------------------------------------------------

    def set_subscribe_rules(self, participant: Participant, rules: object) -> list[dict[str, Any]]:
        """Replace the participant's rules (raises rules.InvalidRules) and apply them now."""
        normalised = subscribe_rules.validate(rules)
        participant.rules = normalised
        participant.rules_updated_at = self.registry.now()
        self.registry.records.rules(participant)
        self._reconcile(participant)
        return normalised

    def set_recording_rules(self, rules: list[dict[str, Any]]) -> None:
        """Replace the room's (already validated) recording rules."""
        self.recording_rules = rules
        self.registry.records.recording_rules(self, rules)

    def _reconcile(self, subscriber: Participant) -> None:
        """Make the subscriber's subscriptions match its rules and the published tracks.

        A reconnecting subscriber keeps its peer connection, so it is reconciled too: its
        offers wait for the resume, when ``synced`` carries the subscriptions."""
        if subscriber.status == "disconnected":
            return
        wanted: dict[str, PublishedTrack] = {}
        for publisher in self.participants.values():
            if publisher is subscriber:
                continue
            for track in publisher.published.values():
                if track.ready and not track.unpublished and subscribe_rules.subscribes(subscriber.rules, track.ref()):
                    wanted[track.sid] = track
        changed = False
        for sid in [s for s in subscriber.failed_subscriptions if s not in wanted]:
            del subscriber.failed_subscriptions[sid]  # unpublished or no longer wanted: may be tried again later
            changed = True
        for sid in [s for s in subscriber.subscriptions if s not in wanted]:
            self._drop_subscription(subscriber, subscriber.subscriptions.pop(sid))
            changed = True
        for kept in subscriber.subscriptions.values():  # the rules may give them a new priority
            if isinstance(kept.consumer, Consumer):
                kept.consumer.priority = subscribe_rules.priority(subscriber.rules, kept.track.ref())
        for sid, track in wanted.items():
            if sid not in subscriber.subscriptions and sid not in subscriber.failed_subscriptions:
                sub = self._subscribe(subscriber, track)
                if sub is not None:
                    subscriber.subscriptions[sid] = sub
                    changed = True
        if changed:
            subscriber.subscribed_revision += 1
            subscriber.emit("subscriptions_changed")

    def _subscribe(self, subscriber: Participant, track: PublishedTrack) -> Subscription | None:
        producer = track.producer
        if isinstance(producer, Producer):
            consumer = subscriber.peer.add_subscription(producer, stream_id=track.publisher.sid)
            consumer.priority = subscribe_rules.priority(subscriber.rules, track.ref())  # (what overload sheds first)
            return Subscription(track, consumer, created_at=self.registry.now())
        if isinstance(producer, DataProducer):
            options: DataTrackOptions = producer.options
            channel = subscriber.peer.create_data_channel(track.sid, options)
            config = self.registry.media_config
            lost = functools.partial(self._data_consumer_lost, subscriber, track)
            data_consumer = DataConsumer(
                channel,
                options,
                high_water_mark=config.data_high_water_mark,
                max_queued=config.data_max_queued,
                max_queued_bytes=config.data_max_queued_bytes,
                on_overflow=lost,
                on_closed=lost,
            )
            producer.add_consumer(data_consumer)
            return Subscription(track, data_consumer, label=track.sid, created_at=self.registry.now())
        return None

    def _drop_subscription(self, subscriber: Participant, sub: Subscription) -> None:
        if isinstance(sub.consumer, DataConsumer):
            if isinstance(sub.track.producer, DataProducer):
                sub.track.producer.remove_consumer(sub.consumer)
            sub.consumer.close()
        elif subscriber.status != "disconnected":  # (a reconnecting one keeps its peer connection)
            subscriber.peer.remove_subscription(sub.consumer)
        else:
            sub.consumer.detach()

    def _unsubscribe(self, subscriber: Participant, track_sid: str) -> None:
        """Drop one subscription (or failed subscription) and tell the subscriber."""
        sub = subscriber.subscriptions.pop(track_sid, None)
        failed = subscriber.failed_subscriptions.pop(track_sid, None)
        if sub is not None:
            self._drop_subscription(subscriber, sub)
        if sub is not None or failed is not None:
            subscriber.subscribed_revision += 1
            subscriber.emit("subscriptions_changed")

    def _data_consumer_lost(self, subscriber: Participant, track: PublishedTrack, consumer: DataConsumer) -> None:
        """The subscriber's channel overflowed or was closed by the subscriber."""
        sub = subscriber.subscriptions.get(track.sid)
        if sub is not None and sub.consumer is consumer:  # not a later subscription to the same track
            self._unsubscribe(subscriber, track.sid)
