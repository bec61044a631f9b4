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
from typing import Any

import pytest

from sfu.contracts import NegotiationError, Offer
from sfu.workers.channel import MAX_FRAME, Channel, ChannelClosed, ProtocolError, RequestError, encode
from sfu.workers.pool import RemoteMediaPlane, WorkerSpec, WorkerStartError
from sfu.workers.remote import WORKER_DIED, RemoteSink, RemoteSource, RemoteTransport

from .conftest import wait_for

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

