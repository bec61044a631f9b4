"""One UDP socket for the media of every peer connection of the server (like LiveKit's
``udp_port`` and mediasoup's WebRtcServer).

Each ICE connection registers its local username fragment and password. Datagrams are
demultiplexed by their first byte (RFC 7983):

* STUN (0..3): a binding request goes to the connection named by the local ufrag of its
  USERNAME (the part before ``:``), and only if its MESSAGE-INTEGRITY verifies with that
  connection's password; such an authenticated request is also the only thing that teaches
  the mux that its source address belongs to the connection (NAT rebinding, a new pair). A
  response goes to the connection that sent the request (by transaction id), else to the
  owner of its source address.
* DTLS (20..63) and SRTP/SRTCP (128..191): by source address, learned addresses only.

Everything else, and anything from an unknown source, is dropped and counted. Tables are
bounded per connection (addresses, outstanding transactions), and nothing is remembered
for a datagram that did not authenticate, so garbage and floods cost no memory.

Sends made while the mux hands one received batch to the connections (the SFU forwards
synchronously inside the datagram handler) are queued and leave in one ``udpio.send_many``
(``sendmmsg``) after the batch, or as soon as ``FLUSH_AT`` are waiting; sends made anywhere else go out at once. What the kernel's
send buffer cannot take (a keyframe burst to many subscribers) waits in a bounded backlog,
in order, until the socket is writable again, as asyncio's own datagram transports do; past
``MAX_BACKLOG`` datagrams, new ones are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import string
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from aioice import stun

from . import udpio

logger = logging.getLogger(__name__)

Address = tuple[str, int]
# A datagram to send: (data, address), or (plain RTP, address, libsrtp session, its owner)
# that udpio.send_srtp protects on the way out (see UdpMux.send_rtp).
Outgoing = tuple[Any, ...]

BATCH = 64  # datagrams read per recv_many (one recvmmsg)
SATURATION_SMOOTHING = 0.25  # weight of one read in UdpMux.saturation (a saturated loop reads rarely)
SOCKET_BUFFER = 4 << 20  # requested SO_RCVBUF / SO_SNDBUF (the kernel may cap it)
MAX_ADDRESSES = 8  # learned remote addresses per connection (oldest out)
MAX_TRANSACTIONS = 64  # outstanding STUN requests remembered per connection (oldest out)
MAX_BACKLOG = 8192  # datagrams waiting for room in the socket's send buffer
# Sends queued while a received batch is handled leave once this many are waiting (or at the
# batch's end): one input packet's fan-out still leaves in one sendmmsg, and the first copies
# of a batch never wait for the whole batch's fan-out (64 inputs x 200 subscribers).
FLUSH_AT = 256
UFRAG_LENGTH = 8
_UFRAG_CHARS = string.ascii_letters + string.digits


class Endpoint(Protocol):
    """Where the mux delivers a connection's datagrams (an asyncio datagram protocol will do)."""

    def datagram_received(self, data: bytes, addr: Address) -> None: ...


@dataclass
class MuxStats:
    received: int = 0
    sent: int = 0
    send_dropped: int = 0  # backlog full, or an error for that destination
    unknown_source: int = 0  # DTLS/RTP/STUN response from an address no connection owns
    unknown_ufrag: int = 0  # binding request for no registered connection
    unauthenticated: int = 0  # binding request whose MESSAGE-INTEGRITY did not verify
    malformed: int = 0  # neither STUN, DTLS nor RTP, or STUN that does not parse
    handler_errors: int = 0


class Registration:
    """One ICE connection's place on the mux: its credentials, learned addresses and the
    transactions it has outstanding. ``endpoint`` may be replaced at any time."""

    __slots__ = ("mux", "ufrag", "key", "endpoint", "addresses", "transactions", "closed")

    def __init__(self, mux: UdpMux, ufrag: str, password: str, endpoint: Endpoint) -> None:
        self.mux = mux
        self.ufrag = ufrag
        self.key = password.encode("utf8")
        self.endpoint = endpoint
        self.addresses: dict[Address, None] = {}  # insertion order: oldest first
        self.transactions: dict[bytes, None] = {}
        self.closed = False

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send from the mux's socket; a STUN request's transaction is remembered so that its
        response comes back here."""
        if self.closed:
            return
        if len(data) >= 20 and data[0] < 4 and not data[0] & 0x01 and not data[1] & 0x10:
            self.mux._expect_response(self, data[8:20])  # class bits 00: a request
        self.mux.sendto(data, addr)

    def close(self) -> None:
        self.mux._unregister(self)


def _remember(index: dict[Any, Registration], own: dict[Any, None], key: Any, registration: Registration, limit: int) -> None:
    """Route ``key`` to ``registration`` in the mux's ``index`` and in the connection's own
    bounded, oldest-first table ``own``; past ``limit`` the oldest is forgotten in both."""
    index[key] = registration
    own[key] = None
    if len(own) > limit:
        oldest = next(iter(own))
        del own[oldest]
        if index.get(oldest) is registration:
            del index[oldest]


class UdpMux:
    """The server's one media socket. Create it in a running event loop; ``close`` it."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        for option, limit in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
                granted = sock.getsockopt(socket.SOL_SOCKET, option)
            except OSError:  # best effort
                continue
            if granted < SOCKET_BUFFER:  # (Linux reports twice what it was asked, up to the cap)
                logger.info("UDP mux: %d-byte socket buffer (raise net.core.%s for more)", granted, limit)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.sockname: Address = sock.getsockname()[:2]
        self.family = sock.family
        self.stats = MuxStats()
        # Smoothed share of reads that found a whole batch waiting (more than one read's
        # worth queued in the kernel): 0 when the input is drained, near 1 when it piles up.
        # The overload guard's evidence that the loop is saturated, not merely bursty.
        self.saturation = 0.0
        self._by_ufrag: dict[str, Registration] = {}
        self._by_address: dict[Address, Registration] = {}
        self._by_transaction: dict[bytes, Registration] = {}
        self._queue: list[Outgoing] | None = None  # while a received batch is handled
        self._backlog: deque[Outgoing] = deque()  # waiting for the socket to be writable
        self._writing = False  # a writer callback is registered for the backlog
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    def bind(cls, port: int, host: str = "0.0.0.0") -> UdpMux:
        """A mux on a new UDP socket bound to ``host``:``port`` (0: a port the OS chooses)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
            return cls(sock)
        except BaseException:
            sock.close()
            raise

    @property
    def port(self) -> int:
        return self.sockname[1]

    @property
    def connections(self) -> int:
        return len(self._by_ufrag)

    @property
    def backlog(self) -> int:
        """Datagrams waiting for room in the socket's send buffer."""
        return len(self._backlog)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        self.stats.send_dropped += len(self._backlog)
        self._backlog.clear()
        self._sock.close()
        for registration in self._by_ufrag.values():
            registration.closed = True
        self._by_ufrag.clear()
        self._by_address.clear()
        self._by_transaction.clear()

    # --- registrations -----------------------------------------------------------------

    def new_ufrag(self) -> str:
        """A local username fragment no registered connection uses."""
        while True:
            ufrag = "".join(secrets.choice(_UFRAG_CHARS) for _ in range(UFRAG_LENGTH))
            if ufrag not in self._by_ufrag:
                return ufrag

    def register(self, ufrag: str, password: str, endpoint: Endpoint) -> Registration:
        """Route the STUN checks for ``ufrag`` (authenticated with ``password``) to ``endpoint``."""
        if self._closed:
            raise ConnectionError("the UDP mux is closed")
        if ufrag in self._by_ufrag:
            raise ValueError(f"ICE ufrag {ufrag!r} is already registered")
        registration = Registration(self, ufrag, password, endpoint)
        self._by_ufrag[ufrag] = registration
        return registration

    def _unregister(self, registration: Registration) -> None:
        if registration.closed:
            return
        registration.closed = True
        if self._by_ufrag.get(registration.ufrag) is registration:
            del self._by_ufrag[registration.ufrag]
        for addr in registration.addresses:
            if self._by_address.get(addr) is registration:
                del self._by_address[addr]
        for transaction in registration.transactions:
            if self._by_transaction.get(transaction) is registration:
                del self._by_transaction[transaction]
        registration.addresses.clear()
        registration.transactions.clear()

    def _learn(self, registration: Registration, addr: Address) -> None:
        """``addr`` sent an authenticated check for ``registration``: route its datagrams there."""
        owner = self._by_address.get(addr)
        if owner is not None:
            owner.addresses.pop(addr, None)  # (refreshed below if it is the same connection)
        _remember(self._by_address, registration.addresses, addr, registration, MAX_ADDRESSES)

    def _expect_response(self, registration: Registration, transaction: bytes) -> None:
        if transaction in registration.transactions:
            return  # a retransmission
        _remember(self._by_transaction, registration.transactions, transaction, registration, MAX_TRANSACTIONS)

    def owner(self, addr: Address) -> str | None:
        """The ufrag of the connection ``addr`` was learned for (tests, diagnostics)."""
        registration = self._by_address.get(addr)
        return None if registration is None else registration.ufrag

    # --- sending -----------------------------------------------------------------------

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send now, or after the batch being handled (one ``sendmmsg`` for all its sends)."""
        queue = self._queue
        if queue is not None:
            queue.append((data, addr))
            return
        if self._closed:
            return
        if self._backlog:
            self._hold([(data, addr)])  # behind what is already waiting, in order
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._hold([(data, addr)])
        except (OSError, TypeError, ValueError) as exc:  # unreachable, refused by a filter, bad address
            self.stats.send_dropped += 1
            logger.debug("UDP mux: dropped a %d-byte datagram to %s: %r", len(data), addr, exc)
        else:
            self.stats.sent += 1

    def send_rtp(self, data: bytes, addr: Address, session: int, owner: object) -> None:
        """``sendto`` for plain RTP that ``udpio.send_srtp`` SRTP-protects right before the
        system call with libsrtp session ``session`` (an address; ``owner`` keeps it alive)."""
        queue = self._queue
        if queue is not None:
            queue.append((data, addr, session, owner))
        elif not self._closed:
            self._flush([(data, addr, session, owner)])

    def _flush(self, packets: list[Outgoing]) -> None:
        if self._closed:
            return
        if self._backlog:
            self._hold(packets)
            return
        sent, rest = udpio.send_srtp(self._sock, packets)
        self.stats.sent += sent
        if rest:  # the send buffer is full
            self._hold(rest)

    def _hold(self, packets: list[Outgoing]) -> None:
        backlog = self._backlog
        room = MAX_BACKLOG - len(backlog)
        if len(packets) > room:
            self.stats.send_dropped += len(packets) - room
            packets = packets[:room]
        backlog.extend(packets)
        if backlog and not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        backlog = self._backlog
        chunk = [backlog.popleft() for _ in range(min(1024, len(backlog)))]
        sent, rest = udpio.send_srtp(self._sock, chunk)
        self.stats.sent += sent
        if rest and len(rest) == len(chunk):  # writable, yet the first was refused: drop it rather than spin
            self.stats.send_dropped += 1
            rest = rest[1:]
        backlog.extendleft(reversed(rest))
        if not backlog:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())

    # --- receiving ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            batch = udpio.recv_many(self._sock, BATCH)
        except OSError as exc:
            logger.warning("UDP mux: receive failed: %r", exc)
            return
        if not batch:
            return
        self.stats.received += len(batch)
        self.saturation += SATURATION_SMOOTHING * ((len(batch) >= BATCH) - self.saturation)
        queue: list[Outgoing] = []
        self._queue = queue
        try:
            for data, addr in batch:
                try:
                    self._route(data, addr)
                except Exception:  # a connection's handler failed: never stop the others
                    self.stats.handler_errors += 1
                    logger.exception("UDP mux: handling a %d-byte datagram from %s failed", len(data), addr)
                if len(queue) >= FLUSH_AT:
                    self._flush(queue)
                    queue = []
                    self._queue = queue
        finally:
            self._queue = None
            if queue:
                self._flush(queue)

    def _route(self, data: bytes, addr: Address) -> None:
        if not data:
            self.stats.malformed += 1
            return
        first = data[0]
        if 127 < first < 192 or 19 < first < 64:  # SRTP/SRTCP, DTLS
            registration = self._by_address.get(addr)
            if registration is None:
                self.stats.unknown_source += 1
                return
            registration.endpoint.datagram_received(data, addr)
        elif first < 4:
            self._route_stun(data, addr)
        else:
            self.stats.malformed += 1

    def _route_stun(self, data: bytes, addr: Address) -> None:
        try:
            message = stun.parse_message(data)
        except Exception:  # ValueError mostly; struct/unicode errors from odd attributes too
            self.stats.malformed += 1
            return
        registration: Registration | None
        if message.message_class == stun.Class.REQUEST:
            username = message.attributes.get("USERNAME")
            if not isinstance(username, str):
                self.stats.unknown_ufrag += 1
                return
            registration = self._by_ufrag.get(username.split(":", 1)[0])
            if registration is None:
                self.stats.unknown_ufrag += 1
                return
            if not message.check_message_integrity(registration.key):
                self.stats.unauthenticated += 1
                return
            self._learn(registration, addr)
        else:
            registration = self._by_transaction.get(message.transaction_id) or self._by_address.get(addr)
            if registration is None:
                self.stats.unknown_source += 1
                return
        registration.endpoint.datagram_received(data, addr)
