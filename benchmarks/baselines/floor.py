"""The floor: what delivering a fan-out costs with no SFU logic at all (the ``floor`` target).

It answers "how far is our SFU from the cost of just handing the same datagrams to the
kernel?" (issue 9). One process, one non-blocking UDP socket, a plain ``poll`` loop (no
asyncio): each RTP datagram from a publisher is sent, byte for byte, to every subscriber
socket of its room with one :func:`sfu.media.udpio.send_many` per input packet.

Included, per input packet (costs every target pays in some form):
  - receiving it (``udpio.recv_many``, up to 64 datagrams per call);
  - one ``send_many`` of all its copies: ``sendmmsg`` when udpio's C extension is loaded,
    otherwise udpio's pure-Python fallback (one ``sendto`` per copy);
  - the Python loop around those two, and building the list of (packet, address) pairs.
Excluded (everything a real SFU adds): ICE checks and consent, DTLS, SRTP unprotect and
  protect, RTP parsing, sequence number / timestamp / SSRC rewriting, RTCP (reports, NACK,
  retransmission, congestion control), keyframe-request throttling, signaling, the room model.

The load peers (``clients.FloorClient``) talk to it over plain UDP on the namespace's test
interface, as the other targets' peers do over ICE. The publisher sends the same clip at the
same rate as to the other targets (``media.PacketSource``: Opus 20 ms + VP8 ~1.5 Mbit/s, with
a MID header extension) in plain RTP, each packet followed by 16 bytes standing in for the SRTP
authentication tag (AES-GCM, as aiortc negotiates), so the copies have the sizes of SRTP
packets. Subscribers count and time what arrives exactly as for the other targets.

Socket buffers are the kernel's defaults, as for the other targets. A full send buffer drops
the rest of a batch (udpio's contract); the drops are counted and logged at exit, and show
up as loss at the subscribers.

Control datagrams (ASCII, first byte below 0x80, so never RTP), each answered from the socket:
  ``PING`` -> ``PONG``;
  ``PUB <room> <identity>`` -> ``OK``: this address publishes in <room>;
  ``SUB <room> <identity>`` -> ``OK``: this address gets every publisher of <room> but
  <identity>'s own, and the room's publishers are sent ``KEY`` (a keyframe request, as an
  SFU sends one when a subscriber starts);
  ``KEY <room>``: passed on to the room's publishers (a subscriber still without a keyframe).

    python -m benchmarks.baselines.floor --host 10.213.0.1 --port 9000
"""

from __future__ import annotations

import argparse
import logging
import select
import signal
import socket
import sys
from dataclasses import dataclass, field

from sfu.media import udpio

logger = logging.getLogger("floor")

Address = tuple[str, int]
BATCH = 64


@dataclass
class Room:
    publishers: dict[Address, str] = field(default_factory=dict)  # address -> identity
    subscribers: dict[Address, str] = field(default_factory=dict)


class Floor:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rooms: dict[str, Room] = {}
        self.routes: dict[Address, list[Address]] = {}  # publisher address -> subscriber addresses
        self.packets_in = 0
        self.copies = 0
        self.dropped = 0

    def _route(self, room: Room) -> None:
        for address, identity in room.publishers.items():
            self.routes[address] = [a for a, who in room.subscribers.items() if who != identity]

    def _ask_keyframe(self, room: Room) -> None:
        for address in room.publishers:
            self.sock.sendto(b"KEY", address)

    def control(self, data: bytes, address: Address) -> None:
        words = data.decode(errors="replace").split()
        if not words:
            return
        if words[0] == "PING":
            self.sock.sendto(b"PONG", address)
        elif words[0] in ("PUB", "SUB") and len(words) == 3:
            room = self.rooms.setdefault(words[1], Room())
            (room.publishers if words[0] == "PUB" else room.subscribers)[address] = words[2]
            self._route(room)
            self.sock.sendto(b"OK", address)
            if words[0] == "SUB":
                self._ask_keyframe(room)
        elif words[0] == "KEY" and len(words) == 2 and words[1] in self.rooms:
            self._ask_keyframe(self.rooms[words[1]])

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        routes, sock = self.routes, self.sock
        while True:
            poller.poll()
            while batch := udpio.recv_many(sock, BATCH):
                for data, address in batch:
                    targets = routes.get(address)
                    if targets is not None and data and data[0] >= 0x80:
                        sent = udpio.send_many(sock, [(data, a) for a in targets])
                        self.packets_in += 1
                        self.copies += sent
                        self.dropped += len(targets) - sent
                    elif data and data[0] < 0x80:
                        self.control(data, address)

    def stats(self) -> str:
        return (f"{self.packets_in} packets in, {self.copies} copies sent, {self.dropped} dropped "
                f"(udpio {'accelerated' if udpio.ACCELERATED else 'fallback'})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Floor target: fan-out with one udpio.send_many per input packet, no SFU logic")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    sock.setblocking(False)
    floor = Floor(sock)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logger.info("floor on %s:%d, udpio %s", args.host, args.port, "accelerated" if udpio.ACCELERATED else "fallback")
    try:
        floor.serve()
    except KeyboardInterrupt:
        pass
    finally:
        logger.info("%s", floor.stats())


if __name__ == "__main__":
    main()
