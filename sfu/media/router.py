"""A Router is one room's fan-out map: which consumers each source's packets and messages
go to (mediasoup's Router, which owns the producer -> consumers map).

A Producer only iterates the list of forward methods the Router hands it (``set_fan_out``),
and a DataProducer the list of send methods; consumers join and leave through the Router
(``source.FanOut``). So producers and consumers never import each other, and the per-packet
path stays one loop over bound methods in the producer.
"""

from __future__ import annotations

import logging

from .consumer import Consumer
from .datatrack import DataConsumer, DataProducer
from .producer import Producer

logger = logging.getLogger(__name__)


class Router:
    def __init__(self, room_sid: str = "") -> None:
        self.room_sid = room_sid
        # Per producer: its attached consumers (forwarding or not), and those forwarding now.
        self._consumers: dict[Producer, list[Consumer]] = {}
        self._forwarding: dict[Producer, list[Consumer]] = {}
        self._data: dict[DataProducer, list[DataConsumer]] = {}
        self._data_sources: dict[DataConsumer, DataProducer] = {}

    # --- audio and video (source.FanOut, called by consumers) ----------------------------

    def attach(self, consumer: Consumer) -> None:
        producer = consumer.producer
        assert isinstance(producer, Producer)
        consumers = self._consumers.get(producer, [])
        if consumer not in consumers:
            self._consumers[producer] = [*consumers, consumer]

    def detach(self, consumer: Consumer) -> None:
        producer = consumer.producer
        assert isinstance(producer, Producer)
        consumers = [c for c in self._consumers.get(producer, ()) if c is not consumer]
        if consumers:
            self._consumers[producer] = consumers
        else:
            self._consumers.pop(producer, None)
        self.set_forwarding(consumer, False)

    def set_forwarding(self, consumer: Consumer, forwarding: bool) -> None:
        producer = consumer.producer
        assert isinstance(producer, Producer)
        active = [c for c in self._forwarding.get(producer, ()) if c is not consumer]
        if forwarding and consumer in self._consumers.get(producer, ()):
            active.append(consumer)
        if active:
            self._forwarding[producer] = active
        else:
            self._forwarding.pop(producer, None)
        producer.set_fan_out([c.forward for c in active])

    def consumers(self, producer: Producer) -> list[Consumer]:
        """The producer's attached consumers, forwarding or not."""
        return list(self._consumers.get(producer, ()))

    def forwarding(self, producer: Producer) -> list[Consumer]:
        """The consumers the producer's fan-out reaches now."""
        return list(self._forwarding.get(producer, ()))

    # --- data ----------------------------------------------------------------------------

    def add_data_consumer(self, source: DataProducer, sink: DataConsumer) -> None:
        sinks = self._data[source] = [*self._data.get(source, ()), sink]
        self._data_sources[sink] = source
        source.set_fan_out([s.send for s in sinks])

    def remove_data_consumer(self, sink: DataConsumer) -> None:
        """Take the sink out of its source's fan-out and close its channel."""
        source = self._data_sources.pop(sink, None)
        sink.close()
        if source is None:
            return
        sinks = [s for s in self._data.get(source, ()) if s is not sink]
        if sinks:
            self._data[source] = sinks
        else:
            self._data.pop(source, None)
        source.set_fan_out([s.send for s in sinks])

    def data_consumers(self, source: DataProducer) -> list[DataConsumer]:
        return list(self._data.get(source, ()))

    # --- lifecycle -------------------------------------------------------------------------

    def remove_source(self, source: Producer | DataProducer) -> None:
        """The source is going: detach (or close) every consumer of it."""
        if isinstance(source, Producer):
            for consumer in self.consumers(source):
                consumer.detach()
            source.set_fan_out([])
        else:
            for sink in self.data_consumers(source):
                self.remove_data_consumer(sink)

    def close(self) -> None:
        for producer in list(self._consumers):
            self.remove_source(producer)
        for source in list(self._data):
            self.remove_source(source)
