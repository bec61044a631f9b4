"""Records that must not be lost: durable before acknowledged, kept and retried while the store
refuses writes (a real failure: the server's file-size limit dropped to 0, so SQLite cannot
write a byte), and a data directory one server at a time."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfu.credentials import generate
from sfu.media.peer import MediaConfig
from sfu.media.plane import LocalMediaPlane
from sfu.registry import RoomRegistry
from sfu.room import RoomSettings
from sfu.store import SqliteStore
from signaling.tokens import mint_token

from .conftest import DEADLINE, wait_for
from .rest_support import SfuProcess, call, raw


async def _join_raw(url: str, token: str, room: str) -> dict[str, Any]:
    """Send `connect` on a bare websocket and return `connected` the moment it arrives."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"type": "connect", "version": 1, "token": token, "name": room, "participant": {"tracks": []}}))
            while True:
                msg = await asyncio.wait_for(ws.receive(), DEADLINE)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                message = json.loads(msg.data)
                if message["type"] == "connected":
                    return message
                assert message["type"] != "error", message


async def connect_refusal(url: str, token: str, room: str, **extra: Any) -> dict[str, Any]:
    """Send `connect` on a bare websocket and return the `error` that refuses it."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"type": "connect", "version": 1, "token": token, "name": room, **extra}))
            msg = await asyncio.wait_for(ws.receive(), DEADLINE)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            message: dict[str, Any] = json.loads(msg.data)
            assert message["type"] == "error", message
            assert (await asyncio.wait_for(ws.receive(), DEADLINE)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            return message


async def test_connected_participants_survive_sigkill(tmp_path: Path, netns: None) -> None:
    """`connected` goes out only once the participant (and its ad-hoc room) is committed: a
    server killed the moment a participant got `connected` still has it after a restart."""
    credentials = generate()
    port = None
    joined: list[tuple[str, str]] = []
    for attempt in range(3):
        server = await call(SfuProcess(tmp_path, credentials, port=port).start)
        port = server.port
        try:
            ws = f"ws://127.0.0.1:{server.port}/signaling"
            connected = await _join_raw(ws, mint_token(credentials, f"p{attempt}"), f"room{attempt}")
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGKILL)  # at once: no shutdown code runs
            joined.append((connected["room"]["sid"], connected["participant"]["sid"]))
        finally:
            server.kill()

    last = await call(SfuProcess(tmp_path, credentials, port=port).start)
    try:
        rooms = last.client().video.v1.rooms
        for room_sid, participant_sid in joined:
            room = await call(rooms(room_sid).fetch)  # the room was on record before `connected` too
            assert room.status == "completed"
            participant = await call(rooms(room_sid).participants(participant_sid).fetch)
            assert participant.status == "disconnected"
    finally:
        last.stop()


def _limit_writes(pid: int, size: int | None) -> None:
    """The process's file-size limit: 0 makes every write to a file fail (EFBIG), as a full
    disk would; None restores it."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if size is None else size, hard))


async def _health(http: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(http + "/healthz") as response:
            return response.status, await response.json()


async def test_records_wait_while_the_store_refuses_writes(tmp_path: Path, netns: None) -> None:
    """While SQLite cannot write (file-size limit 0 on the server process), REST answers a
    Twilio-shaped 503 instead of 404, /healthz says the store is failing, and what happened
    meanwhile (a room created, a room that ended) is stored once writes work again."""
    credentials = generate()
    server = await call(SfuProcess(tmp_path, credentials).start)
    assert server.process is not None
    pid = server.process.pid
    try:
        async with aiohttp.ClientSession() as http:
            # An ad-hoc room whose only participant leaves during the failure: the room ends then.
            ws = await http.ws_connect(f"ws://127.0.0.1:{server.port}/signaling")
            await ws.send_str(json.dumps({"type": "connect", "version": 1, "token": mint_token(credentials, "dave"), "name": "adhoc"}))
            while (connected := json.loads((await asyncio.wait_for(ws.receive(), DEADLINE)).data))["type"] != "connected":
                pass
            adhoc = connected["room"]["sid"]
            assert (await _health(server.http))[0] == 200

            _limit_writes(pid, 0)
            status, body = await raw(server.http, credentials, "POST", "/v1/Rooms", check=False, data={"UniqueName": "during"})
            assert status == 503, body  # was 404: the room was created, its record lost
            assert set(body) == {"code", "message", "more_info", "status"} and body["status"] == 503
            assert body["code"] == 20503 and body["more_info"] == "https://www.twilio.com/docs/errors/20503"
            status, health = await _health(server.http)
            assert status == 503 and health["store"] == "failing" and health["pending"] >= 1, health
            await ws.send_str(json.dumps({"type": "disconnect", "version": 1}))
            while (await asyncio.wait_for(ws.receive(), DEADLINE)).type == aiohttp.WSMsgType.TEXT:
                pass  # `disconnected`, then the server closes the socket
            # While the store refuses writes, nothing new is made that could not be recorded.
            status, body = await raw(server.http, credentials, "POST", "/v1/Rooms", check=False, data={"UniqueName": "refused"})
            assert status == 503, body
            refused = await connect_refusal(f"ws://127.0.0.1:{server.port}/signaling", mint_token(credentials, "carol"), "during")
            assert refused["code"] == 53104, refused
        status, body = await raw(server.http, credentials, "GET", f"/v1/Rooms/{adhoc}", check=False)
        assert status == 503, body

        _limit_writes(pid, None)
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while (await _health(server.http))[0] != 200:
            assert loop.time() < end, "the store did not recover"
            await asyncio.sleep(0.05)
        status, ended = await raw(server.http, credentials, "GET", f"/v1/Rooms/{adhoc}")
        assert (status, ended["status"]) == (200, "completed"), ended
        status, found = await raw(server.http, credentials, "GET", "/v1/Rooms?UniqueName=during")
        assert status == 200 and [r["unique_name"] for r in found["rooms"]] == ["during"], found
        for status_filter in ("in-progress", "completed"):
            status, found = await raw(server.http, credentials, "GET", f"/v1/Rooms?UniqueName=refused&Status={status_filter}")
            assert found["rooms"] == [], found
        assert await _health(server.http) == (200, {"status": "ok", "rooms": 1, "store": "ok", "pending": 0})  # "during"
    finally:
        if server.process.poll() is None:
            _limit_writes(pid, None)
        server.stop()
    # It was committed, not only held in memory: a fresh process reads it back.
    again = await call(SfuProcess(tmp_path, credentials).start)
    try:
        status, ended = await raw(again.http, credentials, "GET", f"/v1/Rooms/{adhoc}")
        assert (status, ended["status"]) == (200, "completed"), ended
    finally:
        again.stop()


# --- the retry logic, against the real SqliteStore behind a switch that refuses writes -----


class RefusingStore(SqliteStore):
    """SqliteStore whose writes raise SQLite's disk-full error while ``full`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.full = False
        self.refused = 0

    async def _write(self, sql: str, params: tuple) -> None:
        if self.full:
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        await super()._write(sql, params)


@pytest.fixture
async def keeper_registry(tmp_path: Path) -> AsyncIterator[tuple[RoomRegistry, RefusingStore]]:
    store = RefusingStore(tmp_path / "sfu.sqlite3")
    registry = RoomRegistry(LocalMediaPlane(MediaConfig(), udp_port=None), generate().account_sid, store=store)
    registry.records.retry_max = 0.2
    await registry.start()
    yield registry, store
    store.full = False
    await registry.close()


async def test_failed_writes_are_retried_in_order(keeper_registry: tuple[RoomRegistry, RefusingStore]) -> None:
    registry, store = keeper_registry
    records = registry.records
    first = registry.create_room("first", RoomSettings(created_via_rest=True))
    await records.flush()
    assert records.healthy and records.pending == 0 and records.write_failures == 0

    store.full = True
    second = registry.create_room("second", RoomSettings(created_via_rest=True))
    await first.end()  # completed while the disk is full
    third = registry.create_room("first", RoomSettings(created_via_rest=True))  # the name is free again
    await wait_for(lambda: records.write_failures >= 3, message="retries")
    assert not records.healthy and records.pending == 3
    with pytest.raises(Exception) as refused:
        await records.flush(grace=0.2)
    assert type(refused.value).__name__ == "RecordsUnavailable"

    store.full = False
    await records.flush()
    assert records.healthy and records.pending == 0 and records.dropped == 0
    assert (await store.get_room(first.sid)).status == "completed"  # type: ignore[union-attr]
    assert (await store.get_room(second.sid)).status == "in-progress"  # type: ignore[union-attr]
    # In order: "first" completed before the new "first" was stored (else a unique-name conflict).
    assert (await store.find_in_progress_room("first")).sid == third.sid  # type: ignore[union-attr]


async def test_pending_records_are_bounded(keeper_registry: tuple[RoomRegistry, RefusingStore]) -> None:
    """Upserts of one record coalesce (the newest content keeps the oldest place); beyond
    ``max_pending`` distinct records the oldest is dropped and counted."""
    registry, store = keeper_registry
    records = registry.records
    records.max_pending = 3
    store.full = True
    room = registry.create_room("busy", RoomSettings(created_via_rest=True))
    for _ in range(50):
        registry.records.room(room)  # the same record, again and again
    await wait_for(lambda: records.write_failures >= 1, message="a failed write")
    assert records.pending == 1
    others = [registry.create_room(f"r{i}", RoomSettings(created_via_rest=True)) for i in range(3)]
    assert records.pending == 3 and records.dropped == 1  # "busy" was the oldest
    store.full = False
    await records.flush()
    assert await store.get_room(room.sid) is None
    for other in others:
        assert await store.get_room(other.sid) is not None


async def test_a_second_server_refuses_a_data_dir_in_use(tmp_path: Path, netns: None) -> None:
    """Two servers on one data dir: the second says so in one line and exits non-zero, and the
    first one's live room stays in progress (it used to be marked completed)."""
    credentials = generate()
    first = await call(SfuProcess(tmp_path, credentials).start)
    try:
        status, live = await raw(first.http, credentials, "POST", "/v1/Rooms", data={"UniqueName": "live"})
        assert status == 201, live
        second = SfuProcess(tmp_path, credentials)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "sfuserver.cli", "serve", "--port", str(second.port), "--data-dir", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(tmp_path) in lines[0] and "in use" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
        status, still = await raw(first.http, credentials, "GET", f"/v1/Rooms/{live['sid']}")
        assert (status, still["status"]) == (200, "in-progress"), still
    finally:
        first.stop()
    # The lock goes with its process: the next server starts (and ends the room it finds).
    third = await call(SfuProcess(tmp_path, credentials).start)
    try:
        status, ended = await raw(third.http, credentials, "GET", f"/v1/Rooms/{live['sid']}")
        assert (status, ended["status"]) == (200, "completed"), ended
    finally:
        third.stop()


async def test_a_join_the_store_cannot_record_is_refused_and_undone(
    tmp_path: Path, netns: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store starts refusing writes while a participant joins: after the grace it gets a
    fatal 53104 instead of `connected`, it is taken out of the room again, and once the store
    recovers the records say so (the room ended, the participant disconnected)."""
    from aiohttp import web

    from sfuserver import app as app_module
    from sfuserver.app import REGISTRY, ServerConfig, build_app

    stores: list[RefusingStore] = []

    def make_store(path: Path) -> RefusingStore:
        stores.append(RefusingStore(path))
        return stores[-1]

    monkeypatch.setattr(app_module, "SqliteStore", make_store)
    credentials = generate()
    app = build_app(ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path), credentials)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    http, registry = f"http://127.0.0.1:{port}", app[REGISTRY]
    try:
        (store,) = stores
        registry.records.retry_max = 0.2
        assert registry.records.healthy
        store.full = True
        refused = await connect_refusal(f"ws://127.0.0.1:{port}/signaling", mint_token(credentials, "erin"), "full")
        assert refused["code"] == 53104, refused
        assert registry.find_in_progress("full") is None  # the ad-hoc room went with its only participant
        assert store.refused >= 1 and registry.records.write_failures >= 1
        store.full = False
        await registry.records.flush()
        rooms = await store.list_rooms(unique_name="full")
        assert [r.status for r in rooms] == ["completed"], rooms
        (participant,) = await store.list_participants(rooms[0].sid)
        assert (participant.identity, participant.status) == ("erin", "disconnected")
        assert (await _health(http))[0] == 200
    finally:
        for store in stores:
            store.full = False
        await runner.cleanup()
