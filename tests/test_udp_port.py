"""One UDP port: `sfu serve --udp-port P` carries every participant's media on one socket,
and the mux routes datagrams only where ICE authenticated them (sfu/media/udpmux.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aioice import stun

from sfu.credentials import load_or_create
from sfu.media import udpio, udpmux
from sfu.media.udpmux import UdpMux
from signaling.client import Room, connect
from signaling.tokens import mint_token

from .conftest import DEADLINE, wait_for
from .helpers.clients import VideoReader, media_tracks, read_audio, subscribed_media
from .test_signaling_cli import SFU, clean_env, free_port, wait_until_serving

# --- the server process: one UDP socket, on the port it was given -------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def udp_sockets(pid: int) -> list[tuple[str, int]]:
    """(local address in hex, port) of every UDP socket process ``pid`` holds open: its fds'
    socket inodes looked up in /proc/PID/net/udp and udp6 (the process's namespace's tables)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    found = []
    for table in ("udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)  # header
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    address, port = fields[1].rsplit(":", 1)
                    found.append((address, int(port, 16)))
    return found


@asynccontextmanager
async def sfu_serve(tmp_path: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`sfu serve ARGS` as its own process; yields it and its HTTP port."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(SFU), "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), *args,
        env=clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until_serving(port, process)
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def ice_connection(room: Room) -> Any:
    assert room.pc.sctp is not None
    return room.pc.sctp.transport.transport._connection


@pytest.mark.parametrize(
    ("options", "bound", "candidate"),
    [
        ((), "00000000", None),  # every interface; candidates carry the machine's addresses
        (("--udp-host", "10.213.0.1"), "0100D50A", "10.213.0.1"),  # the test interface only (little-endian hex)
    ],
    ids=["every-interface", "udp-host"],
)
async def test_a_call_uses_one_udp_socket_on_the_given_port(
    tmp_path: Path, netns: None, options: tuple[str, ...], bound: str, candidate: str | None
) -> None:
    udp_port = free_udp_port()
    async with sfu_serve(tmp_path, "--workers", "1", "--udp-port", str(udp_port), *options) as (process, port):
        assert udp_sockets(process.pid) == [(bound, udp_port)]  # bound at startup
        credentials = load_or_create(tmp_path / "data", environ={})[0]
        url = f"ws://127.0.0.1:{port}/signaling"
        rooms: list[Room] = []
        try:
            for identity in ("alice", "bob"):
                token = mint_token(credentials, identity, room="standup")
                rooms.append(await connect(url, token, name="standup", tracks=media_tracks("va")))
            alice, bob = rooms
            readers = [VideoReader(await subscribed_media(alice, "bob", "cam")), VideoReader(await subscribed_media(bob, "alice", "cam"))]
            try:
                for reader in readers:
                    await reader.advance(10)
                await read_audio(await subscribed_media(alice, "bob", "mic"), 10)
                await read_audio(await subscribed_media(bob, "alice", "mic"), 10)
            finally:
                for reader in readers:
                    await reader.close()
            for room in rooms:
                candidates = [line for line in room.pc.remoteDescription.sdp.splitlines() if line.startswith("a=candidate:")]
                assert candidates, "the offer carries no candidate"
                for line in candidates:
                    fields = line.split()
                    assert (fields[5], fields[7]) == (str(udp_port), "host"), line
                    assert candidate is None or fields[4] == candidate, line
                pair = ice_connection(room)._nominated.get(1)
                assert pair is not None and pair.remote_candidate.port == udp_port
            # Mid-call, with two participants publishing and subscribing: still the one socket.
            assert udp_sockets(process.pid) == [(bound, udp_port)]
        finally:
            for room in rooms:
                await room.disconnect()


async def test_a_udp_port_in_use_is_a_one_line_error(tmp_path: Path, netns: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", 0))
        udp_port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            str(SFU), "serve", "--port", str(free_port()), "--udp-port", str(udp_port), "--data-dir", str(tmp_path / "data"),
            env=clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert len(lines) >= 1 and f"UDP port {udp_port}" in lines[-1] and "in use" in lines[-1], lines
    assert "Traceback" not in stderr.decode()


# --- the mux's routing, with plain sockets on loopback ------------------------------------------

UFRAG, PASSWORD = "abcd", "p" * 22
LOCAL = "127.0.0.1"


class Recorder:
    """A connection's endpoint that keeps what the mux hands it."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append((data, addr))


@pytest.fixture
async def mux() -> AsyncIterator[UdpMux]:
    opened = UdpMux.bind(0, LOCAL)
    try:
        yield opened
    finally:
        opened.close()


@contextmanager
def client() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        s.settimeout(DEADLINE)
        yield s


def address(sock: socket.socket) -> tuple[str, int]:
    return sock.getsockname()[:2]


def check(username: str = f"{UFRAG}:them", password: str = PASSWORD) -> bytes:
    """A binding request as a remote ICE agent sends it."""
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1
    message.add_message_integrity(password.encode())
    message.add_fingerprint()
    return bytes(message)


DTLS = bytes([22, 254, 253]) + bytes(20)
RTP = bytes([0x80, 96]) + bytes(30)


async def settled(mux: UdpMux, count: int) -> None:
    """Wait until the mux has read ``count`` datagrams in all (each is then routed or dropped)."""
    await wait_for(lambda: mux.stats.received >= count, message=f"the mux read {count} datagrams")


async def test_a_check_for_an_unknown_ufrag_is_dropped(mux: UdpMux) -> None:
    recorder = Recorder()
    mux.register(UFRAG, PASSWORD, recorder)
    with client() as them:
        them.sendto(check("zzzz:them"), mux.sockname)
        await settled(mux, 1)
    assert mux.stats.unknown_ufrag == 1 and recorder.datagrams == []


async def test_only_the_right_password_teaches_the_mux_an_address(mux: UdpMux) -> None:
    recorder = Recorder()
    mux.register(UFRAG, PASSWORD, recorder)
    with client() as them:
        them.sendto(check(password="x" * 22), mux.sockname)
        them.sendto(DTLS, mux.sockname)
        await settled(mux, 2)
        assert mux.owner(address(them)) is None
        assert recorder.datagrams == []
        assert (mux.stats.unauthenticated, mux.stats.unknown_source) == (1, 1)

        request = check()
        them.sendto(request, mux.sockname)
        them.sendto(DTLS, mux.sockname)
        them.sendto(RTP, mux.sockname)
        await settled(mux, 5)
        assert mux.owner(address(them)) == UFRAG
        assert recorder.datagrams == [(request, address(them)), (DTLS, address(them)), (RTP, address(them))]


async def test_dtls_and_rtp_from_an_unlearned_address_are_dropped(mux: UdpMux) -> None:
    recorder = Recorder()
    mux.register(UFRAG, PASSWORD, recorder)
    with client() as known, client() as stranger:
        known.sendto(check(), mux.sockname)
        await settled(mux, 1)
        for data in (DTLS, RTP, bytes([0x81, 200]) + bytes(10)):  # (the last one RTCP)
            stranger.sendto(data, mux.sockname)
        await settled(mux, 4)
        assert [addr for _, addr in recorder.datagrams] == [address(known)]
    assert mux.stats.unknown_source == 3


async def test_a_new_address_is_followed_only_after_an_authenticated_check(mux: UdpMux) -> None:
    """NAT rebinding: the client's packets come from a new port. Media from there is dropped
    until a check from there authenticates; then both addresses are the connection's."""
    recorder = Recorder()
    registration = mux.register(UFRAG, PASSWORD, recorder)
    other = Recorder()
    mux.register("wxyz", PASSWORD, other)
    with client() as before, client() as after:
        before.sendto(check(), mux.sockname)
        after.sendto(RTP, mux.sockname)
        after.sendto(check(password="y" * 22), mux.sockname)
        after.sendto(RTP, mux.sockname)
        await settled(mux, 4)
        assert [addr for _, addr in recorder.datagrams] == [address(before)]
        after.sendto(check(), mux.sockname)
        after.sendto(RTP, mux.sockname)
        await settled(mux, 6)
        assert recorder.datagrams[-1] == (RTP, address(after))
        assert set(registration.addresses) == {address(before), address(after)}
        # An address another connection authenticates from is that connection's from then on.
        before.sendto(check("wxyz:them"), mux.sockname)
        before.sendto(RTP, mux.sockname)
        await settled(mux, 8)
        assert mux.owner(address(before)) == "wxyz" and other.datagrams[-1] == (RTP, address(before))
        assert set(registration.addresses) == {address(after)}


async def test_a_response_goes_to_the_connection_that_sent_the_request(mux: UdpMux) -> None:
    first, second = Recorder(), Recorder()
    registrations = [mux.register(UFRAG, PASSWORD, first), mux.register("wxyz", PASSWORD, second)]
    with client() as server:  # e.g. a STUN server both connections ask
        requests = []
        for registration in registrations:
            request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
            registration.sendto(bytes(request), address(server))
            requests.append(request)
        for request in reversed(requests):
            data, _ = server.recvfrom(2048)
            response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=data[8:20])
            response.attributes["XOR-MAPPED-ADDRESS"] = address(server)
            server.sendto(bytes(response), mux.sockname)
        stray = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)  # answers nothing anyone asked
        server.sendto(bytes(stray), mux.sockname)
        await settled(mux, 3)
    for recorder, request in zip((first, second), requests):
        assert [stun.parse_message(d).transaction_id for d, _ in recorder.datagrams] == [request.transaction_id]
    assert mux.stats.unknown_source == 1


GARBAGE = [
    b"",
    b"\x00",  # STUN range, too short
    b"\x00\x01\x00\x00" + bytes(16),  # a header only, wrong cookie, no attributes
    check()[:-3],  # truncated
    check()[:22] + b"\xff\xff" + check()[24:],  # an attribute length past the end
    check()[:-1] + bytes([check()[-1] ^ 1]),  # bad fingerprint
    bytes([0x00, 0x01, 0x00, 0x08]) + bytes(16) + b"\x00\x06\x00\x04\xff\xfe\xfd\xfc",  # USERNAME not UTF-8
    bytes([0x00, 0x01, 0x00, 0x08]) + bytes(16) + b"\x00\x20\x00\x01\x01\x00\x00\x00",  # XOR-MAPPED-ADDRESS of 1 byte
    bytes([0x00, 0x11, 0x00, 0x00]) + bytes(16),  # a STUN indication
    bytes([5]) * 40, bytes([70]) * 40, bytes([200]) * 40, bytes([255]) * 1200,  # no protocol of RFC 7983
    DTLS, RTP,  # from an unknown source
]


async def test_garbage_never_raises_nor_teaches_anything(mux: UdpMux) -> None:
    recorder = Recorder()
    registration = mux.register(UFRAG, PASSWORD, recorder)
    with client() as them:
        for data in GARBAGE:
            them.sendto(data, mux.sockname)
        await settled(mux, len(GARBAGE))
        assert mux.stats.handler_errors == 0
        assert recorder.datagrams == [] and registration.addresses == {} and mux.owner(address(them)) is None
        them.sendto(check(), mux.sockname)  # and the mux still works
        await settled(mux, len(GARBAGE) + 1)
    assert len(recorder.datagrams) == 1
    dropped = mux.stats.malformed + mux.stats.unknown_source + mux.stats.unknown_ufrag + mux.stats.unauthenticated
    assert dropped == len(GARBAGE)


async def test_tables_are_bounded(mux: UdpMux) -> None:
    recorder = Recorder()
    registration = mux.register(UFRAG, PASSWORD, recorder)
    count = udpmux.MAX_ADDRESSES + 4
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(client()) for _ in range(count)]
        addresses = [address(s) for s in sockets]
        for i, s in enumerate(sockets):
            s.sendto(check(), mux.sockname)
            await settled(mux, i + 1)  # in order: the oldest are the first ones
    assert list(registration.addresses) == addresses[-udpmux.MAX_ADDRESSES:]
    assert all(mux.owner(a) is None for a in addresses[:4])
    with client() as them:
        for _ in range(3 * udpmux.MAX_TRANSACTIONS):
            registration.sendto(bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)), address(them))
    assert len(registration.transactions) == udpmux.MAX_TRANSACTIONS
    registration.close()
    assert mux.connections == 0 and all(mux.owner(a) is None for a in addresses)
    with client() as them:  # unregistered: its ufrag is unknown again
        them.sendto(check(), mux.sockname)
        await settled(mux, count + 1)
    assert mux.stats.unknown_ufrag == 1


def count_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the batches the mux hands to the kernel, one system call each."""
    batches: list[int] = []
    send_srtp = udpio.send_srtp

    def counting(sock: socket.socket, packets: Any) -> tuple[int, list[Any]]:
        batches.append(len(packets))
        return send_srtp(sock, packets)

    monkeypatch.setattr(udpio, "send_srtp", counting)
    return batches


async def test_sends_made_while_a_batch_is_handled_leave_in_one_system_call(mux: UdpMux, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fan-out: every write a datagram handler makes goes out after the batch, together."""
    batches = count_batches(monkeypatch)

    class Echo:
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if data[0] >= 128:
                for _ in range(3):  # three subscribers
                    mux.sendto(data, addr)

    mux.register(UFRAG, PASSWORD, Echo())
    with client() as them:
        them.sendto(check(), mux.sockname)
        await settled(mux, 1)
        for _ in range(10):  # queued in the kernel before the mux reads any: one batch
            them.sendto(RTP, mux.sockname)
        await settled(mux, 11)
        received = [them.recvfrom(2048)[0] for _ in range(30)]
        assert received == [RTP] * 30
        assert batches == [30]
        mux.sendto(b"\x80later", address(them))  # outside a batch: at once, on its own
        assert them.recvfrom(2048)[0] == b"\x80later"
    assert batches == [30]


async def test_a_large_fan_out_leaves_before_the_rest_of_the_batch_is_handled(
    mux: UdpMux, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One input packet's copies to many subscribers leave together, as soon as FLUSH_AT are
    queued: the first subscribers never wait for the fan-out of the whole received batch."""
    batches = count_batches(monkeypatch)
    fan_out = udpmux.FLUSH_AT  # subscribers per input packet

    class FanOut:
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if data[0] >= 128:
                for _ in range(fan_out):
                    mux.sendto(data, addr)

    mux.register(UFRAG, PASSWORD, FanOut())
    with client() as them:
        them.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        them.sendto(check(), mux.sockname)
        await settled(mux, 1)
        for _ in range(3):  # queued in the kernel before the mux reads any: one batch
            them.sendto(RTP, mux.sockname)
        await settled(mux, 4)
        assert batches == [fan_out] * 3, batches


async def test_what_a_full_send_buffer_refuses_waits_in_order(mux: UdpMux, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst larger than the kernel's send buffer is not dropped: the rest waits until the
    socket is writable, and a send made meanwhile queues behind it. The wait is bounded."""
    send_srtp = udpio.send_srtp
    waiting: list[int] = []

    def filling(sock: socket.socket, packets: Any) -> tuple[int, list[Any]]:  # the buffer takes 5, then is full once
        if waiting:
            return send_srtp(sock, packets)
        # Before the socket turns writable again, another send (e.g. an RTCP timer) is made.
        def meanwhile() -> None:
            waiting.append(mux.backlog)
            mux.sendto(b"\x80after", packets[0][1])  # waits too, behind the others
            mux.sendto(b"\x80overflow", packets[0][1])  # past the bound: dropped

        asyncio.get_running_loop().call_soon(meanwhile)
        sent, _ = send_srtp(sock, packets[:5])
        return sent, list(packets[5:])

    monkeypatch.setattr(udpio, "send_srtp", filling)
    monkeypatch.setattr(udpmux, "MAX_BACKLOG", 26)

    class Burst:
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if data[0] >= 128:
                for i in range(30):
                    mux.sendto(bytes([0x80, i]), addr)

    mux.register(UFRAG, PASSWORD, Burst())
    with client() as them:
        them.sendto(check(), mux.sockname)
        await settled(mux, 1)
        them.sendto(RTP, mux.sockname)
        await settled(mux, 2)
        await wait_for(lambda: waiting and mux.backlog == 0, message="the backlog sent")
        received = [them.recvfrom(2048)[0] for _ in range(31)]
    assert waiting == [25]  # 5 sent at once, 25 waited
    assert received == [bytes([0x80, i]) for i in range(30)] + [b"\x80after"]
    assert (mux.backlog, mux.stats.sent, mux.stats.send_dropped) == (0, 31, 1)


@pytest.mark.browser
async def test_a_browser_calls_through_the_one_port(server: Any, clients: Any) -> None:
    """Chromium and a Python client in one room: every server-side connection's selected pair
    is on the mux's port, the mux learned the browser's address from its checks, and no
    server connection holds a socket of its own."""
    from .helpers.browser import Page, chromium

    mux = server.registry.plane.udp_mux
    assert mux is not None
    py = await clients.join("py", "standup", publish="va")
    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/", "alice")
        try:
            await page.join("standup", "alice")
            await page.wait_tile("py", state="connected")
            await page.wait_video_playing("py")
            await subscribed_media(py, "alice", "camera")
            peers = {p.identity: p.transport.peer.pc for room in server.registry.rooms.values() for p in room.participants.values()}
            assert set(peers) == {"alice", "py"}
            for identity, pc in peers.items():
                connection = pc.sctp.transport.transport._connection
                pair = connection._nominated.get(1)
                assert pair is not None and pair.local_candidate.port == mux.port, identity
                assert mux.owner(pair.remote_addr) == connection.local_username, identity
                assert all(p.transport.get_extra_info("socket") is None for p in connection._protocols), identity
        finally:
            await page.close()
