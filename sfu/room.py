"""A room: its participants, their published tracks, and who subscribes to what."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from pyee.asyncio import AsyncIOEventEmitter

from . import rules as subscribe_rules
from . import sids
from .contracts import BandwidthProfile, Kind, NegotiationError, Priority, TrackSink, TrackSource
from .errors import (
    DUPLICATE_IDENTITY,
    MAX_TRACKS_EXCEEDED,
    NO_SUPPORTED_CODEC,
    PARTICIPANT_NOT_FOUND,
    ROOM_COMPLETED,
    ROOM_FULL,
    SESSION_LENGTH_EXCEEDED,
    SIGNALING_CONNECTION_LOST,
    TRACK_INVALID,
    TRACK_KIND_NOT_SUPPORTED,
    TRACK_NAME_DUPLICATED,
)
from .participant import KINDS, Participant, ParticipantError, PublishedTrack, Subscription
from .rules import PRIORITIES
from .speakers import SpeakerDetector

if TYPE_CHECKING:
    from .registry import RoomRegistry

logger = logging.getLogger(__name__)

ROOM_TYPES = {"go": 2, "peer-to-peer": 10, "group-small": 4, "group": 50}
MAX_TRACK_NAME = 128
MAX_ROOM_DURATION = 24 * 3600  # seconds: Twilio ends every room after 24 hours


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
    ``track_removed``, ``track_enabled``, ``track_disabled`` (p, track),
    ``subscribe_rules_changed`` (p), ``recording_rules_changed`` (rules), ``ended`` (),
    ``dominant_speaker_changed`` (p or None), ``speaking_changed`` (set of participant SIDs),
    ``network_quality_changed`` (p).

    The room is the only writer of its state and its participants' (their status included);
    records, signaling and metrics follow it through these events."""

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
        self._reconnect_timers: dict[str, asyncio.TimerHandle] = {}
        self._lifetime_timer = registry.call_later(MAX_ROOM_DURATION, lambda: asyncio.ensure_future(self.end()))
        self.recording_rules: list[dict[str, Any]] | None = None
        self.speakers = SpeakerDetector()
        self._speaker_timer: asyncio.TimerHandle | None = None

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

    async def join(self, identity: str, rules: list[dict[str, Any]] | None = None, offers_first: bool = False) -> Participant:
        """Add a participant; an existing one with the same identity is disconnected (53205).

        ``rules`` (already validated) replace the default subscribe-to-all rules.
        ``offers_first``: its client makes the first offer (the official twilio-video SDK);
        the transport holds the SFU's offers until that one is applied."""
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
            participant = Participant(sids.new_sid(sids.PARTICIPANT), identity, self, self.registry.plane, now, offers_first)
            if rules is not None:
                participant.rules = rules
            self.participants[participant.sid] = participant
            self._session_timers[participant.sid] = self.registry.call_later(
                self.settings.max_participant_duration,
                lambda: asyncio.ensure_future(
                    self.remove(participant, SESSION_LENGTH_EXCEEDED, "Participant session length exceeded")
                ),
            )
            self.emit("participant_connected", participant)
            self._reconcile(participant)
            if self.speakers.dominant is not None:
                participant.transport.set_dominant_speaker(self._speaker_tracks())
            participant.transport.request_negotiation()  # the first offer always opens the data channel transport
            return participant

    async def remove(self, participant: Participant, code: int | None = None, message: str | None = None) -> None:
        async with self._membership:
            await self._remove(participant, code, message)

    async def _remove(self, participant: Participant, code: int | None, message: str | None) -> None:
        if self.participants.get(participant.sid) is not participant:
            return
        del self.participants[participant.sid]
        for timers in (self._session_timers, self._reconnect_timers):
            timer = timers.pop(participant.sid, None)
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
        participant.emit("removed", code, message)
        await participant.transport.close()  # (and the data channels it held for tracks not published)
        self.emit("participant_disconnected", participant)
        self._speakers_changed(participant.sid, None)
        if not self.participants and self.in_progress:
            self._on_empty()

    def transport_failed(self, participant: Participant, code: int, reason: str) -> None:
        """The participant's transport is gone (its connection failed, or its media process)."""
        logger.info("removing %s from %s: %d %s", participant.identity, self.unique_name, code, reason)
        asyncio.ensure_future(self.remove(participant, code, reason))

    def set_reconnecting(self, participant: Participant, grace: float | None = None) -> None:
        """The participant's signaling connection dropped; its media goes on meanwhile. With
        ``grace``: it is removed (53001) unless ``set_connected`` comes within that many seconds."""
        self._set_status(participant, "reconnecting")
        if grace is not None and participant.status == "reconnecting" and participant.sid not in self._reconnect_timers:
            self._reconnect_timers[participant.sid] = self.registry.call_later(
                grace, lambda: asyncio.ensure_future(self._reconnect_expired(participant))
            )

    def set_connected(self, participant: Participant) -> None:
        """The participant resumed its session after ``set_reconnecting``."""
        timer = self._reconnect_timers.pop(participant.sid, None)
        if timer is not None:
            timer.cancel()
        self._set_status(participant, "connected")

    async def _reconnect_expired(self, participant: Participant) -> None:
        self._reconnect_timers.pop(participant.sid, None)
        if participant.status == "reconnecting" and self.participants.get(participant.sid) is participant:
            logger.info("%s did not reconnect to %s", participant.identity, self.unique_name)
            await self.remove(participant, SIGNALING_CONNECTION_LOST, "Signaling connection lost")

    def _set_status(self, participant: Participant, status: str) -> None:
        if participant.status == status or participant.status == "disconnected":
            return
        if self.participants.get(participant.sid) is not participant:
            return
        participant.status = status
        participant.revision += 1
        self.emit("participant_updated", participant)

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
            if self._speaker_timer is not None:
                self._speaker_timer.cancel()
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
        offered: bool = False,
        priority: Priority = "standard",
    ) -> PublishedTrack:
        """Publish a track for the participant. ``offered``: its media comes on the m-section
        the participant's own offer sends with msid track id ``client_id`` (the official
        twilio-video SDK offers its tracks itself); otherwise the SFU offers a section for it."""
        if participant.status != "connected":
            raise ParticipantError(PARTICIPANT_NOT_FOUND, "Participant is not connected")
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
            raise ParticipantError(TRACK_NAME_DUPLICATED, f"Track name '{name}' is duplicated")
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
            priority=priority,
        )
        if kind != "data":
            codecs = self.settings.video_codecs if kind == "video" else None
            try:
                track.source = participant.transport.publish(
                    track.sid, cast(Kind, kind), codecs, client_track_id=client_id if offered else None
                )
            except NegotiationError as exc:  # (the transport cannot take this track: nothing changed)
                raise ParticipantError(exc.code, exc.message) from None
        participant.published[track.sid] = track
        participant.published_revision += 1
        if kind == "data":
            self.attach_data(participant, track)  # if its channel is open already
        participant.emit("published_changed")
        return track

    def apply_tracks(
        self, participant: Participant, tracks: list[dict[str, Any]], offered: bool = False, skip: Collection[str] = ()
    ) -> dict[str, ParticipantError]:
        """Make the participant's published tracks match its client's whole list (entries
        ``{id, kind, name, enabled, priority?}``, as ``signaling.protocol.tracks`` checks them): unpublish
        what is gone, publish what is new (``offered``: see ``publish``), enable or disable the
        rest. Returns the tracks refused, by client id; ids in ``skip`` are not tried again."""
        wanted = {t["id"] for t in tracks}
        for track in list(participant.published.values()):
            if track.client_id not in wanted:
                self.unpublish(participant, track)
        refused: dict[str, ParticipantError] = {}
        for entry in tracks:
            existing = participant.track_by_client_id(entry["id"])
            priority: Priority = entry.get("priority", "standard")
            if priority not in PRIORITIES:
                priority = "standard"
            if existing is not None:
                self.set_track_enabled(participant, existing, entry["enabled"])
                self.set_track_priority(participant, existing, priority)
            elif entry["id"] not in skip:
                try:
                    self.publish(
                        participant, entry["id"], entry["kind"], entry["name"], entry["enabled"], offered=offered, priority=priority
                    )
                except ParticipantError as exc:
                    refused[entry["id"]] = exc
        return refused

    def attach_data(self, participant: Participant, track: PublishedTrack) -> None:
        """Bind a data track to the channel its client opened with the track's id as label,
        if the transport holds one: the track is ready at once (the channel is open)."""
        source = participant.transport.publish_data(track.sid, track.client_id)
        if source is None:
            return
        track.source = source
        track.data_options = source.data_options
        self.track_ready(participant, track)

    def track_ready(self, participant: Participant, track: PublishedTrack) -> None:
        """The track's media started. A reconnecting publisher's media goes on without its
        websocket, so its tracks become ready too (``synced`` tells it on resume)."""
        if track.ready or track.unpublished or participant.status == "disconnected":
            return
        track.ready = True
        participant.revision += 1
        participant.published_revision += 1
        participant.emit("published_changed")
        self.emit("participant_updated", participant)
        self.emit("track_added", participant, track)
        for other in list(self.participants.values()):
            if other is not participant:
                self._reconcile(other)
        if participant is self.dominant_speaker:
            tracks = self._speaker_tracks()
            for other in self.participants.values():
                other.transport.set_dominant_speaker(tracks)

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
        if participant.audio_levels.pop(track.sid, None) is not None and participant.status != "disconnected":
            self._speakers_changed(participant.sid, max(participant.audio_levels.values(), default=0.0))
        for other in list(self.participants.values()):
            self._unsubscribe(other, track.sid)
        if track.source is not None:
            participant.transport.unpublish(track.source)
        participant.published.pop(track.sid, None)
        participant.published_revision += 1
        if was_ready:
            participant.revision += 1
            self.emit("track_removed", participant, track)
        if notify:
            participant.emit("published_changed")
            if was_ready:
                self.emit("participant_updated", participant)

    def publication_failed(self, participant: Participant, source: TrackSource, reason: str) -> None:
        """The publisher's answer rejected the track's m-section (say, the room's only video
        codec is one its browser lacks). The track is unpublished from the room but stays in
        the publisher's list as ``failed``, so the client's track list does not publish it
        again; it leaves when the client drops it."""
        track = participant.track_by_source(source)
        if track is None or track.unpublished:
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

    def subscription_failed(self, subscriber: Participant, sink: TrackSink, reason: str) -> None:
        """The subscriber's answer rejected the track's m-section: the track counts as not
        subscribed for it, and is not offered again while it stays wanted."""
        sid = sink.track_sid
        sub = subscriber.subscriptions.get(sid)
        if sub is None or sub.sink is not sink:
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
            self.emit("participant_updated", participant)
            self.emit("track_enabled" if enabled else "track_disabled", participant, track)

    # --- subscribing --------------------------------------------------------------------

    def set_subscribe_rules(self, participant: Participant, rules: object) -> list[dict[str, Any]]:
        """Replace the participant's rules (raises rules.InvalidRules) and apply them now."""
        normalised = subscribe_rules.validate(rules)
        participant.rules = normalised
        participant.rules_updated_at = self.registry.now()
        self.emit("subscribe_rules_changed", participant)
        self._reconcile(participant)
        return normalised

    def set_recording_rules(self, rules: list[dict[str, Any]]) -> None:
        """Replace the room's (already validated) recording rules."""
        self.recording_rules = rules
        self.emit("recording_rules_changed", rules)

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
            kept.sink.set_priority(self.priority_for(subscriber, kept.track))
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
        if track.source is None:
            return None
        priority = self.priority_for(subscriber, track)  # (what overload sheds first, and the allocator)
        sink = subscriber.transport.subscribe(track.source, stream_id=track.publisher.sid, priority=priority)
        label = track.sid if track.kind == "data" else None  # (a data sink's channel is labelled with the track SID)
        return Subscription(track, sink, label=label, created_at=self.registry.now())

    def _drop_subscription(self, subscriber: Participant, sub: Subscription) -> None:
        if subscriber.status != "disconnected":  # (a reconnecting one keeps its peer connection)
            subscriber.transport.unsubscribe(sub.sink)
        else:
            subscriber.transport.release(sub.sink)

    def _unsubscribe(self, subscriber: Participant, track_sid: str) -> None:
        """Drop one subscription (or failed subscription) and tell the subscriber."""
        sub = subscriber.subscriptions.pop(track_sid, None)
        failed = subscriber.failed_subscriptions.pop(track_sid, None)
        if sub is not None:
            self._drop_subscription(subscriber, sub)
        if sub is not None or failed is not None:
            subscriber.subscribed_revision += 1
            subscriber.emit("subscriptions_changed")

    def subscription_lost(self, subscriber: Participant, sink: TrackSink) -> None:
        """A data sink's channel overflowed or was closed by the subscriber."""
        sub = subscriber.subscriptions.get(sink.track_sid)
        if sub is not None and sub.sink is sink:  # not a later subscription to the same track
            self._unsubscribe(subscriber, sink.track_sid)

    # --- bandwidth profiles, priorities and switch-off (issue 12) --------------------------
    # The media plane decides layers and switch-off per subscriber (sfu.media.allocator);
    # the room passes down what the participants say and relays what the plane did.

    def priority_for(self, subscriber: Participant, track: PublishedTrack) -> Priority:
        """The priority ``subscriber`` receives ``track`` with: its own (RemoteVideoTrack.
        setPriority), else its subscribe rules', else the publisher's. (The media plane
        raises the dominant speaker's to the subscriber's ``dominant_speaker_priority``.)"""
        sub = subscriber.subscriptions.get(track.sid)
        if sub is not None and sub.priority is not None:
            return sub.priority
        return cast(Priority, subscribe_rules.priority(subscriber.rules, track.ref(), default=track.priority))

    def set_bandwidth_profile(self, participant: Participant, profile: BandwidthProfile) -> None:
        participant.bandwidth_profile = profile
        participant.transport.set_bandwidth_profile(profile)
        for sub in participant.subscriptions.values():
            sub.sink.set_priority(self.priority_for(participant, sub.track))
            if sub.track.kind == "video":
                self._pass_hints(participant, sub)

    def set_track_priority(self, participant: Participant, track: PublishedTrack, priority: Priority) -> None:
        """The publisher's priority for its track (LocalTrackPublication.setPriority)."""
        if track.priority == priority:
            return
        track.priority = priority
        for other in self.participants.values():
            sub = other.subscriptions.get(track.sid)
            if sub is not None:
                sub.sink.set_priority(self.priority_for(other, track))
        if track.ready and not track.unpublished:
            participant.revision += 1
            self.emit("participant_updated", participant)

    def set_subscription_hints(
        self,
        subscriber: Participant,
        track_sid: str,
        render_dimensions: tuple[int, int] | None = None,
        switched_off: bool | None = None,
        priority: Priority | None | Literal["keep"] = "keep",
    ) -> bool:
        """What the subscriber says of one of its video subscriptions: the size it renders
        it at, whether it switched it off, its own priority (None: the publisher's). False
        when it has no such video subscription (the hint is dropped)."""
        sub = subscriber.subscriptions.get(track_sid)
        if sub is None or sub.track.kind != "video":
            return False
        if render_dimensions is not None:
            sub.render_dimensions = render_dimensions
        if switched_off is not None:
            sub.switched_off_by_client = switched_off
        if priority != "keep":
            sub.priority = cast("Priority | None", priority)
            sub.sink.set_priority(self.priority_for(subscriber, sub.track))
        self._pass_hints(subscriber, sub)
        return True

    def sink_switched(self, subscriber: Participant, sink: TrackSink, switched_off: bool, reason: str | None) -> None:
        """The media plane switched one of the subscriber's video sinks off or on."""
        sub = subscriber.subscriptions.get(sink.track_sid)
        if sub is not None and sub.sink is sink:  # not a later subscription to the same track
            sub.switched_off, sub.switch_off_reason = switched_off, reason if switched_off else None
            subscriber.emit("track_switched", sub)

    def _pass_hints(self, subscriber: Participant, sub: Subscription) -> None:
        # "disabled": the subscriber's side switches nothing off (Twilio's clientTrackSwitchOffControl).
        off = sub.switched_off_by_client and subscriber.bandwidth_profile.client_track_switch_off_control != "disabled"
        subscriber.transport.set_sink_hints(sub.sink, sub.render_dimensions, off)
    # --- who speaks, and how good each participant's network is --------------------------

    @property
    def dominant_speaker(self) -> Participant | None:
        sid = self.speakers.dominant
        return self.participants.get(sid) if sid is not None else None

    def audio_activity(self, participant: Participant, track: PublishedTrack, level: float) -> None:
        """An audio track's smoothed level changed (the media plane's report): the
        participant's level is its loudest track's."""
        if self.participants.get(participant.sid) is not participant or track.unpublished:
            return
        participant.audio_levels[track.sid] = level
        self._speakers_changed(participant.sid, max(participant.audio_levels.values()))

    def _speakers_changed(self, sid: str, level: float | None) -> None:
        """Fold in one participant's level (None: it left), then decide; and again when a
        challenger's time is up."""
        now = self.registry.now().timestamp()
        speaking = set(self.speakers.speaking)
        if level is None:
            changed = self.speakers.remove(sid, now)
        else:
            changed = self.speakers.set_level(sid, level, now)
        self._after_decision(changed, speaking, now)

    def _decide_speaker(self) -> None:
        self._speaker_timer = None
        if self.in_progress:
            now = self.registry.now().timestamp()
            self._after_decision(self.speakers.decide(now), set(self.speakers.speaking), now)

    def _after_decision(self, changed: bool, speaking_before: set[str], now: float) -> None:
        if self._speaker_timer is not None:
            self._speaker_timer.cancel()
            self._speaker_timer = None
        due = self.speakers.due_at
        if due is not None:
            self._speaker_timer = self.registry.call_later(max(0.0, due - now) + 0.01, self._decide_speaker)
        if self.speakers.speaking != speaking_before:
            self.emit("speaking_changed", set(self.speakers.speaking))
        if changed:
            tracks = self._speaker_tracks()
            for other in self.participants.values():
                other.transport.set_dominant_speaker(tracks)
            self.emit("dominant_speaker_changed", self.dominant_speaker)

    def _speaker_tracks(self) -> frozenset[str]:
        """The dominant speaker's published tracks (what subscribers' allocators favour)."""
        speaker = self.dominant_speaker
        if speaker is None:
            return frozenset()
        return frozenset(t.sid for t in speaker.published.values() if not t.unpublished)

    def network_quality(self, participant: Participant, level: int, stats: dict[str, Any]) -> None:
        """The participant's network quality level changed (the media plane's report)."""
        if self.participants.get(participant.sid) is not participant:
            return
        participant.network_quality_level = level
        participant.network_quality_stats = stats
        self.emit("network_quality_changed", participant)
