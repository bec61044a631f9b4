"""Fixtures: a real server on a loopback port, tokens, and helpers that wait on conditions."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from sfu.credentials import Credentials, generate
from sfu.registry import RoomRegistry
from sfuserver.app import REGISTRY, SIGNALING, ServerConfig, build_app
from signaling.server import SignalingService
from signaling.tokens import mint_token

if TYPE_CHECKING:
    from .helpers.clients import Clients

DEADLINE = 30.0  # generous: the suite must hold on a loaded 2-core machine


def in_test_namespace() -> bool:
    """True inside tests/netns.sh's namespace: only `lo` and `t0` exist."""
    names = {name for _, name in socket.if_nameindex()}
    return names <= {"lo", "t0"} and "t0" in names


@pytest.fixture
def netns() -> None:
    """Media tests open peer connections: they must never leave the private namespace."""
    if not in_test_namespace():
        pytest.fail("media tests must run inside tests/netns.sh (see README): refusing to use real interfaces")


async def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, message: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.02)


async def wait_event(emitter: Any, event: str, timeout: float = DEADLINE, predicate: Callable[..., bool] | None = None) -> tuple[Any, ...]:
    """Wait for ``emitter`` to emit ``event`` (with args satisfying ``predicate``)."""
    future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    def handler(*args: Any) -> None:
        if not future.done() and (predicate is None or predicate(*args)):
            future.set_result(args)

    emitter.on(event, handler)
    try:
        return await asyncio.wait_for(future, timeout)
    finally:
        emitter.remove_listener(event, handler)


@dataclass
class Server:
    url: str
    http: str
    credentials: Credentials
    registry: RoomRegistry
    data_dir: Path
    signaling: SignalingService
    app: web.Application = field(repr=False, default_factory=web.Application)

    def token(self, identity: str, room: str | None = None, ttl: int = 3600) -> str:
        return mint_token(self.credentials, identity, room=room, ttl=ttl)


@asynccontextmanager
async def running_server(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Server, web.AppRunner]]:
    """The app built from ``ServerConfig(**settings)`` (defaults: loopback, data in ``tmp_path``,
    a 3 s reconnect grace), always bound to 127.0.0.1 on a free port; a test may stop the
    runner itself."""
    credentials = generate()
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "data_dir": tmp_path, "reconnect_grace": 3.0, **settings}
    app = build_app(ServerConfig(**options), credentials)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Server(f"ws://127.0.0.1:{port}/signaling", f"http://127.0.0.1:{port}", credentials, app[REGISTRY], tmp_path, app[SIGNALING], app), runner
    finally:
        if runner.server is not None:
            await runner.cleanup()


@pytest.fixture
async def server(tmp_path: Path, netns: None) -> AsyncIterator[Server]:
    async with running_server(tmp_path) as (running, _):
        yield running


@pytest.fixture
async def clients(server: Server) -> AsyncIterator["Clients"]:
    """Joins participants with test media to ``server``; disconnects them all afterwards."""
    from .helpers.clients import Clients

    joined = Clients(server)
    yield joined
    await joined.close()
