"""What a client that never authenticates can hold (issue 8): message size before and after
`connect`, the time to authenticate, per-address and overall caps on such sockets, HTTP
request-head and idle timeouts, the websocket Origin allow-list, the log line for a refused
participant, and what participants hear when the server stops."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from sfu import errors
from signaling import protocol

from .conftest import DEADLINE, Server, running_server, wait_for
from .helpers.clients import RawSocket, connect_message
from .helpers.wire import CONTINUATION, TEXT, WireSocket, closed_by_server, frame

T = TypeVar("T")
KIB = 1 << 10
MESSAGE_TOO_BIG = 1009


running = running_server  # a server like the `server` fixture's, with these ServerConfig settings


async def within(awaitable: Awaitable[T]) -> T:
    """Bound a receive: aiohttp's own receive timeout restarts at every ping."""
    return await asyncio.wait_for(awaitable, DEADLINE)


def port_of(server: Server) -> int:
    return int(server.http.rsplit(":", 1)[1])


def padded_heartbeat(size: int) -> bytes:
    """A heartbeat of exactly ``size`` bytes."""
    bare = json.dumps({"type": "heartbeat", "version": 1, "pad": ""}).encode()
    return json.dumps({"type": "heartbeat", "version": 1, "pad": "x" * (size - len(bare))}).encode()


async def still_answers(raw: RawSocket) -> None:
    """The socket is open and its session answers a rules round trip."""
    await raw.send({"type": "update", "version": 1, "subscribe": {"rules": [{"type": "include", "all": True}]}})
    while "subscribe" not in (update := await within(raw.receive_type("update"))):  # (an offer may come first)
        assert "peer_connection" in update, update


# --- message size -------------------------------------------------------------------------


async def test_before_connect_a_message_over_64_kib_closes_the_socket(server: Server) -> None:
    raw = await RawSocket.open(server)
    try:
        await raw.ws.send_bytes(padded_heartbeat(64 * KIB))  # exactly the limit: accepted
        await raw.ws.send_bytes(padded_heartbeat(64 * KIB + 1))
        assert await within(raw.receive()) is None
        assert raw.ws.close_code == MESSAGE_TOO_BIG
    finally:
        await raw.close()
    # A socket that connects first may send up to 1 MiB.
    raw = await RawSocket.open(server)
    try:
        await raw.send(connect_message(server.token("alice"), "room"))
        await within(raw.receive_type("connected"))
        await raw.ws.send_bytes(padded_heartbeat(protocol.MAX_MESSAGE_SIZE))
        await still_answers(raw)
    finally:
        await raw.close()


async def test_before_connect_a_fragmented_message_is_bounded_too(server: Server) -> None:
    """The limit must bound what the server buffers: an unfinished message made of frames
    each under 64 KiB is cut as soon as its parts pass 64 KiB together."""
    wire = await WireSocket.open(port_of(server))
    try:
        await wire.send_frame(TEXT, b'{"type":"heartbeat","pad":"' + b"x" * (40 * KIB), fin=False)
        await wire.send_frame(CONTINUATION, b"x" * (40 * KIB), fin=False)  # never finished
        assert await asyncio.wait_for(wire.close_code(), DEADLINE) == MESSAGE_TOO_BIG
    finally:
        wire.close()
    # After `connected`, a fragmented message of several hundred KiB goes through.
    wire = await WireSocket.open(port_of(server))
    try:
        await wire.send_frame(TEXT, json.dumps(connect_message(server.token("bob"), "room")).encode())
        frame = await asyncio.wait_for(wire.next_frame(), DEADLINE)
        assert frame is not None and json.loads(frame[1])["type"] == "connected", frame
        body = padded_heartbeat(600 * KIB)
        await wire.send_frame(TEXT, body[: 300 * KIB], fin=False)
        await wire.send_frame(CONTINUATION, body[300 * KIB :])
        await wire.send_frame(TEXT, json.dumps({"type": "update", "version": 1, "subscribe": {"rules": []}}).encode())
        kinds = []
        while "update" not in kinds:
            frame = await asyncio.wait_for(wire.next_frame(), DEADLINE)
            assert frame is not None, f"closed after {kinds}"
            if frame[0] == TEXT:
                kinds.append(json.loads(frame[1])["type"])
        assert "error" not in kinds, kinds
    finally:
        wire.close()


async def test_frames_sent_with_the_handshake_reach_the_limited_reader(server: Server) -> None:
    """The server swaps aiohttp's websocket reader for one whose limit it can raise: bytes the
    client sent before the handshake's answer go to that reader, limits and all."""
    connect = json.dumps(connect_message(server.token("alice"), "room")).encode()
    wire = await WireSocket.open(port_of(server), pipelined=frame(TEXT, connect))
    try:
        first = await asyncio.wait_for(wire.next_frame(), DEADLINE)
        assert first is not None and json.loads(first[1])["type"] == "connected", first
    finally:
        wire.close()
    wire = await WireSocket.open(port_of(server), pipelined=frame(TEXT, padded_heartbeat(64 * KIB + 1)))
    try:
        assert await asyncio.wait_for(wire.close_code(), DEADLINE) == MESSAGE_TOO_BIG
    finally:
        wire.close()


# --- time to authenticate ---------------------------------------------------------------


async def test_a_socket_that_never_connects_is_closed_after_10_s(server: Server) -> None:
    raw = await RawSocket.open(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await raw.send({"type": "heartbeat", "version": 1})  # heartbeats do not count
        error = await within(raw.receive_type("error"))
        assert error["code"] == errors.SIGNALING_ERROR, error
        assert await within(raw.receive()) is None
        assert 9.0 <= loop.time() - started <= DEADLINE
    finally:
        await raw.close()


async def test_connect_in_time_is_not_cut(tmp_path: Path, netns: None) -> None:
    async with running(tmp_path, auth_timeout=1.0) as (server, _):
        raw = await RawSocket.open(server)
        try:
            await raw.send(connect_message(server.token("alice"), "room"))
            await within(raw.receive_type("connected"))
            idle = await RawSocket.open(server)  # one that does not connect is cut after 1 s...
            assert (await within(idle.receive_type("error")))["code"] == errors.SIGNALING_ERROR
            assert await within(idle.receive()) is None
            await idle.close()
            await still_answers(raw)  # ...the session, older than that, goes on
        finally:
            await raw.close()


# --- caps ---------------------------------------------------------------------------------


async def test_per_address_cap_refuses_with_429_and_counts_only_unauthenticated(tmp_path: Path, netns: None) -> None:
    async with running(tmp_path, max_connections_per_ip=3, max_unauthenticated=0) as (server, _):
        idle = [await RawSocket.open(server) for _ in range(3)]
        try:
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(server.url)
            assert refused.value.status == 429
            assert server.signaling.connection_counts() == {"authenticated": 0, "unauthenticated": 3}
            # One of them authenticates: it leaves the cap, and a new socket is admitted.
            await idle[0].send(connect_message(server.token("alice"), "room"))
            await within(idle[0].receive_type("connected"))
            await wait_for(lambda: server.signaling.connection_counts() == {"authenticated": 1, "unauthenticated": 2})
            idle.append(await RawSocket.open(server))
            await wait_for(lambda: server.signaling.connection_counts() == {"authenticated": 1, "unauthenticated": 3})
        finally:
            for raw in idle:
                await raw.close()
        await wait_for(lambda: server.signaling.connection_counts() == {"authenticated": 0, "unauthenticated": 0}, message="counts back to 0")


async def test_overall_cap_sheds_the_oldest_and_never_keeps_a_participant_out(tmp_path: Path, netns: None) -> None:
    async with running(tmp_path, max_connections_per_ip=0, max_unauthenticated=3) as (server, _):
        idle = [await RawSocket.open(server) for _ in range(3)]
        try:
            assert server.signaling.connection_counts() == {"authenticated": 0, "unauthenticated": 3}
            # A participant arrives while the cap is full: the oldest idle socket goes.
            alice = await RawSocket.open(server)
            idle.append(alice)
            shed = await within(idle[0].receive_type("error"))
            assert shed["code"] == 53006, shed
            assert await within(idle[0].receive()) is None
            await alice.send(connect_message(server.token("alice"), "room"))
            connected = await within(alice.receive_type("connected"))
            assert connected["participant"]["identity"] == "alice"
            await wait_for(lambda: server.signaling.connection_counts() == {"authenticated": 1, "unauthenticated": 2})
            # The others are still open, in the order they came.
            for raw in idle[1:3]:
                await raw.send({"type": "heartbeat", "version": 1})
                assert not raw.ws.closed
        finally:
            for raw in idle:
                await raw.close()


# --- HTTP timeouts ----------------------------------------------------------------------


async def test_slowloris_and_idle_http_connections_are_closed(server: Server) -> None:
    """With the default settings (15 s): a client dribbling its request head, one that sends
    nothing, and one idle on keep-alive after a request are all closed."""
    port = port_of(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
    kept_reader, kept_writer = await asyncio.open_connection("127.0.0.1", port)
    kept_writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert b" 200 " in (await kept_reader.readuntil(b"\r\n"))
    slow_writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
    slow_closed = asyncio.ensure_future(closed_by_server(slow_reader))

    async def dribble() -> None:
        while not slow_closed.done():
            slow_writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.5)

    dribbler = asyncio.ensure_future(dribble())
    try:
        await asyncio.wait_for(
            asyncio.gather(slow_closed, closed_by_server(silent_reader), closed_by_server(kept_reader)), 15.0 + DEADLINE
        )
        assert loop.time() - started >= 10.0  # not closed early
    finally:
        dribbler.cancel()
        for writer in (slow_writer, silent_writer, kept_writer):
            writer.close()


async def test_http_timeout_setting(tmp_path: Path, netns: None) -> None:
    async with running(tmp_path, http_timeout=1.0) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            assert await asyncio.wait_for(closed_by_server(reader), DEADLINE)
        finally:
            writer.close()
        # A websocket is not an idle HTTP connection: it outlives the HTTP timeout.
        raw = await RawSocket.open(server)
        try:
            await raw.send(connect_message(server.token("alice"), "room"))
            await within(raw.receive_type("connected"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            await asyncio.wait_for(closed_by_server(reader), DEADLINE)  # 1 s has passed
            writer.close()
            await still_answers(raw)
        finally:
            await raw.close()


# --- Origin -------------------------------------------------------------------------------


async def test_origin_allow_list(tmp_path: Path, netns: None) -> None:
    async with running(tmp_path, allowed_origins=["https://app.example.com"]) as (server, _):
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(server.url, origin="https://evil.example.com")
            assert refused.value.status == 403
            for origin in ("https://app.example.com", "HTTPS://APP.EXAMPLE.COM/", None):  # None: not a browser
                ws = await http.ws_connect(server.url, origin=origin)
                await ws.send_str(json.dumps(connect_message(server.token(f"p{id(origin)}"), "room")))
                assert json.loads((await within(ws.receive())).data)["type"] == "connected"
                await ws.close()


async def test_no_allow_list_admits_any_origin(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, origin="https://elsewhere.example.org")
        await ws.send_str(json.dumps(connect_message(server.token("alice"), "room")))
        assert json.loads((await within(ws.receive())).data)["type"] == "connected"
        await ws.close()


# --- logs ---------------------------------------------------------------------------------


async def test_a_refused_participant_is_logged_without_the_token(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="signaling.server")
    token = server.token("mallory", room="other-room")
    raw = await RawSocket.open(server)
    try:
        await raw.send(connect_message(token, "room"))
        error = await within(raw.receive_type("error"))
        assert error["code"] == 20106
    finally:
        await raw.close()
    lines = [r for r in caplog.records if r.name == "signaling.server" and r.levelno == logging.INFO and "refused" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert "20106" in lines[0].getMessage()
    assert all(token not in r.getMessage() and token.split(".")[1] not in r.getMessage() for r in caplog.records)


# --- stopping -----------------------------------------------------------------------------


async def test_a_server_stop_is_not_the_room_ending(tmp_path: Path, netns: None) -> None:
    """A plain stop (runner cleanup) tells participants 53001 server_shutdown, not 53118."""
    async with running(tmp_path) as (server, runner):
        raw = await RawSocket.open(server)
        try:
            await raw.send(connect_message(server.token("alice"), "room"))
            await within(raw.receive_type("connected"))
            stopping = asyncio.ensure_future(runner.cleanup())
            disconnected = await within(raw.receive_type("disconnected"))
            assert disconnected == {
                "type": "disconnected", "status": "disconnected", "code": 53001,
                "message": "The server is shutting down", "reason": "server_shutdown",
            }  # fmt: skip
            assert await within(raw.receive()) is None
            await asyncio.wait_for(stopping, DEADLINE)
        finally:
            await raw.close()
