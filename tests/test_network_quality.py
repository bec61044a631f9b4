"""Network quality end to end: Python clients report 5 on a clean network, fall under
induced loss and recover when it stops.

The loss is an nftables rule on the input hook of the test's own network namespace
(tests/netns.sh; this kernel has no sch_netem, see /work/shared/NETWORK.md): it drops a
share of every UDP packet (media) arriving at any process in it, leaving the websockets
(TCP) alone. tests/run.sh installs nftables; without it this test fails, it never skips."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from signaling.client import LocalAudioTrack, LocalVideoTrack, Room, connect

from .conftest import Server, in_test_namespace, wait_for
from .helpers.clients import Clients
from .media import CounterVideoTrack, ToneAudioTrack

DEADLINE = 60.0  # levels move once a second, and rise one step at a time


async def nft(script: str) -> None:
    assert in_test_namespace(), "induced loss only inside the test's private namespace"
    binary = shutil.which("nft")
    assert binary is not None, "nft (Debian nftables) is needed: tests/run.sh installs it"
    process = await asyncio.create_subprocess_exec(
        binary, "-f", "-", stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate(script.encode())
    assert process.returncode == 0, err.decode()


@asynccontextmanager
async def udp_loss(percent: int) -> AsyncIterator[None]:
    """Drop ``percent`` % of UDP packets arriving in the namespace while inside."""
    await nft(
        "table inet loss {\n chain input { type filter hook input priority 0; policy accept;\n"
        f"  meta l4proto udp numgen random mod 100 < {percent} counter drop\n }}\n}}\n"
    )
    try:
        yield
    finally:
        await nft("delete table inet loss\n")


async def join(clients: Clients, server: Server, identity: str, **options: object) -> Room:
    tracks = [LocalVideoTrack(CounterVideoTrack(), "cam"), LocalAudioTrack(ToneAudioTrack(), "mic")]
    room = await connect(server.url, server.token(identity), name="quality", tracks=tracks, **options)  # type: ignore[arg-type]
    clients.rooms.append(room)
    return room


async def test_network_quality_falls_under_udp_loss_and_recovers(server: Server, clients: Clients) -> None:
    alice = await join(clients, server, "alice", network_quality={"local": 3, "remote": 2})
    bob = await join(clients, server, "bob", network_quality=True)
    me = alice.local_participant
    levels: list[int | None] = []
    me.on("network_quality_level_changed", lambda level, stats: levels.append(level))

    await wait_for(lambda: me.network_quality_level == 5, DEADLINE, "alice's level 5 on a clean network")
    stats = me.network_quality_stats
    assert stats is not None and stats["level"] == 5
    assert stats["audio"]["send"] == 5 and stats["audio"]["recvStats"]["fractionLost"]["level"] == 5  # detailed (3)
    bob_seen = alice.participants[bob.local_participant.sid]
    await wait_for(lambda: bob_seen.network_quality_level is not None, DEADLINE, "bob's level (remote verbosity 2)")
    assert bob_seen.network_quality_stats is not None and "sendStats" not in (bob_seen.network_quality_stats["audio"] or {})
    assert alice.local_participant.sid not in {p.sid for p in bob.participants.values() if p.network_quality_level is not None}
    await wait_for(lambda: bob.local_participant.network_quality_level is not None, DEADLINE, "bob's own level (verbosity 1)")
    assert bob.local_participant.network_quality_stats is None

    async with udp_loss(25):
        await wait_for(lambda: (me.network_quality_level or 5) <= 2, DEADLINE, "alice's level falls under 25% loss")
        await wait_for(lambda: (bob_seen.network_quality_level or 5) <= 2, DEADLINE, "alice sees bob's level fall")
        lossy = me.network_quality_stats
        assert lossy is not None and lossy["audio"]["sendStats"]["fractionLost"]["fractionLost"] > 0.05, lossy
    await wait_for(lambda: me.network_quality_level == 5, DEADLINE, "alice's level recovers")
    assert min(level for level in levels if level is not None) <= 2
