"""Media worker processes (issue 10): the framed channel, the front's RemoteMediaPlane over
worker processes (first with a fake media plane in the workers), then real calls with
``workers=2``: placement, crash isolation, REST and /metrics over every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sfu.contracts import NegotiationError, Offer
from sfu.workers.channel import MAX_FRAME, Channel, ChannelClosed, ProtocolError, RequestError, encode
from sfu.workers.pool import PACKETS_PER_PARTICIPANT, RemoteMediaPlane, Worker, WorkerSpec, WorkerStartError
from sfu.workers.remote import WORKER_DIED, RemoteSink, RemoteSource, RemoteTransport
from signaling.client import LocalAudioTrack, LocalDataTrack, LocalVideoTrack, Room

from .conftest import Server, running_server, wait_for
from .helpers.browser import Page, chromium
from .media import CounterVideoTrack, ToneAudioTrack
from .helpers.clients import Clients, EventLog, VideoReader, local_track, subscribed_data, subscribed_media
from .rest_support import call, helper_client, until
from .test_metrics import scrape, value
from .test_udp_port import free_udp_port, sfu_serve, udp_sockets

FAKE = "tests.helpers.fake_plane:build"


# --- the channel -------------------------------------------------------------------------------


async def channel_pair(on_request: Any = None, on_event: Any = None) -> tuple[Channel, Channel, socket.socket]:
    """(front, worker) channels over a socketpair; the raw worker-side socket too."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    front = await Channel.over_socket(a, "front", on_event=on_event)
    worker = await Channel.over_socket(b, "worker", on_request=on_request)
    return front, worker, b


async def test_channel_carries_requests_responses_errors_and_notifications() -> None:
    events: list[tuple[str, Any]] = []

    async def slow(data: Any) -> Any:
        await asyncio.sleep(0.01)
        return {"slow": data}

    def on_request(method: str, data: Any) -> Any:
        if method == "echo":
            worker.notify("echoed", data)
            return data
        if method == "slow":
            return slow(data)
        raise RequestError(53403, f"no {method}")

    front, worker, _ = await channel_pair(on_request, lambda e, d: events.append((e, d)))
    tasks = [asyncio.ensure_future(c.run()) for c in (front, worker)]
    try:
        slow_answer = front.request("slow", 1)
        assert await front.request("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        assert await slow_answer == {"slow": 1}
        with pytest.raises(RequestError) as refused:
            await front.request("nothing")
        assert refused.value.code == 53403
        assert events == [("echoed", {"a": [1, 2]})]
    finally:
        front.close()
        await asyncio.gather(*tasks)


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">I", MAX_FRAME + 1),  # too long: refused before its body is read
        struct.pack(">I", 3) + b"\xff{]",  # not JSON
        encode({"hello": 1}),  # JSON, but no known shape
        encode({"id": "7", "ok": True}),  # a response with a string id
        encode({"id": 7, "ok": True}),  # a response to a request never made
        struct.pack(">I", 10) + b"{}",  # cut inside a frame
    ],
)
async def test_a_malformed_frame_ends_the_channel_and_fails_pending_requests(frame: bytes) -> None:
    front, _, raw = await channel_pair(on_event=lambda e, d: None)
    pending = front.request("anything")
    raw.setblocking(True)
    raw.sendall(frame)
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(front.run(), 10)
    assert front.closed
    with pytest.raises(ChannelClosed):
        await pending
    raw.close()


def test_a_frame_larger_than_the_bound_is_never_sent() -> None:
    with pytest.raises(ProtocolError):
        encode({"event": "offer", "data": "x" * MAX_FRAME})


# --- the pool, with a fake plane in each worker ---------------------------------------------------


class Recorder:
    """A TransportListener that records every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.events.append((name[3:], args))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for event, args in self.events if event == name]


@pytest.fixture
async def fake_plane() -> AsyncIterator[RemoteMediaPlane]:
    plane = RemoteMediaPlane(2, WorkerSpec(plane=FAKE, log_level="WARNING"))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_rooms_go_to_the_least_loaded_worker_and_stay_there(fake_plane: RemoteMediaPlane) -> None:
    a1 = fake_plane.create_transport("RMa", "a/1", Recorder())
    b1 = fake_plane.create_transport("RMb", "b/1", Recorder())
    a2 = fake_plane.create_transport("RMa", "a/2", Recorder())
    assert isinstance(a1, RemoteTransport) and isinstance(b1, RemoteTransport) and isinstance(a2, RemoteTransport)
    assert a1.worker is a2.worker and a1.worker is not b1.worker
    c1 = fake_plane.create_transport("RMc", "c/1", Recorder())  # worker of b has one transport, a's two
    assert c1.worker is b1.worker  # type: ignore[attr-defined]
    figures = fake_plane.figures()
    assert [f.worker for f in figures] == [0, 1]
    assert sorted(f.transports for f in figures) == [2, 2] and all(f.alive and f.pid for f in figures)
    assert len({f.pid for f in figures}) == 2 and os.getpid() not in {f.pid for f in figures}


async def test_placement_weighs_forwarded_packets_as_well_as_transports(fake_plane: RemoteMediaPlane) -> None:
    busy, idle = fake_plane.workers
    fake_plane.create_transport("RMa", "a/1", Recorder())
    assert fake_plane.placement["RMa"] is busy  # (a tie goes to the lower index)
    idle.rate = 3 * PACKETS_PER_PARTICIPANT  # one room forwarding as much as three participants
    fake_plane.create_transport("RMb", "b/1", Recorder())
    assert fake_plane.placement["RMb"] is busy
    fake_plane.room_closed("RMb")
    assert "RMb" not in fake_plane.placement and "RMb" not in busy.rooms


async def test_a_remote_transport_negotiates_publishes_and_subscribes(fake_plane: RemoteMediaPlane) -> None:
    pub_events, sub_events = Recorder(), Recorder()
    publisher = fake_plane.create_transport("RMx", "x/pub", pub_events)
    subscriber = fake_plane.create_transport("RMx", "x/channel", sub_events)
    source = publisher.publish("MT1", "video", ["VP8"])
    assert isinstance(source, RemoteSource) and source.track_sid == "MT1" and source.kind == "video"
    publisher.request_negotiation()
    await wait_for(lambda: pub_events.of("offer") and pub_events.of("publication_ready"), message="offer and ready")
    (offer,) = pub_events.of("offer")[0]
    assert isinstance(offer, Offer) and offer.revision == 1 and [s.track_sid for s in offer.sections] == ["MT1"]
    assert pub_events.of("publication_ready") == [(source,)]  # the very proxy publish returned
    assert publisher.negotiating
    with pytest.raises(NegotiationError) as wrong:
        await publisher.apply_answer("v=0", 7)
    assert wrong.value.code == 53000
    await publisher.apply_answer("v=0", 1)
    assert not publisher.negotiating
    with pytest.raises(NegotiationError):
        await publisher.add_ice_candidate("bad", "0", 0)
    await publisher.add_ice_candidate(None, None, None)
    assert await publisher.apply_offer("o", 2) == "answer to o"

    sink = subscriber.subscribe(source, "stream", "low")
    rejected = subscriber.subscribe(source, "reject")
    assert isinstance(sink, RemoteSink) and sink.track_sid == "MT1" and sink.kind == "video"
    # Counters come with the workers' stats, about once a second.
    await wait_for(lambda: sink.counters.packets > 0 and source.counters.packets > 0, message="counters")
    await wait_for(lambda: sub_events.of("subscription_failed"), message="a rejected subscription")
    assert sub_events.of("subscription_failed") == [(rejected, "no codec in common")]
    # A data track, on the channel the participant opened (its options come from the worker).
    await wait_for(lambda: sub_events.of("data_channel"), message="a data channel")
    assert subscriber.publish_data("MT2", "nothing") is None
    data = subscriber.publish_data("MT2", "chat")
    assert data is not None and data.kind == "data"
    await wait_for(lambda: data.data_options is not None and data.data_options.max_retransmits == 3, message="options")
    subscriber.unsubscribe(sink)
    publisher.unpublish(source)
    await publisher.close()
    await subscriber.close()
    await wait_for(lambda: sum(f.transports for f in fake_plane.figures()) == 0, message="the worker closed them")


async def test_a_killed_worker_fails_only_its_transports_and_is_replaced(fake_plane: RemoteMediaPlane) -> None:
    doomed, spared = Recorder(), Recorder()
    lost = fake_plane.create_transport("RMa", "a/1", doomed)
    kept = fake_plane.create_transport("RMb", "b/1", spared)
    kept_source = kept.publish("MT9", "audio")
    victim = lost.worker  # type: ignore[attr-defined]
    old_pid = victim.pid
    pending = asyncio.ensure_future(lost.apply_answer("v=0", 1))
    os.kill(old_pid, signal.SIGKILL)
    await wait_for(lambda: doomed.of("failed"), message="the lost transport to fail")
    assert doomed.of("failed")[0][0] == WORKER_DIED
    with pytest.raises(NegotiationError) as failed:
        await pending
    assert failed.value.code == WORKER_DIED
    assert not spared.of("failed")
    await wait_for(lambda: victim.alive and victim.pid != old_pid, message="a replacement worker")
    assert not alive(old_pid) and victim.restarts == 1
    # The same room starts afresh on a live worker, and the other room's media still counts.
    before = kept_source.counters.packets
    again_events = Recorder()
    again = fake_plane.create_transport("RMa", "a/2", again_events)
    again.request_negotiation()
    await wait_for(lambda: again_events.of("offer"), message="an offer from the room's new worker")
    assert again.worker.alive  # type: ignore[attr-defined]
    await wait_for(lambda: kept_source.counters.packets > before, message="the other room's counters")
    figures = {f.worker: f for f in fake_plane.figures()}
    assert figures[victim.index].restarts == 1 and figures[victim.index].alive


async def test_a_worker_that_breaks_the_protocol_is_killed_not_the_front(fake_plane: RemoteMediaPlane) -> None:
    events = Recorder()
    transport = fake_plane.create_transport("RMe", "e/oversize", events)
    worker = transport.worker  # type: ignore[attr-defined]
    old_pid = worker.pid
    await wait_for(lambda: events.of("failed"), message="the transport to fail")
    assert events.of("failed")[0][0] == WORKER_DIED and not events.of("offer")
    await wait_for(lambda: worker.alive and worker.pid != old_pid, message="a replacement worker")
    assert not alive(old_pid)


async def test_a_worker_that_cannot_start_reports_why() -> None:
    plane = RemoteMediaPlane(1, WorkerSpec(media={"fail": True}, plane=FAKE, log_level="CRITICAL"))
    with pytest.raises(WorkerStartError, match="Address already in use"):
        await plane.start()
    assert all(w.process is None or w.process.returncode is not None for w in plane.workers)



# --- real calls with workers=2 -----------------------------------------------------------------


@pytest.fixture
async def server2(tmp_path: Path, netns: None) -> AsyncIterator[Server]:
    """A server whose media runs in two worker processes."""
    async with running_server(tmp_path, workers=2) as (running, _):
        yield running


@pytest.fixture
async def clients2(server2: Server) -> AsyncIterator[Clients]:
    joined = Clients(server2)
    yield joined
    await joined.close()


def plane_of(server: Server) -> RemoteMediaPlane:
    plane = server.registry.plane
    assert isinstance(plane, RemoteMediaPlane)
    return plane


def worker_of(server: Server, room_sid: str) -> Worker:
    return plane_of(server).placement[room_sid]


async def pair_in(clients: Clients, room: str) -> tuple[Room, Room, VideoReader]:
    """A publisher and a subscriber in ``room``, the subscriber decoding the publisher's video."""
    # 15 fps: the test process encodes and decodes every room's video on two shared cores.
    tracks = [LocalVideoTrack(CounterVideoTrack(fps=15), "cam"), LocalAudioTrack(ToneAudioTrack(), "mic"), LocalDataTrack("chat")]
    publisher = await clients.join(f"{room}-pub", room, tracks=tracks)
    subscriber = await clients.join(f"{room}-sub", room, publish="")
    reader = await clients.watch(subscriber, f"{room}-pub")
    await reader.advance(10)
    return publisher, subscriber, reader


async def test_two_rooms_land_on_different_workers_and_both_carry_media(server2: Server, clients2: Clients) -> None:
    one = await pair_in(clients2, "one")
    two = await pair_in(clients2, "two")
    first, second = worker_of(server2, one[0].sid), worker_of(server2, two[0].sid)
    assert first is not second and {first.index, second.index} == {0, 1}
    await one[2].advance(10)
    await two[2].advance(10)
    figures = {f.worker: f for f in plane_of(server2).figures()}
    assert set(figures) == {0, 1}
    for f in figures.values():
        assert f.alive and f.pid not in (0, os.getpid()) and f.rooms == 1 and f.transports == 2
    # Data tracks too: each subscriber gets its own room's messages, in order.
    for pub, sub, _ in (one, two):
        got: list[str] = []
        (await subscribed_data(sub, pub.local_participant.identity)).on("message", got.append)
        chat = local_track(pub, "chat")
        assert isinstance(chat, LocalDataTrack)
        for i in range(20):
            chat.send(f"{pub.name}:{i}")
        await wait_for(lambda: len(got) >= 20, message="20 data messages")
        assert got == [f"{pub.name}:{i}" for i in range(20)]
    # Each worker forwards its own room's packets on its own UDP port; the front none of them.
    await wait_for(lambda: all(f.packets_out > 100 for f in plane_of(server2).figures()), message="both workers forwarding")
    assert len({f.udp_port for f in plane_of(server2).figures()}) == 2


MAX_PAUSE = 1.0  # seconds the other room's video may go without a decoded frame across a kill


def gaps(reader: VideoReader, start: float, end: float) -> float:
    """The longest time without a decoded frame arriving within [start, end] (the reader must
    have frames from before ``start`` to after ``end``)."""
    times = [start] + [t for t, _, _ in reader.frames if start <= t <= end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


async def test_a_killed_worker_disconnects_only_its_rooms_and_the_room_comes_back(server2: Server, clients2: Clients) -> None:
    doomed_pub, doomed_sub, _ = await pair_in(clients2, "doomed")
    spared_pub, spared_sub, spared = await pair_in(clients2, "spared")
    victim = worker_of(server2, doomed_pub.sid)
    assert victim is not worker_of(server2, spared_pub.sid)
    old_pid, doomed_sid = victim.pid, doomed_pub.sid
    logs = [EventLog(room) for room in (doomed_pub, doomed_sub, spared_pub, spared_sub)]
    loop = asyncio.get_running_loop()
    await spared.advance(25)  # (frames for more than the second before the kill that is measured)

    killed_at = loop.time()
    os.kill(old_pid, signal.SIGKILL)
    # Its participants hear 53405; the other room's do not.
    for log in logs[:2]:
        (error,) = await log.wait("disconnected")
        assert error is not None and error.code == WORKER_DIED, error
    # Their records are closed: participants disconnected, the emptied ad-hoc room completed.
    rest = helper_client(server2.http, server2.credentials.api_key_sid, server2.credentials.api_key_secret)
    room = await until(lambda: rest.video.v1.rooms(doomed_sid).fetch(), lambda r: r.status == "completed", "the room to complete")
    assert room.unique_name == "doomed"
    statuses = await call(lambda: {p.identity: p.status for p in rest.video.v1.rooms(doomed_sid).participants.list()})
    assert statuses == {"doomed-pub": "disconnected", "doomed-sub": "disconnected"}
    # A replacement worker starts, on the same index.
    await wait_for(lambda: victim.alive and victim.pid != old_pid, message="a replacement worker")
    assert victim.restarts == 1

    # The other room never paused: frames kept arriving across the kill (and the replacement's
    # start), never a second apart. (Measured before the room comes back: the new pair's
    # encoders would compete for this process's share of the two cores.)
    await wait_for(lambda: spared.frames[-1][0] > killed_at + 3.0, message="frames past the measured window")
    window = [t for t, _, _ in spared.frames if killed_at - 1.0 <= t <= killed_at + 3.0]
    assert len(window) >= 20, f"{len(window)} frames in the 4 s around the kill (15 fps sent)"
    arrivals = [t - killed_at for t, _, _ in spared.frames]
    pauses = " ".join(f"{a:+.2f}s:{b - a:.2f}s" for a, b in zip(arrivals, arrivals[1:]) if b - a > 0.2)
    assert gaps(spared, killed_at - 1.0, killed_at + 3.0) < MAX_PAUSE, f"pauses (at, length) relative to the kill: {pauses}"

    # The room name is joinable again, and carries media, within seconds.
    again_pub, _, again = await pair_in(clients2, "doomed")
    assert again_pub.sid != doomed_sid
    rejoined_after = loop.time() - killed_at
    assert rejoined_after < 20, f"the room took {rejoined_after:.1f} s to carry media again"
    await spared.advance(10)
    assert all(log.find("disconnected") is None for log in logs[2:])
    assert [p.identity for p in server2.registry.find_in_progress("spared").participants.values()] == ["spared-pub", "spared-sub"]  # type: ignore[union-attr]


async def test_rest_lists_fetches_and_ends_rooms_on_every_worker(server2: Server, clients2: Clients) -> None:
    one = await pair_in(clients2, "one")
    two = await pair_in(clients2, "two")
    assert worker_of(server2, one[0].sid) is not worker_of(server2, two[0].sid)
    rest = helper_client(server2.http, server2.credentials.api_key_sid, server2.credentials.api_key_secret)
    listed = await call(lambda: {r.unique_name: r.sid for r in rest.video.v1.rooms.list(status="in-progress")})
    assert listed == {"one": one[0].sid, "two": two[0].sid}
    for name, sid in listed.items():
        fetched = await call(rest.video.v1.rooms(sid).fetch)
        assert fetched.unique_name == name and fetched.status == "in-progress"
        identities = await call(lambda: sorted(p.identity for p in rest.video.v1.rooms(sid).participants.list(status="connected")))
        assert identities == [f"{name}-pub", f"{name}-sub"]
    ended = worker_of(server2, two[0].sid)
    log = EventLog(two[1])
    await call(rest.video.v1.rooms(two[0].sid).update, status="completed")
    (error,) = await log.wait("disconnected")
    assert error is not None and error.code == 53118
    await wait_for(lambda: ended.figures.get("transports") == 0, message="the worker to drop the ended room's transports")
    await one[2].advance(10)
    still = await call(lambda: [r.unique_name for r in rest.video.v1.rooms.list(status="in-progress")])
    assert still == ["one"]


async def test_metrics_show_each_worker(server2: Server, clients2: Clients) -> None:
    await pair_in(clients2, "one")
    await pair_in(clients2, "two")
    await wait_for(lambda: all(f.packets_out > 0 for f in plane_of(server2).figures()), message="stats from both workers")
    samples = await scrape(server2)  # type: ignore[arg-type]
    for index in (0, 1):
        labels = {"worker": str(index)}
        assert value(samples, "sfu_media_worker_up", **labels) == 1
        assert value(samples, "sfu_media_worker_rooms", **labels) == 1
        assert value(samples, "sfu_media_worker_transports", **labels) == 2
        assert value(samples, "sfu_media_worker_packets_sent_total", **labels) > 0
        assert value(samples, "sfu_media_worker_restarts_total", **labels) == 0
    assert value(samples, "sfu_media_workers") == 2
    # The workers' UDP ports are summed as one process's would be.
    assert value(samples, "sfu_udp_datagrams_sent_total") > 0


@pytest.mark.browser
async def test_chromium_calls_through_a_worker(server2: Server, clients2: Clients) -> None:
    """Two Chromium tabs meet on the second worker (a silent Python participant's room holds the
    first: a media pair there as well starves this process on two shared cores, with or
    without workers) and a Python client in their room receives both cameras."""
    holder = await clients2.join("holder", "first", publish="")
    py = await clients2.join("py", "browsers", publish="va", receive="packets")
    assert worker_of(server2, py.sid).index != worker_of(server2, holder.sid).index
    async with chromium() as browser:
        alice = await Page.open(browser, server2.http + "/", "alice")
        bob = await Page.open(browser, server2.http + "/", "bob")
        try:
            await alice.join("browsers", "alice")
            await bob.join("browsers", "bob")
            for page, others in ((alice, ("bob", "py")), (bob, ("alice", "py"))):
                for other in others:
                    await page.wait_video_playing(other)
                    await page.wait_audio_flowing(other)
            for identity in ("alice", "bob"):
                track = await subscribed_media(py, identity, "camera")
                start = track.packets_received
                await wait_for(lambda: track.packets_received > start + 20, message=f"py receiving {identity}'s camera")
        finally:
            for page in (alice, bob):
                await page.close()


async def test_sfu_serve_workers_bind_consecutive_ports_and_the_front_none(tmp_path: Path, netns: None) -> None:
    base = free_udp_port()
    while not udp_port_free(base + 1):
        base = free_udp_port()
    async with sfu_serve(tmp_path, "--workers", "2", "--udp-port", str(base)) as (process, _):
        children = await wait_for(lambda: worker_pids(process.pid), message="two worker processes")
        assert len(children) == 2
        bound = sorted(port for pid in children for _, port in udp_sockets(pid))
        assert bound == [base, base + 1]
        assert udp_sockets(process.pid) == []  # no media socket in the front process
    for pid in children:  # the front was killed: its workers see the channel close and exit
        await wait_for(lambda: not alive(pid), message=f"worker {pid} to exit")


def udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def worker_pids(front: int) -> list[int]:
    """The processes whose parent is ``front`` and that run a media worker."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == front and b"sfu.workers.worker" in cmdline:
                found.append(int(entry))
    return sorted(found) if len(found) == 2 else []
