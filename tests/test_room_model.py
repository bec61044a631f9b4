"""The room model's rules, with a fake media plane: no aiortc, no sockets, no wall clock.

The room, its participants and the registry depend only on sfu.contracts, so these tests
hand them a FakePlane whose transports record what the room asked of them, and play the
media plane's part by calling the participant's TransportListener methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sfu import errors
from sfu.contracts import BandwidthProfile, DataTrackOptions, Kind, MediaCounters, NegotiationError, PlaneFigures, Priority, TrackSink, TrackSource, TransportListener
from sfu.participant import Participant, ParticipantError, PublishedTrack
from sfu.registry import RoomRegistry
from sfu.room import Room, RoomSettings

from .conftest import wait_for
from .rest_support import ManualClock

ACCOUNT = "AC" + "0" * 32


# --- the fake media plane ----------------------------------------------------------------


@dataclass(eq=False)
class FakeSource:
    track_sid: str
    kind: Kind
    data_options: DataTrackOptions | None = None
    counters: MediaCounters = field(default_factory=MediaCounters)


@dataclass(eq=False)
class FakeSink:
    track_sid: str
    kind: Kind
    priority: Priority
    counters: MediaCounters = field(default_factory=MediaCounters)

    def set_priority(self, priority: Priority) -> None:
        self.priority = priority


class FakeTransport:
    """Records the room's calls; ``open_channel`` plays a data channel the client opened."""

    def __init__(self, room_sid: str, name: str, listener: TransportListener) -> None:
        self.room_sid = room_sid
        self.name = name
        self.listener = listener
        self.sources: dict[str, FakeSource] = {}
        self.offered: dict[str, str] = {}  # track SID -> the msid track id of the participant's offer
        self.refuse_offered = False
        self.sinks: dict[str, FakeSink] = {}  # by track SID, the live ones
        self.unpublished: list[TrackSource] = []
        self.unsubscribed: list[TrackSink] = []
        self.released: list[TrackSink] = []
        self.channels: set[str] = set()  # labels of data channels held for tracks not published
        self.negotiations = 0
        self.profile: BandwidthProfile | None = None
        self.hints: dict[str, tuple[tuple[int, int] | None, bool]] = {}  # track SID -> the last set_sink_hints
        self.negotiating = False
        self.offers_first = False
        self.closed = False
        self.dominant_speaker_tracks: frozenset[str] = frozenset()

    def publish(self, track_sid: str, kind: Kind, codecs: list[str] | None = None, client_track_id: str | None = None) -> TrackSource:
        if client_track_id is not None:
            if self.refuse_offered:
                raise NegotiationError(errors.SIGNALING_ERROR, "publishing a track the participant offers is not supported")
            self.offered[track_sid] = client_track_id
        source = self.sources[track_sid] = FakeSource(track_sid, kind)
        return source

    def publish_data(self, track_sid: str, label: str) -> TrackSource | None:
        if label not in self.channels:
            return None
        self.channels.remove(label)
        source = self.sources[track_sid] = FakeSource(track_sid, "data", DataTrackOptions(ordered=False, max_retransmits=0))
        return source

    def unpublish(self, source: TrackSource) -> None:
        self.unpublished.append(source)

    def subscribe(self, source: TrackSource, stream_id: str, priority: Priority = "standard") -> TrackSink:
        sink = self.sinks[source.track_sid] = FakeSink(source.track_sid, source.kind, priority)
        return sink

    def _drop(self, sink: TrackSink) -> None:
        if self.sinks.get(sink.track_sid) is sink:
            del self.sinks[sink.track_sid]

    def unsubscribe(self, sink: TrackSink) -> None:
        self._drop(sink)
        self.unsubscribed.append(sink)

    def release(self, sink: TrackSink) -> None:
        self._drop(sink)
        self.released.append(sink)

    def set_bandwidth_profile(self, profile: BandwidthProfile) -> None:
        self.profile = profile

    def set_sink_hints(self, sink: TrackSink, render_dimensions: tuple[int, int] | None, switched_off_by_client: bool) -> None:
        self.hints[sink.track_sid] = (render_dimensions, switched_off_by_client)

    def request_negotiation(self) -> None:
        self.negotiations += 1

    async def apply_answer(self, sdp: str, revision: int) -> None:
        pass

    async def apply_offer(self, sdp: str, revision: int) -> str:
        return ""

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None) -> None:
        pass

    def set_dominant_speaker(self, track_sids: frozenset[str]) -> None:
        self.dominant_speaker_tracks = track_sids

    async def close(self) -> None:
        self.closed = True

    # --- playing the media plane's part ---

    def open_channel(self, label: str) -> None:
        self.channels.add(label)
        self.listener.on_data_channel(label)


class FakePlane:
    def __init__(self) -> None:
        self.transports: list[FakeTransport] = []
        self.closed_rooms: list[str] = []

    async def start(self) -> None:
        pass

    def create_transport(self, room_sid: str, name: str, listener: TransportListener, offers_first: bool = False) -> FakeTransport:
        transport = FakeTransport(room_sid, name, listener)
        transport.offers_first = offers_first
        self.transports.append(transport)
        return transport

    def room_closed(self, room_sid: str) -> None:
        self.closed_rooms.append(room_sid)

    def figures(self) -> list[PlaneFigures]:
        return [PlaneFigures(worker=None, pid=0, transports=len(self.transports))]

    async def close(self) -> None:
        pass


def transport(p: Participant) -> FakeTransport:
    assert isinstance(p.transport, FakeTransport)
    return p.transport


@dataclass
class Model:
    registry: RoomRegistry
    plane: FakePlane
    clock: ManualClock

    def room(self, name: str = "room", **settings: Any) -> Room:
        return self.registry.create_room(name, RoomSettings(**settings))

    def ready(self, p: Participant, client_id: str, kind: Kind, name: str | None = None) -> PublishedTrack:
        """Publish a track and play its media starting."""
        track = p.room.publish(p, client_id, kind, name)
        assert track.source is not None
        p.on_publication_ready(track.source)
        assert track.ready
        return track


@pytest.fixture
async def model() -> AsyncIterator[Model]:
    clock = ManualClock()
    plane = FakePlane()
    registry = RoomRegistry(plane, ACCOUNT, clock=clock.now, call_later=clock.call_later)  # type: ignore[arg-type]
    await registry.start()
    yield Model(registry, plane, clock)
    await registry.close()


def removed_with(p: Participant) -> list[tuple[int | None, str | None]]:
    seen: list[tuple[int | None, str | None]] = []
    p.on("removed", lambda code, message: seen.append((code, message)))
    return seen


# --- joining ------------------------------------------------------------------------------


async def test_a_full_room_refuses_the_next_participant_with_53105_and_builds_no_transport_for_it(model: Model) -> None:
    room = model.room(max_participants=2)
    await room.join("alice")
    await room.join("bob")

    with pytest.raises(ParticipantError) as refused:
        await room.join("carol")

    assert refused.value.code == errors.ROOM_FULL
    assert [t.name for t in model.plane.transports] == ["room/alice", "room/bob"]
    assert {p.identity for p in room.participants.values()} == {"alice", "bob"}


async def test_a_second_join_with_the_same_identity_replaces_the_first_with_53205(model: Model) -> None:
    room = model.room()
    first = await room.join("alice")
    seen = removed_with(first)

    second = await room.join("alice")

    assert seen == [(errors.DUPLICATE_IDENTITY, "Participant disconnected because of duplicate identity")]
    assert first.status == "disconnected" and transport(first).closed
    assert list(room.participants.values()) == [second] and second.sid != first.sid
    assert transport(second).room_sid == room.sid and transport(second).negotiations == 1  # the first offer


async def test_a_completed_room_refuses_joins_with_53118_and_frees_its_name_and_its_media(model: Model) -> None:
    room = model.room("standup")
    alice = await room.join("alice")
    seen = removed_with(alice)

    await room.end()

    assert seen == [(errors.ROOM_COMPLETED, "Room completed")] and transport(alice).closed
    assert room.status == "completed" and model.plane.closed_rooms == [room.sid]
    with pytest.raises(ParticipantError) as refused:
        await room.join("bob")
    assert refused.value.code == errors.ROOM_COMPLETED
    assert model.registry.find_in_progress("standup") is None
    assert model.registry.room_for_connect("standup") is not room


async def test_a_failed_transport_removes_its_participant_with_the_code_it_reports(model: Model) -> None:
    room = model.room()
    alice = await room.join("alice")
    seen = removed_with(alice)

    alice.on_failed(errors.MEDIA_CONNECTION_FAILED, "Media connection failed: peer connection failed")

    await wait_for(lambda: seen, message="alice removed")
    assert seen == [(errors.MEDIA_CONNECTION_FAILED, "Media connection failed: peer connection failed")]
    assert alice.sid not in room.participants


# --- publishing and subscribing -------------------------------------------------------------


async def test_a_ready_track_is_subscribed_by_the_others_and_unpublishing_releases_it(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    cam = room.publish(alice, "cam-1", "video", "cam")
    assert cam.source is not None and not cam.ready
    assert transport(bob).sinks == {}  # nothing before its media starts

    alice.on_publication_ready(cam.source)

    sink = transport(bob).sinks[cam.sid]
    assert sink.kind == "video" and bob.subscriptions[cam.sid].sink is sink
    assert transport(alice).sinks == {}  # never its own track
    room.unpublish(alice, cam)
    assert transport(alice).unpublished == [cam.source]
    assert transport(bob).unsubscribed == [sink] and cam.sid not in bob.subscriptions


async def test_subscribe_rules_add_and_remove_subscriptions_and_set_their_priority(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    cam, mic = model.ready(alice, "cam-1", "video", "cam"), model.ready(alice, "mic-1", "audio", "mic")
    cam_sink = transport(bob).sinks[cam.sid]
    revision = bob.subscribed_revision

    room.set_subscribe_rules(bob, [{"type": "include", "kind": "audio"}])

    assert set(bob.subscriptions) == {mic.sid} and transport(bob).unsubscribed == [cam_sink]
    assert bob.subscribed_revision == revision + 1

    room.set_subscribe_rules(bob, [{"type": "include", "all": True}, {"type": "include", "kind": "video", "priority": "high"}])

    assert set(bob.subscriptions) == {mic.sid, cam.sid}
    assert transport(bob).sinks[cam.sid].priority == "high" and transport(bob).sinks[mic.sid].priority == "standard"

    room.set_subscribe_rules(bob, [{"type": "include", "all": True}, {"type": "include", "publisher": "alice", "priority": "low"}])

    assert transport(bob).sinks[cam.sid].priority == "low" and transport(bob).sinks[mic.sid].priority == "low"
    assert len(transport(bob).unsubscribed) == 1  # kept: only their priority changed


async def test_a_failed_publication_is_listed_as_failed_and_never_offered_to_others(model: Model) -> None:
    room = model.room(video_codecs=["H264"])
    alice, bob = await room.join("alice"), await room.join("bob")
    cam = room.publish(alice, "cam-1", "video", "cam")
    assert cam.source is not None

    alice.on_publication_failed(cam.source, "the answer rejected the video m-section 1")

    entry = alice.published_state()["tracks"][0]
    assert entry["state"] == "failed" and entry["error"]["code"] == errors.NO_SUPPORTED_CODEC
    assert transport(alice).unpublished == [cam.source] and transport(bob).sinks == {}
    alice.on_publication_ready(cam.source)  # too late: it stays failed
    assert not cam.ready and transport(bob).sinks == {}


async def test_a_failed_subscription_is_reported_and_not_retried_while_wanted(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    cam = model.ready(alice, "cam-1", "video", "cam")
    sink = transport(bob).sinks[cam.sid]

    bob.on_subscription_failed(sink, "no codec")
    model.ready(alice, "mic-1", "audio", "mic")  # (reconciles bob again)

    assert bob.failed_subscriptions[cam.sid][0] == errors.NO_SUPPORTED_CODEC and cam.sid not in bob.subscriptions
    assert cam.sid not in transport(bob).sinks
    assert {"sid": cam.sid, "error": {"code": errors.NO_SUPPORTED_CODEC, "message": "No supported codec: no codec"}} in (
        bob.subscribed_state()["tracks"]
    )


async def test_the_room_refuses_bad_publications_with_their_codes(model: Model) -> None:
    room = model.room(audio_only=True, max_concurrent_published_tracks=1)
    alice = await room.join("alice")
    refusals = [
        (lambda: room.publish(alice, "cam-1", "video", "cam"), errors.TRACK_KIND_NOT_SUPPORTED),
        (lambda: room.publish(alice, "x", "screen"), errors.TRACK_KIND_NOT_SUPPORTED),
        (lambda: room.publish(alice, "", "audio"), errors.TRACK_INVALID),
        (lambda: room.publish(alice, "mic-1", "audio", "m" * 129), errors.TRACK_INVALID),
    ]
    for publish, code in refusals:
        with pytest.raises(ParticipantError) as refused:
            publish()
        assert refused.value.code == code
    room.publish(alice, "mic-1", "audio", "mic")
    with pytest.raises(ParticipantError) as refused:
        room.publish(alice, "mic-2", "audio", "mic2")
    assert refused.value.code == errors.MAX_TRACKS_EXCEEDED


async def test_a_track_the_participant_offers_is_bound_to_its_msid_and_a_refusal_changes_nothing(model: Model) -> None:
    room = model.room()
    alice = await room.join("alice")

    cam = room.publish(alice, "a1b2-msid", "video", "cam", offered=True)

    assert transport(alice).offered == {cam.sid: "a1b2-msid"}
    transport(alice).refuse_offered = True
    revision = alice.published_revision
    with pytest.raises(ParticipantError) as refused:
        room.publish(alice, "c3d4-msid", "audio", "mic", offered=True)
    assert refused.value.code == errors.SIGNALING_ERROR
    assert [t.client_id for t in alice.published.values()] == ["a1b2-msid"] and alice.published_revision == revision


# --- data tracks: bound to their channel by label -------------------------------------------


async def test_a_data_track_binds_to_the_channel_its_client_opened_before_or_after_publishing(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")

    transport(alice).open_channel("chat-1")  # the channel first
    chat = room.publish(alice, "chat-1", "data", "chat")
    assert chat.ready and chat.data_options == DataTrackOptions(ordered=False, max_retransmits=0)

    late = room.publish(alice, "late-1", "data", "late")  # the track first
    assert not late.ready and late.source is None
    transport(alice).open_channel("unrelated")
    assert not late.ready and "unrelated" in transport(alice).channels  # held by the media plane
    transport(alice).open_channel("late-1")
    assert late.ready

    assert set(transport(bob).sinks) == {chat.sid, late.sid}
    assert bob.subscribed_state()["tracks"][0]["label"] == chat.sid


async def test_a_data_track_whose_publisher_closes_its_channel_is_unpublished(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    transport(alice).open_channel("chat-1")
    chat = room.publish(alice, "chat-1", "data", "chat")
    assert chat.source is not None and chat.sid in bob.subscriptions

    alice.on_publication_closed(chat.source)

    assert chat.unpublished and chat.sid not in bob.subscriptions and transport(alice).unpublished == [chat.source]


async def test_a_lost_data_subscription_is_dropped_only_if_it_is_the_current_one(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    transport(alice).open_channel("chat-1")
    chat = room.publish(alice, "chat-1", "data", "chat")
    stale = FakeSink(chat.sid, "data", "standard")

    bob.on_subscription_lost(stale)
    assert chat.sid in bob.subscriptions

    bob.on_subscription_lost(bob.subscriptions[chat.sid].sink)
    assert chat.sid not in bob.subscriptions


# --- timers ---------------------------------------------------------------------------------


async def test_a_participant_is_removed_after_max_participant_duration_with_53216(model: Model) -> None:
    room = model.room(max_participant_duration=600)
    alice = await room.join("alice")
    seen = removed_with(alice)

    model.clock.advance(599)
    assert alice.status == "connected"
    model.clock.advance(1)

    await wait_for(lambda: seen, message="alice removed")
    assert seen == [(errors.SESSION_LENGTH_EXCEEDED, "Participant session length exceeded")]


async def test_an_ad_hoc_room_ends_when_its_last_participant_leaves(model: Model) -> None:
    room = model.registry.room_for_connect("adhoc")
    alice = await room.join("alice")

    await room.remove(alice)

    await wait_for(lambda: room.status == "completed", message="the room ended")
    assert model.registry.find_in_progress("adhoc") is None


async def test_a_rest_room_ends_after_its_empty_room_timeout_unless_someone_joins(model: Model) -> None:
    room = model.room(created_via_rest=True, empty_room_timeout=2, unused_room_timeout=10)
    alice = await room.join("alice")
    await room.remove(alice)
    model.clock.advance(119)
    bob = await room.join("bob")  # cancels the empty-room timer
    model.clock.advance(3600)
    assert room.in_progress
    await room.remove(bob)
    model.clock.advance(120)

    await wait_for(lambda: room.status == "completed", message="the room ended")
    assert room.ended_at == model.clock.now()


async def test_an_unused_rest_room_ends_after_its_unused_room_timeout(model: Model) -> None:
    room = model.room(created_via_rest=True, unused_room_timeout=3)
    model.clock.advance(179)
    assert room.in_progress

    model.clock.advance(1)

    await wait_for(lambda: room.status == "completed", message="the room ended")


# --- reconnecting: written by the room only -------------------------------------------------


async def test_reconnecting_and_connected_are_room_state_changes_seen_by_the_others(model: Model) -> None:
    room = model.room()
    alice = await room.join("alice")
    updates: list[tuple[str, int]] = []
    room.on("participant_updated", lambda p: updates.append((p.status, p.revision)))
    revision = alice.revision

    room.set_reconnecting(alice)
    room.set_reconnecting(alice)  # (no change: no event)
    room.set_connected(alice)

    assert updates == [("reconnecting", revision + 1), ("connected", revision + 2)]
    await room.remove(alice)
    room.set_connected(alice)
    assert alice.status == "disconnected" and len(updates) == 2


async def test_a_reconnecting_participant_keeps_its_media_and_is_still_reconciled(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    room.set_reconnecting(bob)

    cam = model.ready(alice, "cam-1", "video", "cam")

    assert cam.sid in transport(bob).sinks and not transport(bob).closed
    await room.remove(bob)
    assert transport(bob).released and transport(bob).closed  # not renegotiated on its way out


# --- the registry ---------------------------------------------------------------------------


async def test_the_registry_keeps_in_progress_room_names_unique_and_refuses_bad_ones(model: Model) -> None:
    room = model.room("daily")
    with pytest.raises(ParticipantError) as exists:
        model.room("daily")
    assert exists.value.code == errors.ROOM_EXISTS

    for name, code in (("", errors.ROOM_NAME_INVALID), ("x" * 129, errors.ROOM_NAME_TOO_LONG), ("a\nb", errors.ROOM_NAME_BAD_CHARACTERS)):
        with pytest.raises(ParticipantError) as refused:
            model.registry.create_room(name, RoomSettings())
        assert refused.value.code == code, name

    await room.end()
    again = model.room("daily")
    assert model.registry.find_in_progress("daily") is again and model.registry.get(room.sid) is None


async def test_a_draining_registry_refuses_new_rooms_with_53006_but_keeps_the_others(model: Model) -> None:
    room = model.room("kept")
    model.registry.draining = True

    with pytest.raises(ParticipantError) as busy:
        model.registry.room_for_connect("new")

    assert busy.value.code == errors.SERVER_BUSY
    assert model.registry.room_for_connect("kept") is room


# --- records: one listener on the model -----------------------------------------------------


class ListStore:
    """The Store calls the RecordKeeper makes, in order (duck-typed: only the writes)."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("put_"):
            raise AttributeError(name)

        async def put(record: Any) -> None:
            self.puts.append((name[4:], record))

        return put


async def test_records_follow_the_model_through_its_one_listener() -> None:
    clock = ManualClock()
    store = ListStore()
    registry = RoomRegistry(FakePlane(), ACCOUNT, store=store, clock=clock.now, call_later=clock.call_later)  # type: ignore[arg-type]
    registry.records.start()

    async def stored(change: Any) -> list[tuple[str, Any]]:
        """What the store got for one change of the model (each change flushed on its own)."""
        before = len(store.puts)
        if asyncio.iscoroutine(change):
            await change
        await registry.records.flush()
        return [(kind, getattr(record, "status", getattr(record, "rules", None))) for kind, record in store.puts[before:]]

    room = registry.create_room("recorded", RoomSettings())
    assert await stored(None) == [("room", "in-progress")]
    joined: list[Participant] = []

    async def join() -> None:
        joined.append(await room.join("alice"))

    assert await stored(join()) == [("participant", "connected"), ("subscribe_rules", [{"type": "include", "all": True}])]
    alice = joined[0]
    cam = room.publish(alice, "cam-1", "video", "cam")
    assert cam.source is not None
    alice.on_publication_ready(cam.source)
    assert await stored(None) == [("participant", "connected"), ("track", "published")]
    room.set_reconnecting(alice)
    assert await stored(None) == [("participant", "reconnecting")]
    assert await stored(room.end()) == [("track", "unpublished"), ("participant", "disconnected"), ("room", "completed")]
    await registry.records.close()


async def test_a_reconnecting_participant_is_removed_with_53001_after_its_grace_unless_it_resumes(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    room.set_reconnecting(alice, grace=10)
    room.set_reconnecting(bob, grace=10)
    bob_removed = removed_with(bob)
    model.clock.advance(9)
    room.set_connected(alice)

    model.clock.advance(2)

    await wait_for(lambda: bob.status == "disconnected", message="bob removed after its grace")
    assert bob_removed == [(errors.SIGNALING_CONNECTION_LOST, "Signaling connection lost")]
    model.clock.advance(60)
    assert alice.status == "connected" and alice.sid in room.participants


# --- a client's whole track list --------------------------------------------------------------


async def test_apply_tracks_publishes_mutes_and_unpublishes_to_match_the_list_and_reports_refusals(model: Model) -> None:
    room = model.room(max_concurrent_published_tracks=2)
    alice = await room.join("alice", offers_first=True)
    assert transport(alice).offers_first

    refused = room.apply_tracks(
        alice,
        [
            {"id": "mic", "kind": "audio", "name": "mic", "enabled": True},
            {"id": "cam", "kind": "video", "name": "cam", "enabled": True},
            {"id": "screen", "kind": "video", "name": "screen", "enabled": True},
        ],
        offered=True,
    )

    assert list(refused) == ["screen"] and refused["screen"].code == errors.MAX_TRACKS_EXCEEDED
    assert sorted(transport(alice).offered.values()) == ["cam", "mic"]
    again = room.apply_tracks(alice, [{"id": "cam", "kind": "video", "name": "cam", "enabled": False}, {"id": "screen", "kind": "video", "name": "screen", "enabled": True}], skip={"screen"})
    assert again == {}
    assert [(t.client_id, t.enabled) for t in alice.published.values() if not t.unpublished] == [("cam", False)]
