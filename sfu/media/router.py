"""A Router is one room's fan-out map: which sinks each source's packets and messages go to.

As in mediasoup, the Router owns the producer -> consumers map; a producer only iterates the
fan-out list the Router gives it, so producers and consumers never know each other's types.
"""

from __future__ import annotations

import logging

from .datatrack import DataConsumer, DataProducer

logger = logging.getLogger(__name__)


class Router:
    def __init__(self, room_sid: str) -> None:
        self.room_sid = room_sid
        self._data: dict[DataConsumer, DataProducer] = {}  # data sink -> its source

    def add_source(self, source: object) -> None:
        """(Nothing to do until a sink is added.)"""

    def remove_source(self, source: object) -> None:
        for sink in [s for s, p in self._data.items() if p is source]:
            del self._data[sink]

    def add_data_consumer(self, source: DataProducer, sink: DataConsumer) -> None:
        self._data[sink] = source
        source.add_consumer(sink)

    def remove_data_consumer(self, sink: DataConsumer) -> None:
        source = self._data.pop(sink, None)
        if source is not None:
            source.remove_consumer(sink)
        sink.close()

    def close(self) -> None:
        for sink in list(self._data):
            self.remove_data_consumer(sink)
