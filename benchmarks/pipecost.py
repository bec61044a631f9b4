"""What the worker-to-worker pipe (sfu.media.pipe) costs per packet, in CPU time.

    python -m benchmarks.pipecost [--packets N]

Both ends run in this process over a real socketpair (the kernel's send and receive are
counted); CPU time (``time.process_time``) is measured, not wall time, so other work on the
machine inflates it less than throughput. Reports the origin's cost (encode + send) and the
cost of a packet across the pipe and into the far worker's producer, beside a producer's own
``on_rtp``: what a room spread over two workers pays per packet and far worker, compared with
what each subscriber copy costs (RESULTS.md, fanout: µs per output packet).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from aiortc.rtp import RtpPacket

from sfu.media import rtp
from sfu.media.pipe import PipeTransport, pipe_pair
from sfu.media.producer import Producer
from sfu.media.router import Router
from sfu.media.source import CodecInfo

logger = logging.getLogger("benchmarks.pipecost")
VP8 = CodecInfo(97, "video/VP8", 90000, ("video/vp8",))


def _packet(seq: int, size: int = 1100) -> bytes:
    p = RtpPacket(payload_type=97, sequence_number=seq & 0xFFFF, timestamp=(seq * 3000) & 0xFFFFFFFF)
    p.ssrc = 1111
    p.payload = b"\x10\x01" + bytes(size)
    return p.serialize()


def _producer(sid: str) -> Producer:
    producer = Producer(sid, "video", lambda ssrc: None, lambda ssrc, lost: None)
    producer.configure([VP8], {}, 0, 1, True)
    producer.set_ssrcs(1111, None)
    return producer


async def measure(count: int) -> dict[str, float]:
    a, b = pipe_pair()
    origin_end, far_end = PipeTransport(a), PipeTransport(b)
    origin_end.start()
    far_end.start()
    producer = _producer("MT1")
    member = origin_end.send_track(producer, Router())
    assert member is not None
    packets = [_packet(i) for i in range(count)]
    parsed = [rtp.parse(d)[0] for d in packets[:2000]]
    loop = asyncio.get_running_loop()
    while "MT1" not in far_end.producers:  # the track's OPEN
        await asyncio.sleep(0.01)
    far = far_end.producers["MT1"]
    loop.remove_reader(b.fileno())  # the origin's side alone: drained by hand below

    def drain() -> None:
        while True:
            try:
                b.recv(65536)
            except BlockingIOError:
                return

    rounds = max(1, count // len(parsed))
    t0 = time.process_time()
    for _ in range(rounds):
        for packet in parsed:
            member.forward(packet, b"")
        drain()
    origin = (time.process_time() - t0) / (rounds * len(parsed))
    t0 = time.process_time()
    for _ in range(rounds):
        for _packet_ in parsed:
            a.send(b"\x02\x00\x01" + bytes(1112))
        drain()
    bare = (time.process_time() - t0) / (rounds * len(parsed))

    loop.add_reader(b.fileno(), far_end._readable)
    base = far.stats.packets
    t0 = time.process_time()
    for i, data in enumerate(packets):
        producer.on_rtp(data)
        if i % 200 == 199:
            await asyncio.sleep(0)  # the far end reads
    while far.stats.packets - base < count * 0.99:
        await asyncio.sleep(0)
    both = (time.process_time() - t0) / count
    alone = _producer("MT2")
    t0 = time.process_time()
    for data in packets:
        alone.on_rtp(data)
    on_rtp = (time.process_time() - t0) / count
    dropped = origin_end.counters.dropped
    origin_end.close()
    far_end.close()
    return {"origin_us": origin * 1e6, "bare_send_recv_us": bare * 1e6, "through_pipe_us": both * 1e6,
            "producer_on_rtp_us": on_rtp * 1e6, "pipe_us": (both - 2 * on_rtp) * 1e6, "dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipecost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=60000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import uvloop

    r = uvloop.run(measure(args.packets))
    logger.info("origin: encode + send (with a bare receive to drain): %.2f µs per packet (a bare send + receive: %.2f)",
                r["origin_us"], r["bare_send_recv_us"])
    logger.info("publisher's producer + pipe + far producer: %.2f µs per packet; one producer's on_rtp: %.2f",
                r["through_pipe_us"], r["producer_on_rtp_us"])
    logger.info("the pipe adds %.2f µs per packet and far worker, both ends together (%d dropped)", r["pipe_us"], r["dropped"])


if __name__ == "__main__":
    main()
