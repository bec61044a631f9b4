"""Data-track relay: backpressure towards slow subscribers, and the publisher's settings."""

from __future__ import annotations

from pyee.asyncio import AsyncIOEventEmitter

from sfu.media.datatrack import DataConsumer, DataProducer, DataTrackOptions
from sfu.media.plane import MAX_PENDING_CHANNELS
from signaling.client import LocalDataTrack, RemoteDataTrack, connect

from .conftest import Server, wait_for
from .helpers.clients import Clients, EventLog, about, local_track, subscribed_data


class SlowChannel(AsyncIOEventEmitter):
    """Stands in for an RTCDataChannel whose SCTP send buffer drains only when told to."""

    label = "MT" + "0" * 32

    def __init__(self) -> None:
        super().__init__()
        self.readyState = "open"
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.sent: list[str | bytes] = []

    def send(self, message: str | bytes) -> None:
        self.sent.append(message)
        self.bufferedAmount += len(message)

    def drain(self) -> None:
        self.bufferedAmount = 0
        self.emit("bufferedamountlow")

    def close(self) -> None:
        self.readyState = "closed"


def test_reliable_consumer_holds_messages_above_the_high_water_mark_then_drains_in_order() -> None:
    channel = SlowChannel()
    consumer = DataConsumer(channel, DataTrackOptions(), high_water_mark=100, max_queued=50)  # type: ignore[arg-type]
    for i in range(30):
        consumer.send(f"{i:010d}")  # 10 bytes each: ten fit under the mark
    assert len(channel.sent) == 10 and consumer.queued == 20
    channel.drain()
    channel.drain()
    assert channel.sent == [f"{i:010d}" for i in range(30)]
    assert consumer.queued == 0 and not consumer.closed


def test_reliable_consumer_that_cannot_keep_up_is_cut_off_not_buffered_without_bound() -> None:
    channel = SlowChannel()
    overflowed: list[DataConsumer] = []
    consumer = DataConsumer(channel, DataTrackOptions(), high_water_mark=100, max_queued=50, on_overflow=overflowed.append)  # type: ignore[arg-type]
    for i in range(200):
        consumer.send(f"{i:010d}")
    assert consumer.closed and overflowed == [consumer]
    assert channel.readyState == "closed"
    assert len(channel.sent) == 10 and consumer.queued == 0


def test_reliable_consumer_is_cut_off_at_its_byte_limit_before_its_count_limit() -> None:
    channel = SlowChannel()
    overflowed: list[DataConsumer] = []
    consumer = DataConsumer(
        channel, DataTrackOptions(), high_water_mark=100, max_queued=1000, max_queued_bytes=200, on_overflow=overflowed.append  # type: ignore[arg-type]
    )
    for i in range(30):
        consumer.send(f"{i:010d}")
    assert consumer.queued_bytes == 200 and not consumer.closed  # ten written, twenty (200 bytes) held
    consumer.send("x")
    assert consumer.closed and overflowed == [consumer] and consumer.queued_bytes == 0


def test_unreliable_consumer_drops_oldest_to_stay_under_its_byte_limit() -> None:
    channel = SlowChannel()
    consumer = DataConsumer(channel, DataTrackOptions(max_retransmits=0), high_water_mark=100, max_queued_bytes=25)  # type: ignore[arg-type]
    for i in range(12):
        consumer.send(f"{i:010d}")  # ten written, two (20 bytes) held
    consumer.send("é" * 10)  # 20 bytes as sent: both held messages make way
    assert consumer.dropped == 2 and consumer.queued == 1 and consumer.queued_bytes == 20
    consumer.send("x" * 10)
    assert consumer.dropped == 3 and consumer.queued == 1 and consumer.queued_bytes == 10
    assert not consumer.closed
    channel.drain()
    assert channel.sent[-1] == "x" * 10


def test_unreliable_consumer_drops_oldest_when_full() -> None:
    channel = SlowChannel()
    consumer = DataConsumer(channel, DataTrackOptions(ordered=False, max_retransmits=0), high_water_mark=100, max_queued=5)  # type: ignore[arg-type]
    for i in range(30):
        consumer.send(f"{i:010d}")
    assert not consumer.closed and consumer.dropped == 15
    channel.drain()
    assert channel.sent[10:] == [f"{i:010d}" for i in range(25, 30)]


async def test_subscriber_channel_copies_the_publishers_reliability_settings(server) -> None:
    lossy = LocalDataTrack("telemetry", ordered=False, max_retransmits=0)
    alice = await connect(server.url, server.token("alice"), name="data", tracks=[lossy])
    bob = await connect(server.url, server.token("bob"), name="data")
    try:
        found: dict[str, RemoteDataTrack] = {}
        bob.on("track_subscribed", lambda track, pub, p: found.setdefault(pub.track_name, track))
        track = await wait_for(lambda: found.get("telemetry"), message="telemetry subscribed")
        assert track.channel.ordered is False
        assert track.channel.maxRetransmits == 0
        assert track.channel.maxPacketLifeTime is None
        got: list[str] = []
        track.on("message", got.append)
        lossy.send("hello")
        await wait_for(lambda: got == ["hello"], message="message over the unreliable track")
    finally:
        await bob.disconnect()
        await alice.disconnect()


async def test_a_subscriber_closing_its_channel_ends_that_subscription(server: Server, clients: Clients) -> None:
    alice = await clients.join("alice", "data", publish="d")
    bob = await clients.join("bob", "data", publish="")
    bob_events = EventLog(bob)
    received = await subscribed_data(bob, "alice")
    chat = local_track(alice, "chat")
    room = server.registry.find_in_progress("data")
    assert room is not None and chat.sid is not None
    producer = room.find_participant("alice").published[chat.sid].source  # type: ignore[union-attr]
    router = server.registry.plane.router(room.sid)  # type: ignore[attr-defined]
    assert isinstance(producer, DataProducer) and len(router.data_consumers(producer)) == 1
    bob_server = room.find_participant("bob")
    assert bob_server is not None
    revision = bob_server.subscribed_revision

    received.channel.close()

    await bob_events.wait("track_unsubscribed", about("alice", "chat"))
    assert chat.sid not in bob_server.subscriptions and bob_server.subscribed_revision > revision
    assert router.data_consumers(producer) == []  # nothing is queued for the closed channel any more


async def test_data_channels_for_no_published_track_are_capped_and_closed(server: Server, clients: Clients) -> None:
    alice = await clients.join("alice", "data", publish="")
    await wait_for(lambda: alice.offers_answered, message="alice's transport negotiated")
    room = server.registry.find_in_progress("data")
    assert room is not None
    me = room.find_participant("alice")
    assert me is not None
    extra = 4
    channels = [alice.pc.createDataChannel(f"nothing-{i}") for i in range(MAX_PENDING_CHANNELS + extra)]
    channels.append(alice.pc.createDataChannel("nothing-0"))  # a label already waiting

    # Past the cap, and a repeated label, are closed by the server; the rest wait.
    await wait_for(lambda: sum(c.readyState == "closed" for c in channels) == extra + 1, message="extra channels closed")
    assert len(me.transport._pending_channels) == MAX_PENDING_CHANNELS
    waiting = list(me.transport._pending_channels.values())
    await alice.disconnect()
    await wait_for(lambda: me.status == "disconnected", message="alice removed")
    assert me.transport._pending_channels == {} and all(c.readyState == "closed" for c in waiting)
