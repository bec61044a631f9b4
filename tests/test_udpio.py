"""sfu.media.udpio on real sockets: both the C extension (sendmmsg/recvmmsg) and the fallback."""

from __future__ import annotations

import json
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
from typing import Any

import pylibsrtp
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


def test_a_batch_longer_than_one_system_call_keeps_each_destinations_order(impl: Impl, sockets: Callable[..., socket.socket]) -> None:
    """2,500 packets span three sendmmsg calls (1,024 each); refused ones sit at the seams."""
    sender = sockets()
    receivers = [sockets() for _ in range(20)]
    refused = {0, 1023, 1024, 2047, 2048, 2499}
    packets = [
        (b"bad", ("255.255.255.255", 9)) if i in refused else (b"%d" % i, receivers[i % 20].getsockname())
        for i in range(2500)
    ]
    assert impl.send_many(sender, packets) == 2500 - len(refused)
    for r, receiver in enumerate(receivers):
        expected = [b"%d" % i for i in range(r, 2500, 20) if i not in refused]
        assert read_exactly(receiver, len(expected)) == expected
        assert_nothing_more(receiver)


@pytest.mark.parametrize(
    ("packet", "error"),
    [
        ((b"x", "127.0.0.1"), TypeError),  # the address is not a tuple
        (("text", ("127.0.0.1", 9)), TypeError),  # str data
        ((b"x", ("127.0.0.1", "9")), TypeError),  # str port
        ((b"x", ("127.0.0.1", 70000)), OverflowError),
    ],
    ids=["address-not-tuple", "str-data", "str-port", "port-out-of-range"],
)
def test_a_malformed_packet_is_a_programming_error_and_raises(
    impl: Impl, sockets: Callable[..., socket.socket], packet: tuple[object, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        impl.send_many(sockets(), [packet])


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


def run_rate_limited(script: str, rate: str) -> Any:
    """Run ``script`` in a private network namespace whose loopback sends at ``rate``, so a
    tiny SO_SNDBUF fills at once; return the JSON it prints."""
    setup = f"ip link set lo up && tc qdisc add dev lo root tbf rate {rate} burst 1600 latency 30s"
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", f'{setup} && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=DEADLINE * 2, cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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
    outcome = run_rate_limited(script, "200kbit")
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


def test_the_c_extension_is_built_wherever_a_compiler_is() -> None:
    """`pip install -e .` builds sfu.media._udpio when it can; a silent fallback must not pass CI."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not (shutil.which(compiler) and headers.exists()):
        pytest.skip(f"no C compiler ({compiler}) or Python headers: the fallback is expected here")
    assert udpio.ACCELERATED, "pip install -e . built no sfu.media._udpio (see pip install -v output)"
    assert udpio.send_many is not udpio.fallback_send_many and udpio.recv_many is not udpio.fallback_recv_many


@pytest.mark.skipif(not udpio.ACCELERATED, reason="C extension not built")
def test_the_extension_and_the_fallback_agree_on_the_longest_datagram() -> None:
    from sfu.media import _udpio  # type: ignore[attr-defined]

    assert _udpio.MAX_DATAGRAM == udpio.MAX_DATAGRAM


# --- send_srtp: SRTP protection in the same call as sendmmsg (the fan-out's path) --------------

KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80 master key and salt


def srtp_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    sessions = []
    for kind in (pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND):
        sessions.append(pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=kind, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)))
    return sessions[0], sessions[1]


def rtp(seq: int, size: int = 1100) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + (1000 + seq).to_bytes(4, "big") + (0x1234).to_bytes(4, "big") + bytes([seq & 0xFF]) * size


@pytest.mark.skipif(not udpio.ACCELERATED, reason="C extension not built")
def test_send_srtp_protects_plain_rtp_with_each_items_session(sockets: Callable[..., socket.socket]) -> None:
    """What the subscriber gets decrypts with its keys; items without a session go as they are."""
    from sfu.media.aiortc_hooks import _srtp_session_address

    sender, receiver = sockets(), sockets()
    outbound, inbound = srtp_pair()
    session = _srtp_session_address(outbound)
    assert session is not None
    plain = [rtp(seq) for seq in range(5)]
    items = [(p, receiver.getsockname(), session, outbound) for p in plain]
    items.insert(2, (b"\x01\x00as-is", receiver.getsockname()))  # e.g. a STUN message in the batch
    sent, rest = udpio.send_srtp(sender, items)
    assert (sent, rest) == (6, [])
    got = read_exactly(receiver, 6)
    assert got[2] == b"\x01\x00as-is"
    protected = got[:2] + got[3:]
    assert all(len(p) == len(q) + 10 for p, q in zip(protected, plain))  # the 80-bit tag
    assert [inbound.unprotect(p) for p in protected] == plain


@pytest.mark.skipif(not udpio.ACCELERATED, reason="C extension not built")
def test_send_srtp_drops_what_libsrtp_refuses_and_goes_on(sockets: Callable[..., socket.socket]) -> None:
    """A sequence number protected before (libsrtp's replay check on the sending side) and a
    packet too long for the buffer are dropped, not sent in the clear; the others go."""
    from sfu.media.aiortc_hooks import _srtp_session_address

    sender, receiver = sockets(), sockets()
    outbound, inbound = srtp_pair()
    session = _srtp_session_address(outbound)
    to = receiver.getsockname()
    items = [(rtp(1), to, session, outbound), (rtp(1), to, session, outbound), (rtp(2, 3000), to, session, outbound), (rtp(3), to, session, outbound)]
    sent, rest = udpio.send_srtp(sender, items)
    assert (sent, rest) == (2, [])
    assert [inbound.unprotect(p) for p in read_exactly(receiver, 2)] == [rtp(1), rtp(3)]
    assert_nothing_more(receiver)


def test_the_fallback_send_srtp_refuses_to_send_plain_rtp_in_the_clear(sockets: Callable[..., socket.socket]) -> None:
    sender, receiver = sockets(), sockets()
    with pytest.raises(TypeError):
        udpio.fallback_send_srtp(sender, [(rtp(1), receiver.getsockname(), 1234, object())])
    assert udpio.fallback_send_srtp(sender, [(b"\x80ok", receiver.getsockname(), 0, None), (b"\x80two", receiver.getsockname())]) == (2, [])
    assert read_exactly(receiver, 2) == [b"\x80ok", b"\x80two"]


@pytest.mark.parametrize("accelerated", [False, pytest.param(True, marks=pytest.mark.skipif(not udpio.ACCELERATED, reason="C extension not built"))])
def test_send_srtp_hands_back_what_a_full_send_buffer_left_protected_once(accelerated: bool) -> None:
    """In a rate-limited private namespace: what did not leave comes back in order, the
    protected copies as bytes (sent later as they are, never protected twice)."""
    if not (shutil.which("unshare") and shutil.which("tc")):
        pytest.skip("needs unshare and tc (util-linux, iproute2)")
    script = f"""
import json, socket
from sfu.media import udpio
from sfu.media.aiortc_hooks import _srtp_session_address
from tests.test_udpio import rtp, srtp_pair
outbound, inbound = srtp_pair()
session = _srtp_session_address(outbound) if {accelerated} else 0
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
receiver.settimeout({DEADLINE})
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
plain = [rtp(seq) for seq in range(60)]
items = [(p if session else outbound.protect(p), receiver.getsockname(), session, outbound) for p in plain]
sent, rest = (udpio.send_srtp if {accelerated} else udpio.fallback_send_srtp)(sender, items)
got = [receiver.recv(2048) for _ in range(sent)]
while rest:  # as the mux's backlog does once the socket is writable
    more, rest = udpio.send_srtp(sender, rest) if {accelerated} else udpio.fallback_send_srtp(sender, rest)
    got += [receiver.recv(2048) for _ in range(more)]
print(json.dumps({{"first": sent, "all": [inbound.unprotect(p) == q for p, q in zip(got, plain)].count(True)}}))
"""
    outcome = run_rate_limited(script, "2mbit")
    assert 1 <= outcome["first"] < 60, outcome
    assert outcome["all"] == 60, outcome
