"""TURN: clients that can only relay, and a server that relays itself, through a real coturn.

coturn (Debian's ``turnserver``) runs inside the test namespace on 10.213.0.1, relaying on
10.213.0.1 as well, so nothing leaves the namespace. The clients are aiortc peers with the
relay transport policy (and Chromium pages with ``iceTransportPolicy: 'relay'``): every
packet they send or receive goes through coturn.

* By default the server gathers host candidates only, even with a TURN server among its
  ``--ice-server`` entries: relay-only clients reach its host candidate through coturn.
* With ``--server-ice-relay only`` the server's own selected pair is relayed too (the case
  where the writer once called ``is_closing()`` on aioice's TurnTransport and forwarded
  nothing), and media still flows both ways. With ``fallback`` it offers both kinds, and
  media flows whichever aioice selects.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiortc import RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

import signaling.client
from sfu.credentials import generate
from sfu.media.peer import IceRelay
from sfuserver.app import REGISTRY, SIGNALING, ServerConfig, build_app
from signaling.client import Room, connect

from .conftest import DEADLINE, Server
from .helpers.clients import VideoReader, media_tracks, read_audio, subscribed_media

TEST_ADDRESS = "10.213.0.1"  # tests/netns.sh's test interface


@dataclass
class Coturn:
    port: int
    log: Path

    @property
    def ice_server(self) -> RTCIceServer:
        return RTCIceServer(urls=f"turn:{TEST_ADDRESS}:{self.port}", username="u", credential="p")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((TEST_ADDRESS, 0))
        return int(s.getsockname()[1])


def _answers_stun(port: int) -> bool:
    """True when something on ``port`` answers a STUN binding request."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(request, (TEST_ADDRESS, port))
            data = s.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[8:20] == transaction


@pytest.fixture
def coturn(tmp_path: Path, netns: None) -> Iterator[Coturn]:
    """A coturn with a static long-term user u:p, listening and relaying on 10.213.0.1 only."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn's turnserver is missing: tests/run.sh installs Debian's coturn package")
    port = _free_udp_port()
    log = tmp_path / "turnserver.log"
    command = [
        binary, "-n", "--no-cli", "--no-tls", "--no-dtls",
        "--listening-ip", TEST_ADDRESS, "--relay-ip", TEST_ADDRESS, "--listening-port", str(port),
        "--min-port", "50000", "--max-port", "50999",
        "--lt-cred-mech", "--user", "u:p", "--realm", "test",
        "--log-file", str(log), "--simple-log", "--no-stdout-log",
        "--pidfile", str(tmp_path / "turnserver.pid"), "--userdb", str(tmp_path / "turndb"),
    ]  # fmt: skip
    output = (tmp_path / "turnserver.out").open("wb")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + DEADLINE
        while not _answers_stun(port):  # each probe waits up to 0.5 s for an answer
            if process.poll() is not None:
                text = (tmp_path / "turnserver.out").read_text(errors="replace")
                pytest.fail(f"turnserver exited with {process.returncode}: {text}")
            if time.monotonic() > end:
                pytest.fail(f"turnserver did not answer STUN on {TEST_ADDRESS}:{port} within {DEADLINE}s")
        yield Coturn(port, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


@asynccontextmanager
async def sfu_server(tmp_path: Path, turn: Coturn, relay: IceRelay) -> AsyncIterator[Server]:
    """conftest's ``server``, started as ``sfu serve --ice-server TURN --server-ice-relay RELAY``."""
    credentials = generate()
    config = ServerConfig(
        host="127.0.0.1", port=0, data_dir=tmp_path / "sfu", reconnect_grace=3.0,
        ice_servers=[turn.ice_server], server_ice_relay=relay,
    )  # fmt: skip
    app = build_app(config, credentials)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield Server(f"ws://127.0.0.1:{port}/signaling", f"http://127.0.0.1:{port}", credentials,
                     app[REGISTRY], config.data_dir, app[SIGNALING])  # fmt: skip
    finally:
        await runner.cleanup()


@pytest.fixture
def relay_only_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test clients (signaling.client) gather and use relayed candidates only, like a
    browser with ``iceTransportPolicy: 'relay'``. The server's peers are not affected."""
    relay_only = functools.partial(signaling.client.RTCConfiguration, iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    monkeypatch.setattr(signaling.client, "RTCConfiguration", relay_only)


def ice_connection(pc: RTCPeerConnection) -> Any:
    """The aioice Connection under ``pc``'s bundle (the SCTP m-section's, which every
    transceiver bundles onto on both the server and the client)."""
    assert pc.sctp is not None
    return pc.sctp.transport.transport._connection


def selected_local_type(pc: RTCPeerConnection) -> str | None:
    pair = ice_connection(pc)._nominated.get(1)
    return None if pair is None else str(pair.local_candidate.type)


def server_peers(server: Server) -> dict[str, RTCPeerConnection]:
    return {p.identity: p.peer.pc for room in server.registry.rooms.values() for p in room.participants.values()}


async def call_both_ways(server: Server, turn: Coturn, rooms: list[Room]) -> tuple[Room, Room]:
    """alice and bob (appended to ``rooms``, for the caller to disconnect), relay-only
    through ``turn``, each decode the other's video and audio."""
    for identity in ("alice", "bob"):
        rooms.append(await connect(server.url, server.token(identity), name="turn", tracks=media_tracks("va"),
                                   ice_servers=[turn.ice_server]))  # fmt: skip
    alice, bob = rooms
    readers = [VideoReader(await subscribed_media(alice, "bob", "cam")), VideoReader(await subscribed_media(bob, "alice", "cam"))]
    try:
        for reader in readers:
            await reader.advance(10)
        await read_audio(await subscribed_media(alice, "bob", "mic"), 20)
        await read_audio(await subscribed_media(bob, "alice", "mic"), 20)
    finally:
        for reader in readers:
            await reader.close()
    return alice, bob


async def test_relay_only_clients_meet_the_servers_host_candidates_through_coturn(
    tmp_path: Path, coturn: Coturn, relay_only_clients: None
) -> None:
    """Default: a TURN server among --ice-server is not used by the server itself."""
    async with sfu_server(tmp_path, coturn, "off") as server:
        rooms: list[Room] = []
        try:
            alice, bob = await call_both_ways(server, coturn, rooms)
            for room in (alice, bob):
                assert selected_local_type(room.pc) == "relay"  # the clients really went through coturn
                offer = room.pc.remoteDescription.sdp
                assert " typ host" in offer and " typ relay" not in offer, offer
            peers = server_peers(server)
            assert set(peers) == {"alice", "bob"}
            for identity, pc in peers.items():
                assert selected_local_type(pc) == "host", identity
                assert {c.type for c in ice_connection(pc).local_candidates} == {"host"}, identity
        finally:
            for room in rooms:
                await room.disconnect()


async def test_server_relaying_itself_through_coturn_forwards_media_both_ways(
    tmp_path: Path, coturn: Coturn, relay_only_clients: None
) -> None:
    """--server-ice-relay only: the server's selected local candidate is relayed (the path
    whose writer used to raise AttributeError on every packet), and media flows both ways."""
    async with sfu_server(tmp_path, coturn, "only") as server:
        rooms: list[Room] = []
        try:
            alice, bob = await call_both_ways(server, coturn, rooms)
            peers = server_peers(server)
            assert set(peers) == {"alice", "bob"}
            for identity, pc in peers.items():
                assert selected_local_type(pc) == "relay", identity
                assert {c.type for c in ice_connection(pc).local_candidates} == {"relay"}, identity
            for room in (alice, bob):
                assert selected_local_type(room.pc) == "relay"
                offer = room.pc.remoteDescription.sdp
                assert " typ relay" in offer and " typ host" not in offer, offer
        finally:
            for room in rooms:
                await room.disconnect()


async def test_server_relay_fallback_forwards_whichever_pair_it_selects(
    tmp_path: Path, coturn: Coturn, relay_only_clients: None
) -> None:
    """--server-ice-relay fallback (what the server did by default before issue 14): it offers
    host and relayed candidates; with relay-only clients aioice may select either of its own
    (aggressive nomination takes the first check to succeed), and media flows both ways."""
    async with sfu_server(tmp_path, coturn, "fallback") as server:
        rooms: list[Room] = []
        try:
            await call_both_ways(server, coturn, rooms)
            for room in rooms:
                offer = room.pc.remoteDescription.sdp
                assert " typ host" in offer and " typ relay" in offer, offer
            selected = {identity: selected_local_type(pc) for identity, pc in server_peers(server).items()}
            assert set(selected) == {"alice", "bob"} and set(selected.values()) <= {"host", "relay"}, selected
        finally:
            for room in rooms:
                await room.disconnect()


def test_server_ice_relay_needs_a_turn_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sfuserver.cli import main

    code = main(["serve", "--data-dir", str(tmp_path), "--port", "8080", "--server-ice-relay", "only",
                 "--ice-server", "stun:127.0.0.1:3478"])  # fmt: skip
    assert code == 1
    assert "needs a TURN server" in capsys.readouterr().err


@pytest.mark.browser
async def test_relay_only_browsers_through_a_relayed_server(tmp_path: Path, coturn: Coturn) -> None:
    """Issue 14's call: two Chromium pages with ``iceTransportPolicy: 'relay'`` (sdk.js
    options), here with the server relayed too, decode each other's video and audio."""
    from .helpers.browser import Page, chromium, harness_site

    turn = {"urls": f"turn:{TEST_ADDRESS}:{coturn.port}", "username": "u", "credential": "p"}
    async with sfu_server(tmp_path, coturn, "only") as server, chromium() as browser, harness_site() as origin:
        pages = [await Page.harness(browser, origin, server.http, name) for name in ("ada", "bob")]
        try:
            for page in pages:
                await page.js(
                    """async ([token, turn]) => {
                        window.room = await Video.connect(token, {name: 'turn', audio: true, video: true,
                                                                  iceServers: [turn], iceTransportPolicy: 'relay'});
                    }""",
                    [server.token(page.name), turn],
                )
            for page in pages:
                await page.wait(
                    """async () => {
                        const [report] = await room.getStats();
                        const video = report.remoteVideoTrackStats[0], audio = report.remoteAudioTrackStats[0];
                        return video && audio && video.framesDecoded > 30 && audio.packetsReceived > 100;
                    }""",
                    message="the other page's video decoded and its audio received",
                )
                local_type = await page.js(
                    """async () => {
                        const stats = await room._pc.getStats();
                        for (const s of stats.values()) {
                            if (s.type === 'transport' && s.selectedCandidatePairId) {
                                return stats.get(stats.get(s.selectedCandidatePairId).localCandidateId).candidateType;
                            }
                        }
                        return null;
                    }"""
                )
                assert local_type == "relay", page.name
            for identity, pc in server_peers(server).items():
                assert selected_local_type(pc) == "relay", identity
        finally:
            for page in pages:
                with contextlib.suppress(Exception):  # a crashed page must not keep the others open
                    await page.js("() => window.room && room.disconnect()")
                await page.close()
