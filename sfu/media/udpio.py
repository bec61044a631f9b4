"""Batched UDP system calls for the media socket: many datagrams per ``sendmmsg``/``recvmmsg``.

The fan-out sends one input packet's copies to every subscriber; one system call per copy
was most of the server's profile. ``send_many`` and ``recv_many`` hand a whole batch to the
kernel at once when the C extension ``sfu.media._udpio`` is built (``ACCELERATED``), and
fall back to a plain ``sendto``/``recvfrom`` loop with the same behaviour when it is not.

``send_srtp`` is ``send_many`` for the fan-out: an item may carry plain RTP and the libsrtp
session of its subscriber, and the extension SRTP-protects it into its own buffer right before
``sendmmsg`` (no Python object per protected copy).

Both work on non-blocking semantics whatever the socket's mode (``MSG_DONTWAIT``): a full
send buffer drops the rest of the batch, as a full UDP buffer drops; an empty receive queue
returns ``[]``. Addresses are IP literals; IPv6 tuples may carry flowinfo and scope id, of
which only (host, port) are used. Received addresses are always (host, port).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

Address = tuple[str, int]

MAX_DATAGRAM = 2048
"""Largest datagram ``recv_many`` delivers; a longer one is dropped, never cut short."""

_STOP_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
# Errors about the socket itself, not one packet: raised, never skipped.
_SOCKET_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def fallback_send_many(sock: socket.socket, packets: Sequence[tuple[bytes, Address]]) -> int:
    """Send every (data, address); return how many were sent.

    Stops at EAGAIN/ENOBUFS (the rest are dropped, as a full UDP buffer drops). A per-packet
    error (EPERM, EINVAL, an address that is not an IP literal...) skips that packet only.
    This pure-Python version makes one ``sendto`` per packet.
    """
    return fallback_send_srtp(sock, packets)[0]


def fallback_send_srtp(sock: socket.socket, packets: Sequence[tuple[Any, ...]]) -> tuple[int, list[tuple[Any, ...]]]:
    """``send_srtp`` without the extension: items must be ready to send (no SRTP session).

    Returns (sent, rest): ``rest`` is what a full send buffer left unsent, in order.
    """
    sent = 0
    sendto = sock.sendto
    for index, item in enumerate(packets):
        if len(item) == 4 and item[2]:
            raise TypeError("SRTP protection in send_srtp needs the C extension (udpio.ACCELERATED)")
        try:
            sendto(item[0], socket.MSG_DONTWAIT, item[1])
        except OSError as exc:
            if exc.errno in _STOP_ERRNOS:
                return sent, list(packets[index:])
            if exc.errno in _SOCKET_ERRNOS:
                raise
            continue
        sent += 1
    return sent, []


def fallback_recv_many(sock: socket.socket, max_count: int = 64) -> list[tuple[bytes, Address]]:
    """Read up to ``max_count`` datagrams already queued; ``[]`` if none.

    This pure-Python version makes one ``recvfrom`` per datagram.
    """
    received: list[tuple[bytes, Address]] = []
    recvfrom = sock.recvfrom
    while len(received) < max_count:
        try:
            data, address = recvfrom(MAX_DATAGRAM + 1, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno in _SOCKET_ERRNOS:
                raise
            continue  # a queued error (e.g. ICMP port unreachable) is reported once; read on
        if len(data) > MAX_DATAGRAM:
            continue  # truncated: never deliver part of a datagram as if it were whole
        received.append((data, address[:2]) if len(address) > 2 else (data, address))
    return received


try:
    from sfu.media import _udpio  # type: ignore[attr-defined]
except ImportError:  # built by `pip install -e .` when a C compiler is present
    _udpio = None

ACCELERATED: bool = _udpio is not None

if _udpio is not None:
    recv_many = _udpio.recv_many
    send_srtp = _udpio.send_srtp

    def send_many(sock: socket.socket, packets: Sequence[tuple[bytes, Address]]) -> int:
        """Send every (data, address) with ``sendmmsg``; return how many were sent (see
        ``fallback_send_many`` for the rules)."""
        return int(_udpio.send_srtp(sock, packets)[0])
else:
    send_many = fallback_send_many
    recv_many = fallback_recv_many
    send_srtp = fallback_send_srtp


def use_srtp_protect(address: int) -> bool:
    """Give ``send_srtp`` libsrtp's ``srtp_protect`` (its address); False without the extension."""
    if _udpio is None:
        return False
    _udpio.set_srtp_protect(address)
    return True
