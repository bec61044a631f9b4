"""Issue 12's allocation through media worker processes (``workers=2``): the bandwidth profile
and hints reach the worker's allocator, and its switchedOff/switchedOn come back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.client import LocalVideoTrack, connect

from .conftest import Server, running_server, wait_for
from .helpers.clients import subscribed_media
from .media import CounterVideoTrack


@pytest.fixture
async def server2(tmp_path: Path, netns: None) -> AsyncIterator[Server]:
    async with running_server(tmp_path, workers=2) as (running, _):
        yield running


async def test_switch_off_and_priorities_work_through_a_worker(server2: Server) -> None:
    server = server2
    high, low = LocalVideoTrack(CounterVideoTrack(), "cam"), LocalVideoTrack(CounterVideoTrack(), "cam")
    high.priority, low.priority = "high", "low"
    alice = await connect(server.url, server.token("alice"), name="w", tracks=[high])
    carol = await connect(server.url, server.token("carol"), name="w", tracks=[low])
    bob = await connect(
        server.url, server.token("bob"), name="w", receive="packets",
        bandwidth_profile={"video": {"client_track_switch_off_control": "manual"}},
    )  # fmt: skip
    try:
        track = await subscribed_media(bob, "alice", "cam")
        await subscribed_media(bob, "carol", "cam")
        await wait_for(lambda: track.packets_received > 30, message="bob receives alice's video through the worker")
        track.switch_off()
        await wait_for(lambda: track.is_switched_off, message="switchedOff from the worker")
        assert track.switch_off_reason == "disabled-by-subscriber"
        received = track.packets_received
        other = await subscribed_media(bob, "carol", "cam")
        seen = other.packets_received
        await wait_for(lambda: other.packets_received > seen + 60, message="carol's video goes on")
        assert track.packets_received <= received + 5  # (what was in flight)
        track.switch_on()
        await wait_for(lambda: not track.is_switched_off, message="switchedOn from the worker")
        await wait_for(lambda: track.packets_received > received + 30, message="alice's video again")
    finally:
        for room in (bob, carol, alice):
            await room.disconnect()
