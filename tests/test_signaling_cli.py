"""The `sfu` command as a user runs it: `sfu serve` in its own process, `sfu token` for it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sfu.credentials import CREDENTIALS_FILENAME, load_or_create
from signaling.client import connect
from signaling.tokens import verify_token

from .conftest import DEADLINE
from .helpers.clients import media_tracks, subscribed_media

SFU = Path(sys.executable).with_name("sfu")  # the console script of this virtualenv


def clean_env() -> dict[str, str]:
    """The environment without SFU_* credentials, so the data dir is what counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sfu_token(data_dir: Path, identity: str, room: str) -> str:
    done = subprocess.run(
        [str(SFU), "token", "--identity", identity, "--room", room, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=DEADLINE, env=clean_env(), check=True,
    )
    token = done.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token, done.stdout
    return token


async def wait_until_serving(port: int, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    async with aiohttp.ClientSession() as http:
        while True:
            assert process.returncode is None, "sfu serve exited"
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert loop.time() < end, "sfu serve did not start listening"
            await asyncio.sleep(0.1)


@pytest.fixture
async def served(tmp_path: Path, netns: None) -> AsyncIterator[tuple[int, Path]]:
    """`sfu serve` on a free port with a fresh data dir; yields (port, data dir)."""
    data_dir = tmp_path / "data"
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(SFU), "serve", "--port", str(port), "--data-dir", str(data_dir),
        env=clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_serving(port, process)
        yield port, data_dir
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), DEADLINE)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
    assert process.returncode == 0, (await process.stderr.read()).decode()[-2000:] if process.stderr else ""


async def test_serve_creates_private_credentials_and_binds_loopback_only(served: tuple[int, Path]) -> None:
    port, data_dir = served
    credentials = data_dir / CREDENTIALS_FILENAME
    assert credentials.exists()
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    # The namespace's other interface (t0, 10.213.0.1) must not reach the server.
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("10.213.0.1", port), DEADLINE)


async def test_token_from_the_command_joins_the_served_room(served: tuple[int, Path]) -> None:
    port, data_dir = served
    token = sfu_token(data_dir, "alice", "standup")
    grant = verify_token(token, load_or_create(data_dir, environ={})[0])
    assert (grant.identity, grant.room) == ("alice", "standup")
    url = f"ws://127.0.0.1:{port}/signaling"
    alice = await connect(url, token, name="standup", tracks=media_tracks("v"))
    bob = await connect(url, sfu_token(data_dir, "bob", "standup"), name="standup")
    try:
        assert alice.name == "standup" and alice.sid.startswith("RM") and bob.sid == alice.sid
        await subscribed_media(bob, "alice", "cam")
    finally:
        await alice.disconnect()
        await bob.disconnect()


def test_token_for_a_fresh_data_dir_refuses_and_creates_nothing(tmp_path: Path) -> None:
    """Only `sfu serve` creates credentials: new ones would sign tokens the server refuses (20107)."""
    done = subprocess.run(
        [str(SFU), "token", "--identity", "carol", "--room", "R", "--data-dir", str(tmp_path / "fresh")],
        capture_output=True, text=True, timeout=DEADLINE, env=clean_env(),
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "no credentials" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "fresh").exists()
