"""sfu.media.udpio on real sockets: both the C extension (sendmmsg/recvmmsg) and the fallback."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sfu.media import udpio

from .conftest import DEADLINE


@dataclass(frozen=True)
class Impl:
    name: str
    send_many: Callable[..., int]
    recv_many: Callable[..., list[tuple[bytes, udpio.Address]]]


FALLBACK = Impl("fallback", udpio.fallback_send_many, udpio.fallback_recv_many)
IMPLS = [
    pytest.param(FALLBACK, id="fallback"),
    pytest.param(
        Impl("accelerated", udpio.send_many, udpio.recv_many) if udpio.ACCELERATED else FALLBACK,
        id="accelerated",
        marks=pytest.mark.skipif(not udpio.ACCELERATED, reason="C extension not built"),
    ),
]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Impl:
    return request.param


def udp_socket(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    made: list[socket.socket] = []

    def make(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
        made.append(udp_socket(host, family))
        return made[-1]

    yield make
    for sock in made:
        sock.close()


def read_exactly(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` datagrams with a plain recvfrom, waiting up to the deadline for each."""
    received: list[bytes] = []
    end = time.monotonic() + DEADLINE
    while len(received) < count:
        if not select.select([sock], [], [], max(0.0, end - time.monotonic()))[0]:
            raise AssertionError(f"timed out: {len(received)} of {count} datagrams arrived")
        received.append(sock.recvfrom(65536)[0])
    return received


def assert_nothing_more(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.recvfrom(65536)


def receive_all(impl: Impl, sock: socket.socket, count: int, max_count: int = 64) -> list[list[tuple[bytes, udpio.Address]]]:
    """Call ``impl.recv_many`` whenever ``sock`` is readable until ``count`` datagrams came; the batches."""
    batches: list[list[tuple[bytes, udpio.Address]]] = []
    end = time.monotonic() + DEADLINE
    while sum(map(len, batches)) < count:
        if not select.select([sock], [], [], max(0.0, end - time.monotonic()))[0]:
            raise AssertionError(f"timed out: {sum(map(len, batches))} of {count} datagrams arrived")
        batch = impl.recv_many(sock, max_count)
        if batch:
            batches.append(batch)
    return batches


def test_packets_to_one_destination_arrive_in_the_order_given(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    sender, receiver = sockets(), sockets()
    packets = [(i.to_bytes(2, "big") * 550, receiver.getsockname()) for i in range(60)]  # fits SO_RCVBUF
    assert impl.send_many(sender, packets) == 60
    assert read_exactly(receiver, 60) == [data for data, _ in packets]
    assert_nothing_more(receiver)


def test_each_of_200_destinations_gets_its_own_packet(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    sender = sockets()
    receivers = [sockets() for _ in range(200)]
    packets = [(f"for {i}".encode().ljust(1100, b"."), r.getsockname()) for i, r in enumerate(receivers)]
    assert impl.send_many(sender, packets) == 200
    for (data, _), receiver in zip(packets, receivers):
        assert read_exactly(receiver, 1) == [data]
        assert_nothing_more(receiver)


def test_an_empty_batch_sends_nothing(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    assert impl.send_many(sockets(), []) == 0


def test_a_bad_destination_is_skipped_and_the_others_still_get_theirs(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    sender, first, second = sockets(), sockets(), sockets()
    bad = [
        ("255.255.255.255", 9),  # EACCES: broadcast without SO_BROADCAST
        ("::1", first.getsockname()[1]),  # an IPv6 destination on an IPv4 socket
        ("127.0.0.1", 0),  # EINVAL: port 0
        ("not an address", 9),  # not an IP literal
    ]
    packets = [(b"a1", first.getsockname())]
    for i, address in enumerate(bad):
        packets += [(b"bad", address), (b"b%d" % i, second.getsockname())]
    packets += [(b"bad", bad[0]), (b"bad", bad[0]), (b"a2", first.getsockname())]
    assert impl.send_many(sender, packets) == 2 + len(bad)
    assert read_exactly(first, 2) == [b"a1", b"a2"]
    assert read_exactly(second, len(bad)) == [b"b%d" % i for i in range(len(bad))]
    assert_nothing_more(first)
    assert_nothing_more(second)


def test_a_closed_socket_raises_rather_than_skipping_every_packet(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    sender, receiver = udp_socket(), sockets()
    sender.close()
    with pytest.raises(OSError):
        impl.send_many(sender, [(b"x", receiver.getsockname())])
    with pytest.raises(OSError):
        impl.recv_many(sender)


def ipv6_loopback() -> bool:
    try:
        udp_socket("::1", socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_destinations_with_two_or_four_item_addresses(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    sender, receiver = sockets("::1", socket.AF_INET6), sockets("::1", socket.AF_INET6)
    full = receiver.getsockname()
    assert len(full) == 4
    assert impl.send_many(sender, [(b"two", full[:2]), (b"four", full)]) == 2
    assert read_exactly(receiver, 2) == [b"two", b"four"]
    sender.sendto(b"back", full)
    [[(data, address)]] = receive_all(impl, receiver, 1)
    assert (data, address) == (b"back", sender.getsockname()[:2])


def test_a_full_send_buffer_stops_the_batch_and_counts_only_what_left(impl: Impl) -> None:
    """In a private namespace whose loopback is rate-limited, a tiny SO_SNDBUF fills at once."""
    if not (shutil.which("unshare") and shutil.which("tc")):
        pytest.skip("needs unshare and tc (util-linux, iproute2)")
    script = f"""
import json, socket, sys
from sfu.media import udpio
send_many = udpio.{"fallback_send_many" if impl is FALLBACK else "send_many"}
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
receiver.settimeout({DEADLINE})
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum, a few KB
packets = [(i.to_bytes(4, "big") * 275, receiver.getsockname()) for i in range(100)]
sent = send_many(sender, packets)
again = send_many(sender, packets)  # the buffer is still full: little or nothing leaves, nothing raises
got = [receiver.recv(2048) for _ in range(sent + again)]
marker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
marker.sendto(b"marker", receiver.getsockname())  # the qdisc is FIFO: next after the last one sent
expected = [d for d, _ in packets[:sent] + packets[:again]]
print(json.dumps({{"sent": sent, "again": again, "as_counted": got == expected, "next": receiver.recv(2048).decode()}}))
"""
    setup = "ip link set lo up && tc qdisc add dev lo root tbf rate 200kbit burst 1600 latency 30s"
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", f'{setup} && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=DEADLINE * 2, cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert 1 <= outcome["sent"] < 100, outcome
    assert outcome["again"] < 100 - outcome["sent"], outcome
    assert outcome["as_counted"] and outcome["next"] == "marker", outcome


def test_recv_many_returns_an_empty_list_when_nothing_is_queued(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    assert impl.recv_many(sockets()) == []


def test_recv_many_reads_at_most_max_count_in_arrival_order(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    sender, receiver = sockets(), sockets()
    for i in range(10):
        sender.sendto(b"%d" % i, receiver.getsockname())
    batches = receive_all(impl, receiver, 10, max_count=3)
    assert all(1 <= len(batch) <= 3 for batch in batches)
    assert max(map(len, batches)) == 3  # the limit was reached, not merely never exceeded
    assert [item for batch in batches for item in batch] == [(b"%d" % i, sender.getsockname()) for i in range(10)]
    assert impl.recv_many(receiver, 3) == []


def test_recv_many_reports_each_sender(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    receiver = sockets()
    senders = [sockets() for _ in range(5)]
    for i, sender in enumerate(senders):
        sender.sendto(b"from %d" % i, receiver.getsockname())
    received = [item for batch in receive_all(impl, receiver, 5) for item in batch]
    assert received == [(b"from %d" % i, s.getsockname()) for i, s in enumerate(senders)]
    assert all(type(address) is tuple and type(address[0]) is str and type(address[1]) is int for _, address in received)


def test_a_datagram_longer_than_max_is_dropped_not_cut_short(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    sender, receiver = sockets(), sockets()
    whole = b"w" * udpio.MAX_DATAGRAM
    sender.sendto(b"x" * (udpio.MAX_DATAGRAM + 1), receiver.getsockname())
    sender.sendto(whole, receiver.getsockname())
    sender.sendto(b"y" * 60000, receiver.getsockname())
    sender.sendto(b"last", receiver.getsockname())
    received = [data for batch in receive_all(impl, receiver, 2) for data, _ in batch]
    assert received == [whole, b"last"]
