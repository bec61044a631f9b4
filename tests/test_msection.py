"""M-sections are reused (a long call's SDP stays bounded), a reused m-section shows the new
track and nothing of the old one, and an answer that rejects an m-section (port 0, as
Firefox answers a codec it lacks) fails that one track, not the session."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from sfu.media.consumer import Consumer
from sfu.media.peer import sdp_blocks
from sfu.media.producer import Producer
from sfu.participant import Subscription
from sfu.participant import Participant
from signaling.client import LocalAudioTrack, LocalVideoTrack, RemoteMediaTrack, Room, SignalingError

from .conftest import DEADLINE, Server, wait_for
from .helpers.clients import Clients, EventLog, about, local_track, media_tracks, read_audio, remote_track, subscribed_data, subscribed_media
from .media import CounterVideoTrack, ToneAudioTrack, draw_counter, read_counter
from .rest_support import raw


def live(server: Server, identity: str, room: str = "room") -> Participant:
    found = server.registry.find_in_progress(room)
    participant = found.find_participant(identity) if found is not None else None
    assert participant is not None, f"{identity} is not in {room}"
    return participant


def m_lines(sdp: str) -> int:
    return sum(1 for line in sdp.splitlines() if line.startswith("m="))


def media(sub: Subscription) -> Consumer | None:
    """The audio or video consumer of a subscription (None for a data track)."""
    return sub.sink if isinstance(sub.sink, Consumer) else None


def flowing(participant: Participant, publisher: str) -> bool:
    """The participant's consumers of every media track ``publisher`` publishes are attached."""
    subs = [s for s in participant.subscriptions.values() if s.track.publisher.identity == publisher and media(s) is not None]
    return len(subs) >= 2 and all(media(s) is not None and not media(s).paused for s in subs)


def settled(participant: Participant) -> bool:
    """No offer outstanding and nothing left to offer."""
    peer = participant.transport.peer  # type: ignore[attr-defined]
    return not peer.negotiating and not peer._negotiation_needed


# --- reuse -------------------------------------------------------------------------------


async def test_join_leave_cycles_keep_the_staying_sdp_bounded_and_cpu_flat(server: Server, clients: Clients) -> None:
    """100 real aiortc peers join (video + audio) and leave next to one who stays."""
    alice = await clients.join("alice", publish="va", receive="packets")
    me = live(server, "alice")
    cycles, costs = 100, []
    for cycle in range(cycles):
        started = time.process_time()
        bob = await clients.join("bob", publish="va", receive="packets")
        await wait_for(lambda: flowing(me, "bob"), message=f"cycle {cycle}: alice receives bob")
        await bob.disconnect()
        clients.rooms.remove(bob)
        await wait_for(lambda: settled(me) and not me.subscriptions, message=f"cycle {cycle}: bob's sections retired")
        costs.append(time.process_time() - started)
        # Two published, two subscribed, and two retiring at most: never one per cycle.
        assert len(me.transport.peer.pc.getTransceivers()) <= 6, f"cycle {cycle}: {len(me.transport.peer.pc.getTransceivers())} m-sections"
        assert m_lines(alice.pc.remoteDescription.sdp) <= 7  # (+ the SCTP one)
    first, last = sum(costs[:20]), sum(costs[-20:])
    assert last < 3 * first, f"CPU per cycle grows: first 20 cycles {first:.2f} s, last 20 {last:.2f} s"
    # The staying participant is still fully served after all that.
    await clients.join("carol", publish="va")
    await wait_for(lambda: flowing(me, "carol"), message="alice receives carol")
    cam = await subscribed_media(alice, "carol", "cam")
    await wait_for(lambda: cam.packets_received > 10, message="carol's video reaches alice")


async def test_publish_unpublish_cycles_keep_both_sdps_bounded(server: Server, clients: Clients) -> None:
    alice = await clients.join("alice", publish="")
    bob = await clients.join("bob", publish="", receive="packets")
    publisher, subscriber = live(server, "alice"), live(server, "bob")
    retired: list[tuple[Producer, int]] = []
    for cycle in range(25):
        cam = await alice.local_participant.publish_track(LocalVideoTrack(CounterVideoTrack(), f"cam{cycle}"))
        await wait_for(lambda: any(media(s) is not None and media(s).stats.packets > 10 for s in subscriber.subscriptions.values()),
                       message=f"cycle {cycle}: bob receives cam{cycle}")
        # The section (and the publisher's SSRC) carried earlier tracks: none of their
        # producers gets a packet of this one.
        assert all(old.stats.packets == count for old, count in retired), f"cycle {cycle}: an old producer got packets"
        track = publisher.track_by_client_id(cam.id)
        assert track is not None and isinstance(track.source, Producer)
        producer = track.source
        await alice.local_participant.unpublish_track(cam)
        await wait_for(lambda: settled(publisher) and settled(subscriber) and not subscriber.subscriptions and not publisher.published,
                       message=f"cycle {cycle}: cam{cycle} retired")
        retired.append((producer, producer.stats.packets))
        assert len(publisher.transport.peer.pc.getTransceivers()) <= 2 and len(subscriber.transport.peer.pc.getTransceivers()) <= 2, (
            f"cycle {cycle}: {len(publisher.transport.peer.pc.getTransceivers())} / {len(subscriber.transport.peer.pc.getTransceivers())} m-sections"
        )
    assert len(alice.pc.getTransceivers()) <= 2 and len(bob.pc.getTransceivers()) <= 2


class OffsetCounterTrack(CounterVideoTrack):
    """Counter video starting at ``offset``: another publisher's frames, told apart by value."""

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = offset

    async def recv(self) -> VideoFrame:
        frame = await super().recv()
        shown = draw_counter((self.counter - 1 + self.offset) % 4096)
        shown.pts, shown.time_base = frame.pts, frame.time_base
        return shown


async def test_a_reused_m_section_shows_the_new_track_and_nothing_of_the_old(server: Server, clients: Clients) -> None:
    carol = await clients.join("carol", publish="")
    carol_events = EventLog(carol)
    watcher = live(server, "carol")
    alice = await clients.join("alice", tracks=[LocalVideoTrack(CounterVideoTrack(), "cam"), LocalAudioTrack(ToneAudioTrack(), "mic")])
    old = await clients.watch(carol, "alice")
    await old.advance(10)
    old_track = old.track
    assert isinstance(old_track, RemoteMediaTrack)
    old_mid = old_track.transceiver.mid
    assert all(c < 1000 for c in old.counters)
    # The application stops reading alice's video while it still arrives: its last frames
    # stay decoded and unread (what an aiortc receiver reused as-is would show next).
    await old.close()
    consumer = next(media(s) for s in watcher.subscriptions.values() if media(s) is not None and s.track.kind == "video")
    sent = consumer.stats.packets
    await wait_for(lambda: consumer.stats.packets > sent + 30, message="more of alice's video reaches carol")

    await alice.disconnect()
    clients.rooms.remove(alice)
    await carol_events.wait("track_unsubscribed", about("alice", "cam"))
    await wait_for(lambda: settled(watcher) and not watcher.subscriptions, message="alice's sections retired")

    await clients.join("bob", tracks=[LocalVideoTrack(OffsetCounterTrack(3000), "cam"), LocalAudioTrack(ToneAudioTrack(880), "mic")])
    new = await clients.watch(carol, "bob")
    new_track = new.track
    assert new_track.transceiver.mid == old_mid, "bob's video should reuse alice's m-section"
    assert new_track.media is not old_track.media
    counters = await new.advance(30)
    counters = new.counters
    assert all(c >= 3000 for c in counters), f"the reused m-section showed frames of the old track: {counters[:10]}"
    # The old track ended: what it still holds is alice's, then it ends.
    leftovers = []
    with pytest.raises(MediaStreamError):
        while True:
            leftovers.append(read_counter(await asyncio.wait_for(old_track.recv(), DEADLINE)))
    assert all(c < 1000 for c in old.counters + leftovers), leftovers
    # Audio on the reused audio m-section flows too.
    mic = await subscribed_media(carol, "bob", "mic")
    await read_audio(mic, 10)
    assert len(carol.pc.getTransceivers()) == 2


# --- rejected m-sections -----------------------------------------------------------------


def reject_sections(sdp: str, mids: set[str]) -> str:
    """Reject the m-sections ``mids`` as Firefox does for a codec it lacks: port 0, inactive,
    no ICE credentials or candidates, no DTLS attributes, and out of the BUNDLE group."""
    out = []
    session, blocks = sdp_blocks(sdp)
    for block in blocks:
        block_mid = next((line[6:] for line in block if line.startswith("a=mid:")), None)
        if block_mid not in mids:
            out.extend(block)
            continue
        parts = block[0].split()
        parts[1] = "0"
        kept = [" ".join(parts), "c=IN IP4 0.0.0.0", "a=inactive", f"a=mid:{block_mid}"]
        kept += [line for line in block if line.startswith(("a=rtpmap:", "a=fmtp:"))]
        out.extend(kept)
    fixed_session = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            line = " ".join(item for item in line.split() if item not in mids)
        fixed_session.append(line)
    return "\r\n".join(fixed_session + out) + "\r\n"


def rejecting(room: Room, should_reject: Callable[[dict[str, Any]], bool]) -> list[str]:
    """Make ``room``'s answers reject each section ``should_reject`` picks (by the offer's
    section list). Returns the list of mids it rejected."""
    rejected: list[str] = []
    pending: set[str] = set()
    real_answer, real_send = room._answer, room._send

    async def answer(description: dict[str, Any], sections: list[dict[str, Any]]) -> None:
        pending.clear()
        pending.update(s["mid"] for s in sections if should_reject(s))
        await real_answer(description, sections)

    def send(message: dict[str, Any]) -> None:
        answer_description = message.get("peer_connection", {}).get("description")
        if answer_description is not None and answer_description.get("type") == "answer" and pending:
            answer_description["sdp"] = reject_sections(answer_description["sdp"], pending)
            rejected.extend(sorted(pending))
        real_send(message)

    room._answer = answer  # type: ignore[method-assign]
    room._send = send  # type: ignore[method-assign]
    return rejected


async def join_rejecting(server: Server, identity: str, room_name: str, tracks: list[Any], should_reject: Callable[[dict[str, Any]], bool]) -> tuple[Room, list[str]]:
    room = Room(server.url, server.token(identity), [], packets=False)
    mids = rejecting(room, should_reject)
    await room._open(room_name, tracks, None, DEADLINE)
    return room, mids


async def test_a_subscriber_rejecting_its_video_section_keeps_audio_and_data_and_gets_53404(
    server: Server, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sfu.room")
    alice = await clients.join("alice", publish="vad")
    alice_events = EventLog(alice)
    accept_all: list[bool] = []
    bob, rejected = await join_rejecting(
        server, "bob", "room", media_tracks("ad"), lambda s: s["role"] == "subscribe" and s["kind"] == "video" and not accept_all
    )
    clients.rooms.append(bob)
    failures: list[tuple[Any, ...]] = []
    bob.on("track_subscription_failed", lambda *args: failures.append(args))
    cam_sid = local_track(alice, "cam").sid

    await wait_for(lambda: failures, message="bob told his cam subscription failed")
    (error, publication, publisher), = failures
    assert isinstance(error, SignalingError) and error.code == 53404
    assert publication.track_sid == cam_sid and publisher.identity == "alice"
    assert rejected, "the test did not reject anything"
    # Audio and data both ways.
    await read_audio(await subscribed_media(bob, "alice", "mic"), 5)
    await read_audio(await subscribed_media(alice, "bob", "mic"), 5)
    bob_chat, alice_chat = await subscribed_data(bob, "alice"), await subscribed_data(alice, "bob")
    got_bob: list[str] = []
    got_alice: list[str] = []
    bob_chat.on("message", got_bob.append)
    alice_chat.on("message", got_alice.append)
    local_track(alice, "chat").send("to bob")  # type: ignore[attr-defined]
    local_track(bob, "chat").send("to alice")  # type: ignore[attr-defined]
    await wait_for(lambda: got_bob == ["to bob"] and got_alice == ["to alice"], message="data both ways")
    # The room model: not subscribed, not offered again on later negotiations.
    me = live(server, "bob")
    assert cam_sid not in me.subscriptions and cam_sid in me.failed_subscriptions
    # (This client announced the track before the server saw its answer: it then loses it.)
    await wait_for(lambda: remote_track(bob, "alice", "cam") is None, message="bob not subscribed to the cam")
    assert bob.pc.connectionState == "connected"
    room_sid = server.registry.find_in_progress("room").sid  # type: ignore[union-attr]
    status, body = await raw(server.http, server.credentials, "GET", f"/v1/Rooms/{room_sid}/Participants/{me.sid}/SubscribedTracks")
    assert status == 200 and sorted(t["kind"] for t in body["subscribed_tracks"]) == ["audio", "data"]
    status, _ = await raw(server.http, server.credentials, "GET", f"/v1/Rooms/{room_sid}/Participants/{me.sid}/SubscribedTracks/{cam_sid}")
    assert status == 404
    await alice.local_participant.publish_track(LocalAudioTrack(ToneAudioTrack(660), "mic2"))
    await subscribed_media(bob, "alice", "mic2")
    await wait_for(lambda: settled(me), message="bob's negotiation settled")
    assert cam_sid not in me.subscriptions and cam_sid not in {s.track_sid for s in me.transport.peer.sections()}
    assert len(failures) == 1
    assert alice_events.errors() == []
    # One warning names the participant, the code and the reason (no retry loop).
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "failed" in r.getMessage()]
    assert len(warnings) == 1 and "bob" in warnings[0] and "53404" in warnings[0] and cam_sid in warnings[0] and "codec" in warnings[0], warnings
    # The rejected m-section is reused for the next video subscription bob accepts.
    video_mid = rejected[0]
    accept_all.append(True)
    sections_before = len(bob.pc.getTransceivers())
    await clients.join("carol", publish="v")
    reader = await clients.watch(bob, "carol")
    await reader.advance(5)
    assert isinstance(reader.track, RemoteMediaTrack) and reader.track.transceiver.mid == video_mid
    assert len(bob.pc.getTransceivers()) == sections_before


async def test_a_publisher_rejecting_its_video_in_an_h264_room_still_publishes_audio(server: Server, clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sfu.room")
    status, created = await raw(server.http, server.credentials, "POST", "/v1/Rooms", data={"UniqueName": "h264", "VideoCodecs": "H264"})
    assert status == 201, created
    dave = await clients.join("dave", "h264", publish="")
    dave_events = EventLog(dave)
    cam, mic = LocalVideoTrack(CounterVideoTrack(), "cam"), LocalAudioTrack(ToneAudioTrack(), "mic")
    carol, rejected = await join_rejecting(
        server, "carol", "h264", [cam, mic], lambda s: s["role"] == "publish" and s["kind"] == "video"
    )
    clients.rooms.append(carol)
    failed: list[tuple[Any, ...]] = []
    carol.local_participant.on("track_publication_failed", lambda *args: failed.append(args))
    await wait_for(lambda: getattr(cam, "error", None) is not None, message="carol told her cam failed")
    assert cam.error is not None and cam.error.code == 53404
    assert [(error.code, track) for error, track in failed] == [(53404, cam)]
    assert rejected
    # Her audio is published and heard.
    await read_audio(await subscribed_media(dave, "carol", "mic"), 5)
    me = live(server, "carol", "h264")
    track = me.track_by_client_id(cam.id)
    assert track is not None and track.error is not None and not track.ready
    assert [t["name"] for t in me.describe()["tracks"]] == ["mic"]
    entry = next(t for t in me.published_state()["tracks"] if t["id"] == cam.id)
    assert entry["state"] == "failed" and entry["error"]["code"] == 53404
    assert dave_events.find("track_published", about("carol", "cam")) is None
    # Not published again on later negotiations (the client still lists it).
    await wait_for(lambda: settled(me), message="carol's negotiation settled")
    carol.local_participant._send_tracks()
    await wait_for(lambda: settled(me), message="carol's negotiation settled")
    assert me.track_by_client_id(cam.id) is track
    assert not [s for s in me.transport.peer.sections() if s.kind == "video"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("carol" in w and "53404" in w and "publication" in w for w in warnings), warnings
    # Dropping the failed track removes it.
    await carol.local_participant.unpublish_track(cam)
    await wait_for(lambda: me.track_by_client_id(cam.id) is None, message="the failed track dropped")
