"""Status callbacks against receivers that misbehave: a huge answer is not read whole, a
redirect is not a delivery, and with ``status_callback_public_only`` a callback URL on a
loopback or private address is refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from rest.app import CALLBACKS
from rest.callbacks import MAX_RESPONSE_BYTES, is_public_address
from sfu.credentials import Credentials
from sfuserver.cli import parser

from .conftest import running_server, wait_for
from .rest_support import RestServer, raw, rest_server  # noqa: F401

HUGE = 64 << 20  # bytes the receiver offers to send


@dataclass
class Receiver:
    base: str = ""
    port: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    sent: int = 0  # bytes of the huge answer the receiver got to write
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    chunk = b"x" * (256 << 10)

    async def huge(request: web.Request) -> web.StreamResponse:
        state.hits["huge"] = state.hits.get("huge", 0) + 1
        response = web.StreamResponse(headers={"Content-Length": str(HUGE)})
        await response.prepare(request)
        try:
            while state.sent < HUGE:
                await response.write(chunk)
                state.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the caller hung up: what counts is how much it took first
        finally:
            state.finished.set()
        return response

    async def moved(request: web.Request) -> web.Response:
        state.hits["moved"] = state.hits.get("moved", 0) + 1
        raise web.HTTPFound("/events")

    async def events(request: web.Request) -> web.Response:
        await request.read()
        state.hits["events"] = state.hits.get("events", 0) + 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/huge", huge)
    app.router.add_route("*", "/moved", moved)
    app.router.add_route("*", "/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.base = f"http://127.0.0.1:{state.port}"
    yield state
    await runner.cleanup()


def _event(name: str = "room-created") -> dict[str, str]:
    return {"StatusCallbackEvent": name, "RoomSid": "RM" + "0" * 32, "SequenceNumber": "0"}


async def test_a_huge_answer_is_not_read_whole(rest_server: RestServer, receiver: Receiver) -> None:
    callbacks = rest_server.app[CALLBACKS]
    assert await callbacks.deliver(receiver.base + "/huge", "POST", _event())  # a 200 is a delivery
    await asyncio.wait_for(receiver.finished.wait(), 30)
    # What got written is the 64 KiB read plus what the sockets' buffers took before the
    # connection was dropped; it used to be all 64 MiB, held in memory at once.
    assert MAX_RESPONSE_BYTES <= receiver.sent < 24 << 20, receiver.sent


async def test_a_redirect_is_not_a_delivery(rest_server: RestServer, receiver: Receiver) -> None:
    callbacks = rest_server.app[CALLBACKS]
    assert not await callbacks.deliver(receiver.base + "/moved", "POST", _event())
    assert receiver.hits == {"moved": 1}  # not retried, not followed
    assert await callbacks.deliver(receiver.base + "/events", "POST", _event())  # the receiver works


def test_public_addresses() -> None:
    for address in ("8.8.8.8", "2001:4860:4860::8888", "1.1.1.1"):
        assert is_public_address(address), address
    for address in ("127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "fe80::1",
                    "fd00::1", "100.64.0.1", "0.0.0.0", "::", "224.0.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"):  # fmt: skip
        assert not is_public_address(address), address


@pytest.fixture
async def public_only_server(tmp_path: Path, netns: None) -> AsyncIterator[tuple[str, Credentials, web.Application]]:
    assert parser().parse_args(["serve", "--status-callback-public-only"]).status_callback_public_only
    async with running_server(tmp_path, status_callback_public_only=True) as (server, _):
        yield server.http, server.credentials, server.app


async def test_public_only_refuses_loopback_callbacks(
    public_only_server: tuple[str, Credentials, web.Application], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    http, credentials, app = public_only_server
    callbacks = app[CALLBACKS]
    caplog.set_level(logging.WARNING, logger="rest.callbacks")
    port = receiver.port
    # By address, and by a name that resolves to loopback (checked when connecting).
    for url in (f"http://127.0.0.1:{port}/events", f"http://localhost:{port}/events", f"http://[::ffff:127.0.0.1]:{port}/events"):
        assert not await callbacks.deliver(url, "POST", _event()), url
    # End to end: a room whose StatusCallback is on loopback gets nothing, and the log says why.
    status, room = await raw(http, credentials, "POST", "/v1/Rooms", data={"UniqueName": "r", "StatusCallback": f"http://localhost:{port}/events"})
    assert status == 201, room
    await wait_for(lambda: any(room["sid"] in r.getMessage() and "not a public address" in r.getMessage() for r in caplog.records),
                   message="the refusal to be logged")  # fmt: skip
    assert receiver.hits == {}
