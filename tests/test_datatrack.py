"""Data-track relay: backpressure towards slow subscribers, and the publisher's settings."""

from __future__ import annotations

from pyee.asyncio import AsyncIOEventEmitter

from sfu.media.datatrack import DataConsumer, DataTrackOptions
from signaling.client import LocalDataTrack, RemoteDataTrack, connect

from .conftest import wait_for


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
