"""Data tracks: messages on a publisher's data channel relayed to each subscriber's channel.

A DataProducer wraps the channel the publisher opened; a DataConsumer wraps the channel
the SFU opened towards one subscriber with the publisher's ordered / reliable settings. The
room's Router (sfu.media.router) keeps which consumers each producer's messages go to.
Backpressure: each consumer writes to SCTP only while its ``bufferedAmount`` is under a
high-water mark, and otherwise holds messages in a queue bounded by count and by bytes,
drained on ``bufferedamountlow``. When that queue is full, an unreliable track drops its
oldest messages (its contract allows loss); a reliable track cannot drop without breaking
its guarantee, so that subscriber's channel is closed and the subscriber is told. A
channel the subscriber closes ends its consumer too.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from aiortc import RTCDataChannel

from ..contracts import DataTrackOptions, Kind, MediaCounters, Priority

logger = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 256 * 1024


def _size(message: str | bytes) -> int:
    """Bytes on the wire (a str is sent as UTF-8)."""
    return len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "surrogatepass"))


class DataConsumer:
    """One subscriber's copy of a data track (a ``contracts.TrackSink``). ``on_overflow`` is
    called when a reliable track's queue overflows (the channel is then closed),
    ``on_closed`` when the subscriber closes the channel."""

    kind: Kind = "data"

    def __init__(
        self,
        channel: RTCDataChannel,
        options: DataTrackOptions,
        high_water_mark: int = 1 << 20,
        max_queued: int = 1024,
        max_queued_bytes: int = 4 << 20,
        on_overflow: Callable[["DataConsumer"], None] | None = None,
        on_closed: Callable[["DataConsumer"], None] | None = None,
    ) -> None:
        self.channel = channel
        self.options = options
        self.sent = 0
        self.dropped = 0
        self._queue: deque[tuple[str | bytes, int]] = deque()  # (message, its size)
        self._queued_bytes = 0
        self._high_water_mark = high_water_mark
        self._max_queued = max_queued
        self._max_queued_bytes = max_queued_bytes
        self._on_overflow = on_overflow
        self._on_closed = on_closed
        self.closed = False
        channel.bufferedAmountLowThreshold = high_water_mark // 2
        channel.on("bufferedamountlow", self._drain)
        channel.on("open", self._drain)
        channel.on("close", self._channel_closed)

    @property
    def track_sid(self) -> str:
        return self.channel.label  # the SFU labels each subscriber's channel with the track SID

    @property
    def counters(self) -> MediaCounters:
        return MediaCounters(packets=self.sent)

    def set_priority(self, priority: Priority) -> None:
        """(Data is never shed.)"""

    def send(self, message: str | bytes) -> None:
        if self.closed:
            return
        if not self._queue and self._writable():
            self._write(message)
            return
        size = _size(message)
        if self._full(size):
            if self.options.reliable:
                logger.warning("data subscriber too slow for reliable track %s: closing its channel", self.channel.label)
                self.close()
                if self._on_overflow is not None:
                    self._on_overflow(self)
                return
            while self._queue and self._full(size):
                self._queued_bytes -= self._queue.popleft()[1]
                self.dropped += 1
            if size > self._max_queued_bytes:
                self.dropped += 1
                return
        self._queue.append((message, size))
        self._queued_bytes += size

    def _full(self, size: int) -> bool:
        """True when one more message of ``size`` bytes does not fit in the queue."""
        return len(self._queue) >= self._max_queued or self._queued_bytes + size > self._max_queued_bytes

    def _writable(self) -> bool:
        return self.channel.readyState == "open" and self.channel.bufferedAmount < self._high_water_mark

    def _write(self, message: str | bytes) -> None:
        self.channel.send(message)
        self.sent += 1

    def _drain(self) -> None:
        while self._queue and self._writable():
            message, size = self._queue.popleft()
            self._queued_bytes -= size
            self._write(message)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _channel_closed(self) -> None:
        if self.closed:
            return  # closed by us
        logger.info("data subscriber closed its channel for track %s", self.channel.label)
        self._discard()
        if self._on_closed is not None:
            self._on_closed(self)

    def _discard(self) -> None:
        self.closed = True
        self._queue.clear()
        self._queued_bytes = 0

    def close(self) -> None:
        if self.closed:
            return
        self._discard()
        if self.channel.readyState in ("connecting", "open"):
            self.channel.close()


class DataProducer:
    """The publisher's channel for one data track (a ``contracts.TrackSource``)."""

    kind: Kind = "data"

    def __init__(self, track_sid: str, channel: RTCDataChannel) -> None:
        self.track_sid = track_sid
        self.channel = channel
        self.options = DataTrackOptions(
            ordered=channel.ordered,
            max_packet_life_time=channel.maxPacketLifeTime,
            max_retransmits=channel.maxRetransmits,
        )
        self._sends: list[Callable[[str | bytes], None]] = []  # the Router's fan-out list
        self.received = 0
        self.closed = False
        channel.on("message", self._on_message)

    @property
    def data_options(self) -> DataTrackOptions:
        return self.options

    @property
    def counters(self) -> MediaCounters:
        return MediaCounters(packets=self.received)

    def _on_message(self, message: str | bytes) -> None:
        if len(message) > MAX_MESSAGE_SIZE:
            logger.warning("dropping a %d-byte message on data track %s", len(message), self.track_sid)
            return
        self.received += 1
        for send in self._sends:
            send(message)

    def set_fan_out(self, sends: list[Callable[[str | bytes], None]]) -> None:
        """The send methods each message goes to from now on (the Router's list)."""
        self._sends = sends

    def close(self) -> None:
        """(The Router closes its consumers: ``Router.remove_source``.)"""
        self.closed = True
        self._sends = []
