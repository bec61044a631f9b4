"""The pipe between two media workers: one published track, received once by another worker
(mediasoup's ``pipeToRouter``).

A room bigger than one core keeps its publishers on one worker and puts some subscribers on
another. For each published track the origin worker attaches a ``PipeConsumer`` to the
track's fan-out (the room's Router), like any subscriber: it writes every inbound packet ONCE into the pipe, with
the payload as the publisher sent it (no rewrite: the far worker's own consumers do that per
subscriber). On the far worker the pipe feeds a plain ``Producer``, so the consumers there
use what they use at home: its fan-out, its retransmission cache, its newest keyframe for a
fast start, its rate-limited keyframe requests. Keyframe requests (PLI) and NACKs of that
producer flow back over the same pipe to the origin, which answers a PLI by asking the
publisher and a NACK from its own retransmission cache.

The pipe is one connected pair of unix sockets that keep message boundaries
(``pipe_pair``: a datagram socketpair in one process; between two processes, a seqpacket
connection to an abstract address, ``listen_pipe`` / ``accept_pipe`` and ``connect_pipe``):
a message is one datagram, so framing is a 3-byte header, ``type, track number``, before the
packet. A simulcast track (``Producer.layers``) is piped as one stream per layer, each with a
number of its own (listed, with its RID, in the track's OPEN): each layer's packets cross once,
the far end is a layered Producer like the origin's (its layers measure their own sizes and
bitrates from the packets), and a PLI or NACK of a far layer comes back on that layer's number,
so the origin asks the right SSRC for a keyframe and answers from that layer's cache. A track
without simulcast is one stream, as before. No queue of our own anywhere: a send that would block is dropped and counted, so a
slow reader costs packets (the far producer NACKs them), never memory. Nothing is decoded.

Messages (track numbers are the origin's, announced by OPEN):

=======  =========  ======================================================================
type     direction  body
=======  =========  ======================================================================
OPEN     origin ->  JSON: track SID, kind, SSRC; for simulcast ``layers``: [{rid, ssrc, number}]
RTP      origin ->  the packet: RTP header (12 bytes, + audio level element) and payload;
                    payload types are the pipe's own (``pipe_codecs``), the same in every worker
SR       origin ->  the publisher's last sender report: NTP (8 bytes), RTP timestamp (4)
CLOSE    origin ->  (empty): the track (any of its layers' numbers) was unpublished
PLI      <- far     (empty): a keyframe, please
NACK     <- far     the lost sequence numbers, 2 bytes each
=======  =========  ======================================================================
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiortc import RTCRtpSender

from ..contracts import Kind
from . import rtp
from .codecs import codec_key
from .producer import Producer
from .rtp import InboundPacket
from .source import CodecInfo, FanOut

logger = logging.getLogger(__name__)

OPEN, RTP, SR, CLOSE, PLI, NACK = 1, 2, 3, 4, 5, 6
_HEAD = struct.Struct("!BH")
_SR = struct.Struct("!QI")
AUDIO_LEVEL_ID = 1  # the one-byte extension id the pipe carries the audio level in
_AUDIO_LEVEL_BLOCK = struct.pack("!HHB", rtp.ONE_BYTE_PROFILE, 1, AUDIO_LEVEL_ID << 4)  # + value + 2 pad bytes
SOCKET_BUFFER = 4 * 1024 * 1024  # bytes queued in the kernel at most, each way (capped by wmem_max)
READ_BATCH = 256  # datagrams read per wake-up
SR_INTERVAL = 1.0  # seconds between checks for a new sender report to pass on


@dataclass(slots=True)
class PipeCounters:
    sent: int = 0
    dropped: int = 0  # sends that would have blocked: the reader is behind
    received: int = 0
    retransmitted: int = 0  # packets resent from the origin's cache for a NACK
    plis: int = 0  # keyframe requests that came back from the far end


def pipe_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected ends in this process (each end may be handed to another process)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        _tune(s)
    return a, b


def listen_pipe(name: str) -> socket.socket:
    """The receiving worker's end between two processes: a seqpacket socket listening on the
    abstract unix address ``name`` (``accept_pipe`` takes the one connection). Seqpacket keeps
    datagram boundaries; connected, it is limited by its socket buffers only, not by the
    kernel's small queue for unconnected datagram senders (net.unix.max_dgram_qlen)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind("\0" + name)
    s.listen(1)
    s.setblocking(False)
    return s


async def accept_pipe(listener: socket.socket) -> socket.socket:
    conn, _ = await asyncio.get_running_loop().sock_accept(listener)
    listener.close()
    _tune(conn)
    return conn


async def connect_pipe(name: str, timeout: float = 10.0) -> socket.socket:
    """The origin worker's end: connects to ``name``, waiting for the other worker to listen
    (the two are told about the pipe in no particular order)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.setblocking(False)
        try:
            await loop.sock_connect(s, "\0" + name)
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        _tune(s)
        return s


def _tune(s: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass
    s.setblocking(False)


@functools.cache
def pipe_codecs(kind: str) -> tuple[CodecInfo, ...]:
    """The payload types inside every pipe: each codec this server can forward, numbered
    from 96 in aiortc's order of capabilities. The origin maps its publisher's types onto
    these, so the far producer knows its codecs before the track opens (a subscription
    there is offered with them at once)."""
    capabilities = [c for c in RTCRtpSender.getCapabilities(kind).codecs if not c.mimeType.lower().endswith("/rtx")]
    return tuple(CodecInfo(96 + i, c.mimeType, c.clockRate, codec_key(c.mimeType, dict(c.parameters)), dict(c.parameters))
                 for i, c in enumerate(capabilities))


def pipe_payload_types(codecs: dict[int, CodecInfo], kind: str) -> dict[int, int]:
    """A publisher's payload type -> the pipe's, for the codecs both have."""
    ours = {c.key: c.payload_type for c in pipe_codecs(kind)}
    return {pt: ours[c.key] for pt, c in codecs.items() if c.key in ours}


def encode(packet: InboundPacket, payload_type: int | None = None) -> bytes:
    """The packet as RTP again: its header fields (``payload_type`` in place of its own, if
    given), its audio level, its payload verbatim."""
    pt = packet.payload_type if payload_type is None else payload_type
    b0 = 0x80 | (0x20 if packet.padding else 0)
    level = packet.audio_level
    if level is not None:
        b0 |= 0x10
        ext = _AUDIO_LEVEL_BLOCK + level + b"\x00\x00"
    else:
        ext = b""
    return b"".join((rtp.pack_header(b0, (packet.marker << 7) | pt, packet.sequence_number, packet.timestamp, packet.ssrc),
                     ext, packet.payload))


class PipeConsumer:
    """The origin's end for one track: a member of the producer's fan-out that writes each
    packet once into the pipe, and answers the far end's PLIs and NACKs."""

    __slots__ = ("producer", "fan_out", "number", "transport", "_send", "_pts", "_attached")

    def __init__(self, producer: Producer, fan_out: FanOut, number: int, transport: "PipeTransport") -> None:
        self.producer = producer
        self.fan_out = fan_out
        self.number = number
        self.transport = transport
        self._send = transport._sender(RTP, number)
        self._pts = pipe_payload_types(producer.codecs, producer.kind)
        self._attached = False

    # the fan-out's side (what the Router calls on its members; it types them as Consumer)

    def forward(self, packet: InboundPacket, abs_send_time: bytes) -> None:
        pt = self._pts.get(packet.payload_type)
        if pt is not None:
            self._send(encode(packet, pt))

    deliver = forward  # what the Router's fan-out calls (a simulcast Consumer's switch-aware entry)

    def remb(self) -> None:
        """No bandwidth estimate: the far subscribers' REMBs stay on their worker, so they do
        not lower what the publisher is asked to send (as with a subscriber that sends none)."""
        return None

    def attach(self) -> None:
        if not self._attached:
            self._attached = True
            self.fan_out.attach(self)  # type: ignore[arg-type]
            self.fan_out.set_forwarding(self, True)  # type: ignore[arg-type]

    def detach(self) -> None:
        """Out of the fan-out (the track was unpublished, or the pipe closes): the far end's
        track ends too."""
        if self._attached:
            self._attached = False
            self.fan_out.detach(self)  # type: ignore[arg-type]
            self.transport._closed(self)

    # the far end's requests

    def on_pli(self) -> None:
        """The far end's requester already held back what it could, so this one is urgent
        here: not delayed by the origin's window, still coalesced with a PLI on its way."""
        self.transport.counters.plis += 1
        self.producer.request_keyframe(urgent=True)

    def on_nack(self, lost: list[int]) -> None:
        for seq in lost:
            packet = self.producer.cached(seq)
            pt = None if packet is None else self._pts.get(packet.payload_type)
            if packet is not None and pt is not None:
                self._send(encode(packet, pt))
                self.transport.counters.retransmitted += 1


class PipeTransport:
    """One end of a pipe between two workers; either end may send tracks and receive them.

    Origin: ``send_track(producer, fan_out)`` opens the track on the far end, starts it with the
    producer's newest keyframe when the cache has one, and forwards from then on.
    Far end: ``producers`` holds a ``Producer`` per track received (by track SID), which the
    worker's consumers subscribe to as to any other; ``on_open`` / ``on_close`` report them.
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        on_open: Callable[[Producer], None] | None = None,
        on_close: Callable[[Producer], None] | None = None,
        cache_size: int = 512,
    ) -> None:
        self._sock = sock
        self._waiting: list[tuple[Producer, FanOut]] = []  # send_track before the socket was attached
        self.on_open = on_open
        self.on_close = on_close
        self._cache_size = cache_size
        self.counters = PipeCounters()
        self._outgoing: dict[int, PipeConsumer] = {}  # by track number
        self._by_sid: dict[str, list[PipeConsumer]] = {}  # a member per layer (one without simulcast)
        self._incoming: dict[int, Producer] = {}  # by the origin's track number
        self._numbers: dict[Producer, int] = {}  # far producer (a layer for simulcast) -> the origin's number
        self.producers: dict[str, Producer] = {}  # track SID -> producer fed by the pipe (or expected)
        self._next_number = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sr_timer: asyncio.TimerHandle | None = None
        self._last_sr: dict[int, int] = {}
        self.closed = False

    def start(self) -> None:
        """Read and send (when the socket is already there; else ``attach`` starts it)."""
        if self._sock is not None:
            self.attach(self._sock)

    def attach(self, sock: socket.socket) -> None:
        """The connection is up: read it, and send the tracks asked for meanwhile."""
        if self.closed:
            sock.close()
            return
        self._sock = sock
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._sr_timer = self._loop.call_later(SR_INTERVAL, self._pass_sender_reports)
        waiting, self._waiting = self._waiting, []
        for producer, fan_out in waiting:
            if not producer.closed:
                self.send_track(producer, fan_out)

    @property
    def attached(self) -> bool:
        return self._loop is not None

    # --- sending ---------------------------------------------------------------------------

    def _sender(self, kind: int, number: int) -> Callable[[bytes], None]:
        head = _HEAD.pack(kind, number)
        counters = self.counters
        if self._sock is None or self.closed:
            return lambda body: None
        send = self._sock.send

        def write(body: bytes) -> None:
            try:
                send(head + body)
            except (BlockingIOError, InterruptedError):
                counters.dropped += 1  # the far end is behind: drop, never queue
                return
            except OSError as exc:  # the far end is gone
                counters.dropped += 1
                logger.debug("pipe: send failed: %s", exc)
                return
            counters.sent += 1

        return write

    def _control(self, kind: int, number: int, body: bytes = b"") -> None:
        self._sender(kind, number)(body)

    def send_track(self, producer: Producer, fan_out: FanOut) -> list[PipeConsumer] | None:
        """Forward ``producer`` (a member of ``fan_out``, its room's Router) to the far end,
        once whatever the number of subscribers there; before the connection is up, as soon
        as it is (None meanwhile). Returns the pipe's members: one per simulcast layer, each
        in its layer's fan-out (one without simulcast)."""
        existing = self._by_sid.get(producer.track_sid)
        if existing is not None:
            return existing
        if not self.attached:
            self._waiting.append((producer, fan_out))
            return None
        info: dict[str, Any] = {"sid": producer.track_sid, "kind": producer.kind, "ssrc": producer.ssrc}
        if producer.simulcast:
            streams = [(layer, self._new_number()) for layer in producer.layers]
            info["ssrc"] = None
            info["layers"] = [{"rid": layer.rid, "ssrc": layer.ssrc, "number": n} for layer, n in streams]
            number = self._new_number()  # (the track's own: its OPEN)
        else:
            number = self._new_number()
            streams = [(producer, number)]
        self._control(OPEN, number, json.dumps(info).encode())
        members = self._by_sid[producer.track_sid] = [PipeConsumer(layer, fan_out, n, self) for layer, n in streams]
        for member in members:
            self._outgoing[member.number] = member
            for packet in member.producer.recent_keyframe() or ():
                member.forward(packet, b"")  # the far end can start its first subscriber at once
            member.attach()
        return members

    def _new_number(self) -> int:
        number = self._next_number
        self._next_number += 1
        return number

    def stop_track(self, track_sid: str) -> None:
        for member in list(self._by_sid.get(track_sid, ())):
            member.detach()

    def _closed(self, member: PipeConsumer) -> None:
        self._outgoing.pop(member.number, None)
        members = [m for m in self._by_sid.get(member.producer.track_sid, ()) if m is not member]
        if members:
            self._by_sid[member.producer.track_sid] = members
        else:
            self._by_sid.pop(member.producer.track_sid, None)
        self._control(CLOSE, member.number)

    def _pass_sender_reports(self) -> None:
        """Each track's newest sender report, so the far consumers keep lip sync."""
        for number, member in list(self._outgoing.items()):
            stats = member.producer.stats
            if stats.sr_ntp is not None and self._last_sr.get(number) != stats.sr_ntp_full:
                self._last_sr[number] = stats.sr_ntp_full
                self._control(SR, number, _SR.pack(stats.sr_ntp_full, stats.sr_rtp))
        if self._loop is not None and not self.closed:
            self._sr_timer = self._loop.call_later(SR_INTERVAL, self._pass_sender_reports)

    # --- receiving -------------------------------------------------------------------------

    def _readable(self) -> None:
        if self._sock is None:
            return
        recv = self._sock.recv
        for _ in range(READ_BATCH):
            try:
                data = recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # (ECONNRESET: the other worker died with data unread)
                data = b""
                logger.debug("pipe: receive failed: %s", exc)
            if not data:  # the other worker closed its end, or exited
                logger.info("pipe: the other end closed")
                self.close()
                return
            if len(data) < 3:
                continue
            self.counters.received += 1
            kind, number = _HEAD.unpack_from(data)
            if kind == RTP:
                producer = self._incoming.get(number)
                if producer is not None:
                    producer.on_rtp(data[3:])
            else:
                self._on_control(kind, number, data[3:])

    def _on_control(self, kind: int, number: int, body: bytes) -> None:
        if kind == PLI:
            member = self._outgoing.get(number)
            if member is not None:
                member.on_pli()
        elif kind == NACK:
            member = self._outgoing.get(number)
            if member is not None:
                member.on_nack([int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body) - 1, 2)])
        elif kind == OPEN:
            self._open(number, json.loads(body))
        elif kind == SR:
            producer = self._incoming.get(number)
            if producer is not None and len(body) >= _SR.size:
                producer.on_sender_report(*_SR.unpack_from(body))
        elif kind == CLOSE:
            stream = self._incoming.pop(number, None)
            track = None if stream is None else stream.parent or stream
            if track is not None and self.producers.get(track.track_sid) is track:
                # (a simulcast track closes at its first layer's CLOSE: the others find nothing)
                del self.producers[track.track_sid]
                for layer in track.layers:
                    self._incoming.pop(self._numbers.pop(layer, -1), None)
                self._end(track)

    def expect(self, track_sid: str, kind: str, rids: list[str] | None = None) -> Producer:
        """The far end's producer for a track the origin is about to send: there at once, with
        the pipe's codecs (and its simulcast layers, ``rids`` low to high, when the origin's
        track has them), so a worker can subscribe its transports to it before the track opens
        (they start at its first keyframe, asked for when it opens)."""
        producer = self.producers.get(track_sid)
        if producer is None:
            producer = self.producers[track_sid] = self._far_producer(track_sid, kind)
            producer.configure(list(pipe_codecs(kind)), {}, AUDIO_LEVEL_ID, 0, nack_enabled=True)
        if rids and kind == "video" and [layer.rid for layer in producer.layers] != rids:
            if producer.layers[0].parent is not None or producer.stats.packets:
                # (consumers made on the old layers keep them: they get nothing until resubscribed)
                logger.warning("pipe: track %s changes layers %s -> %s", track_sid, [l.rid for l in producer.layers], rids)
            producer.set_layers(rids)
        return producer

    def _far_producer(self, sid: str, kind: str) -> Producer:
        def number_of(ssrc: int) -> int | None:
            """The origin's number of the stream (the layer) with ``ssrc``."""
            track = self.producers.get(sid)
            if track is None:
                return None
            layers = track.layers
            stream = layers[0] if len(layers) == 1 else next((layer for layer in layers if layer.ssrc == ssrc), None)
            return None if stream is None else self._numbers.get(stream)

        def send_pli(ssrc: int) -> None:
            number = number_of(ssrc)
            if number is not None:
                self._control(PLI, number)

        def send_nack(ssrc: int, lost: list[int]) -> None:
            number = number_of(ssrc)
            if number is not None:
                self._control(NACK, number, b"".join(seq.to_bytes(2, "big") for seq in lost))

        # The far producer's keyframe requester rate-limits and coalesces its subscribers'
        # requests as at home; each PLI it lets through goes to the origin. (A simulcast
        # track's layers share these callbacks, and call them with their own SSRC.)
        return Producer(sid, cast(Kind, kind), send_pli, send_nack, cache_size=self._cache_size)

    def _open(self, number: int, info: dict[str, Any]) -> None:
        sid, kind = str(info["sid"]), str(info["kind"])
        layers = info.get("layers") if isinstance(info.get("layers"), list) else None
        rids = [str(layer["rid"]) for layer in layers] if layers else None
        producer = self.expect(sid, kind, rids)
        if layers and [layer.rid for layer in producer.layers] == rids:
            streams = [(far, int(layer["number"]), layer.get("ssrc")) for far, layer in zip(producer.layers, layers)]
        else:
            streams = [(producer, number, info.get("ssrc"))]
        for stream, stream_number, ssrc in streams:
            stream.set_ssrcs(ssrc if isinstance(ssrc, int) else None, None)
            self._incoming[stream_number] = stream
            self._numbers[stream] = stream_number
        logger.debug("pipe: track %s (%s) opened as %d (layers: %s)", sid, kind, number, rids)
        if self.on_open is not None:
            self.on_open(producer)
        for stream, stream_number, _ in streams:
            if stream.keyframe_requests_sent or stream.keyframe_requests_coalesced:
                self._control(PLI, stream_number)  # asked for before it opened (no number to send it with)

    # --- lifecycle -------------------------------------------------------------------------

    def _end(self, producer: Producer) -> None:
        """A far track ended: ``on_close`` first (its owner takes it out of its Router, which
        detaches its consumers), then the producer closes."""
        if self.on_close is not None:
            self.on_close(producer)
        producer.close()

    def close(self) -> None:
        if self.closed:
            return
        for member in list(self._outgoing.values()):
            member.detach()
        self.closed = True
        for producer in list(self.producers.values()):
            self._end(producer)
        self._incoming.clear()
        self._numbers.clear()
        self.producers.clear()
        if self._sr_timer is not None:
            self._sr_timer.cancel()
        if self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        if self._sock is not None:
            self._sock.close()


class PipeHub:
    """A worker's pipes to the other workers, one per pair, by the other worker's index.

    The front tells the far worker to ``listen`` and the origin worker to ``connect`` on one
    name (``pipe_name``), in either order; either end may then send tracks over it.
    ``send`` (origin) pipes a local producer; ``expect`` (far end) is the producer the far
    worker's transports subscribe to.
    """

    def __init__(self, on_open: Callable[[int, Producer], None] | None = None,
                 on_close: Callable[[int, Producer], None] | None = None, cache_size: int = 512) -> None:
        self.pipes: dict[int, PipeTransport] = {}
        self._on_open = on_open
        self._on_close = on_close
        self._cache_size = cache_size
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def pipe_name(token: str, a: int, b: int) -> str:
        """The abstract address of the pipe between workers ``a`` and ``b`` (``token``: one
        per front process, so two servers on one machine never meet)."""
        return f"sfu-pipe-{token}-{min(a, b)}-{max(a, b)}"

    def pipe(self, peer: int, fresh: bool = False) -> PipeTransport:
        """The pipe to worker ``peer``; ``fresh``: a new one (that worker was replaced, or the
        front set the pair up anew), closing any earlier one."""
        pipe = self.pipes.get(peer)
        if fresh and pipe is not None:
            pipe.close()
        if pipe is None or pipe.closed:
            opened, closed = self._on_open, self._on_close
            pipe = self.pipes[peer] = PipeTransport(
                None,
                on_open=(lambda producer: opened(peer, producer)) if opened else None,
                on_close=(lambda producer: closed(peer, producer)) if closed else None,
                cache_size=self._cache_size,
            )
        return pipe

    def listen(self, peer: int, name: str) -> None:
        pipe = self.pipe(peer, fresh=True)
        listener = listen_pipe(name)

        async def accept() -> None:
            try:
                pipe.attach(await asyncio.wait_for(accept_pipe(listener), 30))
            except (OSError, asyncio.TimeoutError) as exc:
                logger.error("pipe to worker %d: no connection on %s: %s", peer, name, exc)
                listener.close()
                pipe.close()

        self._spawn(accept())

    def connect(self, peer: int, name: str) -> None:
        pipe = self.pipe(peer, fresh=True)

        async def connect() -> None:
            try:
                pipe.attach(await connect_pipe(name, 30))
            except OSError as exc:
                logger.error("pipe to worker %d: cannot connect to %s: %s", peer, name, exc)
                pipe.close()

        self._spawn(connect())

    def send(self, peer: int, producer: Producer, fan_out: FanOut) -> None:
        self.pipe(peer).send_track(producer, fan_out)

    def expect(self, peer: int, track_sid: str, kind: str, rids: list[str] | None = None) -> Producer:
        return self.pipe(peer).expect(track_sid, kind, rids)

    def counters(self) -> PipeCounters:
        total = PipeCounters()
        for pipe in self.pipes.values():
            for name in PipeCounters.__slots__:
                setattr(total, name, getattr(total, name) + getattr(pipe.counters, name))
        return total

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pipe in self.pipes.values():
            pipe.close()
        self.pipes.clear()
