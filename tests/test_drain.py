"""Graceful drain, as an operator gets it: `sfu serve` in its own process, SIGTERM, real
clients (the Python SDK and a bare protocol socket, which shows every message)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfu.credentials import Credentials, load_or_create
from signaling.client import Room, connect
from signaling.tokens import mint_token

from .conftest import DEADLINE, wait_event
from .helpers.clients import connect_message
from .test_signaling_cli import SFU, clean_env, free_port, wait_until_serving

SHUTDOWN = {
    "type": "disconnected", "status": "disconnected", "code": 53001,
    "message": "The server is shutting down", "reason": "server_shutdown",
}  # fmt: skip


class Served:
    def __init__(self, process: asyncio.subprocess.Process, port: int, credentials: Credentials) -> None:
        self.process = process
        self.port = port
        self.credentials = credentials
        self.url = f"ws://127.0.0.1:{port}/signaling"

    def token(self, identity: str) -> str:
        return mint_token(self.credentials, identity, room="standup")

    async def exited(self, timeout: float = DEADLINE) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)


@asynccontextmanager
async def serve(tmp_path: Path, *args: str) -> AsyncIterator[Served]:
    data_dir = tmp_path / "data"
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(SFU), "serve", "--port", str(port), "--data-dir", str(data_dir), *args,
        env=clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until_serving(port, process)
        yield Served(process, port, load_or_create(data_dir, environ={})[0])
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def join_raw(http: aiohttp.ClientSession, served: Served, identity: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(served.url)
    await ws.send_str(json.dumps(connect_message(served.token(identity), "standup")))
    assert (await next_message(ws, "connected"))["participant"]["identity"] == identity
    return ws


async def next_message(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """Skip to the next message of type ``kind`` (offers and updates come and go meanwhile)."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), DEADLINE)  # (receive(timeout) restarts at each ping)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"socket ended ({msg.type}) while waiting for {kind}"
        message = json.loads(msg.data)
        if message["type"] == kind:
            return message


async def closed(ws: aiohttp.ClientWebSocketResponse) -> bool:
    while (await asyncio.wait_for(ws.receive(), DEADLINE)).type == aiohttp.WSMsgType.TEXT:
        pass
    return True


async def test_sigterm_drains_refuses_newcomers_and_exits_once_the_room_empties(tmp_path: Path, netns: None) -> None:
    async with serve(tmp_path, "--drain-timeout", "120") as served, aiohttp.ClientSession() as http:
        alice: Room = await connect(served.url, served.token("alice"), name="standup")
        bob = await join_raw(http, served, "bob")
        served.process.send_signal(signal.SIGTERM)
        draining = await next_message(bob, "draining")
        assert 100 < draining["timeout"] <= 120, draining
        # Newcomers are refused, in the protocol's own form...
        carol = await http.ws_connect(served.url)
        await carol.send_str(json.dumps(connect_message(served.token("carol"), "standup")))
        refused = await next_message(carol, "error")
        assert refused["code"] == 53006 and refused["message"] == "Server is busy: it is shutting down", refused
        assert await closed(carol)
        # ...and so is a new room over REST, in Twilio's.
        key = f"{served.credentials.api_key_sid}:{served.credentials.api_key_secret}"
        auth = {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}
        async with http.post(f"http://127.0.0.1:{served.port}/v1/Rooms", data={"UniqueName": "later"}, headers=auth) as response:
            assert response.status == 503
            body = await response.json()
        assert set(body) == {"code", "message", "more_info", "status"} and body["status"] == 503, body
        # The call goes on meanwhile: alice's session still answers.
        assert served.process.returncode is None
        await alice.set_subscribe_rules([{"type": "include", "all": True}])
        # Everyone leaves: the server stops at once (long before its 120 s drain timeout).
        await bob.send_str(json.dumps({"type": "disconnect", "version": 1}))
        assert (await next_message(bob, "disconnected"))["status"] == "disconnected"
        await alice.disconnect()
        assert await served.exited() == 0, (await served.process.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]


async def test_the_drain_timeout_ends_the_call_with_server_shutdown(tmp_path: Path, netns: None) -> None:
    async with serve(tmp_path, "--drain-timeout", "2") as served, aiohttp.ClientSession() as http:
        alice: Room = await connect(served.url, served.token("alice"), name="standup")
        bob = await join_raw(http, served, "bob")
        alice_gone = asyncio.ensure_future(wait_event(alice, "disconnected"))
        served.process.send_signal(signal.SIGTERM)
        assert 0 < (await next_message(bob, "draining"))["timeout"] <= 2
        assert await next_message(bob, "disconnected") == SHUTDOWN  # not 53118: the room did not end
        (error,) = await alice_gone
        assert error is not None and error.code == 53001, error
        assert await served.exited() == 0


async def test_a_second_signal_stops_at_once(tmp_path: Path, netns: None) -> None:
    async with serve(tmp_path, "--drain-timeout", "120") as served, aiohttp.ClientSession() as http:
        bob = await join_raw(http, served, "bob")
        served.process.send_signal(signal.SIGTERM)
        await next_message(bob, "draining")
        served.process.send_signal(signal.SIGINT)
        assert await next_message(bob, "disconnected") == SHUTDOWN
        assert await served.exited() == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM with --drain-timeout 0"])
async def test_sigint_or_no_drain_stops_at_once_with_server_shutdown(tmp_path: Path, netns: None, stop: signal.Signals) -> None:
    async with serve(tmp_path, "--drain-timeout", "0" if stop == signal.SIGTERM else "120") as served, aiohttp.ClientSession() as http:
        bob = await join_raw(http, served, "bob")
        served.process.send_signal(stop)
        assert await next_message(bob, "disconnected") == SHUTDOWN
        assert await served.exited() == 0
