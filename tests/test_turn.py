"""TURN: clients that can only relay, and a server that relays itself, through a real coturn.

coturn (Debian's ``turnserver``) runs inside the test namespace on 10.213.0.1, relaying on
10.213.0.1 as well, so nothing leaves the namespace. The clients are aiortc peers with the
relay transport policy (and Chromium pages with ``iceTransportPolicy: 'relay'``): every
packet they send or receive goes through coturn. The aiortc clients are not told about coturn:
they gather with the ICE servers the server hands out in ``connected``.

* By default the server gathers host candidates only, even with a TURN server among its
  ``--ice-server`` entries: relay-only clients reach its host candidate through coturn.
* With ``--server-ice-relay only`` the server's own selected pair is relayed too (the case
  where the writer once called ``is_closing()`` on aioice's TurnTransport and forwarded
  nothing), and media still flows both ways. With ``fallback`` it offers both kinds, and
  media flows whichever aioice selects.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCIceServer, RTCPeerConnection

from sfu.media.peer import IceRelay
from signaling.client import Room, connect
from signaling.ice import IceServers, turn_rest_credential

from .conftest import DEADLINE, Server, running_server, wait_for
from .helpers.clients import VideoReader, media_tracks, read_audio, subscribed_media
from .helpers.coturn import TEST_ADDRESS, Coturn, running_coturn


@pytest.fixture
def coturn(tmp_path: Path, netns: None) -> Iterator[Coturn]:
    """A coturn with a static long-term user u:p, listening and relaying on 10.213.0.1 only."""
    with running_coturn(tmp_path) as turn:
        yield turn


@asynccontextmanager
async def sfu_server(tmp_path: Path, turn: Coturn, relay: IceRelay) -> AsyncIterator[Server]:
    """The server started as ``sfu serve --ice-server TURN --server-ice-relay RELAY``."""
    async with running_server(tmp_path / "sfu", ice_servers=[turn.ice_server], server_ice_relay=relay) as (server, _):
        yield server


def ice_connection(pc: RTCPeerConnection) -> Any:
    """The aioice Connection under ``pc``'s bundle (the SCTP m-section's, which every
    transceiver bundles onto on both the server and the client)."""
    assert pc.sctp is not None
    return pc.sctp.transport.transport._connection


def selected_local_type(pc: RTCPeerConnection) -> str | None:
    pair = ice_connection(pc)._nominated.get(1)
    return None if pair is None else str(pair.local_candidate.type)


def server_peers(server: Server) -> dict[str, RTCPeerConnection]:
    return {p.identity: p.transport.peer.pc for room in server.registry.rooms.values() for p in room.participants.values()}


async def call_both_ways(server: Server, rooms: list[Room]) -> tuple[Room, Room]:
    """alice and bob (appended to ``rooms``, for the caller to disconnect), relay-only
    through the TURN server the server hands them, each decode the other's video and audio."""
    for identity in ("alice", "bob"):  # the TURN server comes from the server (`connected`), not from here
        rooms.append(await connect(server.url, server.token(identity), name="turn", tracks=media_tracks("va"),
                                   ice_transport_policy="relay"))  # fmt: skip
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
    tmp_path: Path, coturn: Coturn
) -> None:
    """Default: a TURN server among --ice-server is not used by the server itself."""
    async with sfu_server(tmp_path, coturn, "off") as server:
        rooms: list[Room] = []
        try:
            alice, bob = await call_both_ways(server, rooms)
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
    tmp_path: Path, coturn: Coturn
) -> None:
    """--server-ice-relay only: the server's selected local candidate is relayed (the path
    whose writer used to raise AttributeError on every packet), and media flows both ways."""
    async with sfu_server(tmp_path, coturn, "only") as server:
        rooms: list[Room] = []
        try:
            alice, bob = await call_both_ways(server, rooms)
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
    tmp_path: Path, coturn: Coturn
) -> None:
    """--server-ice-relay fallback (what the server did by default before issue 14): it offers
    host and relayed candidates; with relay-only clients aioice may select either of its own
    (aggressive nomination takes the first check to succeed), and media flows both ways."""
    async with sfu_server(tmp_path, coturn, "fallback") as server:
        rooms: list[Room] = []
        try:
            await call_both_ways(server, rooms)
            for room in rooms:
                offer = room.pc.remoteDescription.sdp
                assert " typ host" in offer and " typ relay" in offer, offer
            selected = {identity: selected_local_type(pc) for identity, pc in server_peers(server).items()}
            assert set(selected) == {"alice", "bob"} and set(selected.values()) <= {"host", "relay"}, selected
        finally:
            for room in rooms:
                await room.disconnect()


STUN = RTCIceServer(urls="stun:10.213.0.1:3478")  # (unit test only: nothing answers there)
REST_REFERENCE = "Cd/49soE35ICqcJF/bCTn8Z4OyE="  # the credential of "1700000000:alice" under secret "north"
SECRET_TURN = RTCIceServer(urls="turn:10.213.0.1:3478?transport=udp", username="operator", credential="s3cret-Pa55")


def handed_out(turn: Coturn) -> list[RTCIceServer]:
    """A server's --ice-server list: coturn's STUN, and a TURN user it does not know (its
    refusal is as quick as an answer: nothing waits on an address where no one listens)."""
    return [RTCIceServer(urls=f"stun:{TEST_ADDRESS}:{turn.port}"),
            RTCIceServer(urls=f"{turn.url}?transport=udp", username="operator", credential="s3cret-Pa55")]  # fmt: skip


async def raw_connect(server: Server, token: str) -> dict[str, Any]:
    """The server's first answer to a ``connect`` with ``token`` (no peer connection)."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        await ws.send_json({"type": "connect", "version": 1, "token": token, "name": "ice"})
        while True:
            message = await ws.receive_json(timeout=DEADLINE)
            if message["type"] != "heartbeat":
                return message


async def test_connected_hands_the_ice_servers_to_authenticated_participants_only(
    tmp_path: Path, coturn: Coturn, caplog: pytest.LogCaptureFixture
) -> None:
    """``--ice-server`` entries reach the client in ``connected`` (the TURN credential only
    after a valid token), the Python client gathers with its own ones plus the server's, and
    no log line carries the credential."""
    caplog.set_level(logging.DEBUG)
    stun, turn = handed_out(coturn)
    async with running_server(tmp_path / "sfu", ice_servers=[stun, turn]) as (server, _):
        refused = await raw_connect(server, "not-a-token")
        assert refused["type"] == "error" and refused["code"] == 20101, refused
        assert "s3cret" not in str(refused)
        connected = await raw_connect(server, server.token("wire"))
        assert connected["type"] == "connected", connected
        assert connected["ice_servers"] == [
            {"urls": stun.urls},
            {"urls": turn.urls, "username": "operator", "credential": "s3cret-Pa55"},
        ]
        own = coturn.ice_server
        room = await connect(server.url, server.token("py"), name="ice", ice_servers=[own])
        try:
            assert [(s.urls, s.username, s.credential) for s in room.ice_servers] == [
                (own.urls, "u", "p"), (stun.urls, None, None), (turn.urls, "operator", "s3cret-Pa55"),
            ]  # fmt: skip
            # Both sides done gathering (the server before its offer), so nothing is left asking
            # coturn when the call ends.
            await wait_for(lambda: room.pc.remoteDescription is not None and room.pc.iceGatheringState == "complete",
                           message="the client's answer gathered")  # fmt: skip
        finally:
            await room.disconnect()
    leaked = [r.getMessage() for r in caplog.records if "s3cret" in r.getMessage()]
    assert not leaked, leaked


async def test_server_without_ice_servers_hands_out_an_empty_list(tmp_path: Path, netns: None) -> None:
    async with running_server(tmp_path) as (server, _):
        connected = await raw_connect(server, server.token("wire"))
        assert connected["type"] == "connected" and connected["ice_servers"] == [], connected


def test_turn_rest_credential_is_coturns_hmac_of_expiry_and_identity() -> None:
    """The reference value: base64(HMAC-SHA1(secret, "expiry:identity")), as coturn checks it
    (computed independently with openssl: printf '1700000000:alice' | openssl dgst -sha1 -hmac
    north -binary | base64)."""
    assert turn_rest_credential("north", "alice", 1700000000) == ("1700000000:alice", REST_REFERENCE)
    minted = RTCIceServer(urls="turn:h:3478")
    servers = IceServers([STUN, SECRET_TURN, minted], turn_secret="north", turn_ttl=600, clock=lambda: 1699999400.5)
    assert servers.for_participant("alice") == [
        {"urls": "stun:10.213.0.1:3478"},  # STUN, and TURN with its own credential, as given
        {"urls": "turn:10.213.0.1:3478?transport=udp", "username": "operator", "credential": "s3cret-Pa55"},
        {"urls": "turn:h:3478", "username": "1700000000:alice", "credential": REST_REFERENCE},
    ]
    assert "north" not in repr(servers) and "s3cret" not in repr(servers)
    assert IceServers([minted]).for_participant("alice") == [{"urls": "turn:h:3478"}]  # no secret: nothing minted


async def test_relay_only_clients_through_coturn_with_minted_turn_rest_credentials(tmp_path: Path, netns: None) -> None:
    """coturn with ``use-auth-secret``: each participant gets its own time-limited credential
    (``sfu serve --turn-secret``), and relay-only clients call each other through coturn with it."""
    with running_coturn(tmp_path, auth_secret="shared-north") as turn:
        settings = {"ice_servers": [RTCIceServer(urls=turn.url)], "turn_secret": "shared-north", "turn_ttl": 600}
        async with running_server(tmp_path / "sfu", **settings) as (server, _):  # sfu serve --turn-secret
            rooms: list[Room] = []
            try:
                alice, bob = await call_both_ways(server, rooms)
                for room, identity in ((alice, "alice"), (bob, "bob")):
                    (minted,) = room.ice_servers
                    expiry, _, who = str(minted.username).partition(":")
                    assert who == identity and 0 < int(expiry) - time.time() <= 600, minted.username
                    assert selected_local_type(room.pc) == "relay"
            finally:
                for room in rooms:
                    await room.disconnect()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--ice-server", "turn:127.0.0.1:3478"], "has no user:password"),
        (["--turn-secret", "s", "--ice-server", "turn:u:p@127.0.0.1:3478"], "--turn-secret needs a TURN server"),
        (["--turn-secret", "s", "--ice-server", "turn:127.0.0.1:3478", "--server-ice-relay", "only"], "its own user:password"),
    ],
)
def test_turn_secret_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], error: str) -> None:
    from sfuserver.cli import main

    assert main(["serve", "--data-dir", str(tmp_path), "--port", "8080", *options]) == 1
    assert error in capsys.readouterr().err


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
