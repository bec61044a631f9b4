"""TURN for browsers: Chromium pages get the server's ``--ice-server`` list themselves.

coturn runs inside the test namespace (tests/helpers/coturn.py). The pages never name it:
sdk.js takes the ICE servers from ``connected`` (as Twilio's SDK takes them from its Network
Traversal Service), and with ``iceTransportPolicy: 'relay'`` every packet goes through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCIceServer

from .conftest import running_server
from .helpers.browser import Page, chromium, harness_site
from .helpers.coturn import Coturn, running_coturn

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'

# The local candidate type of the pair each page's ICE transport selected (or the nominated
# succeeded pair when the transport stats do not name one).
SELECTED_LOCAL_TYPE = """async (pc) => {
    const stats = await pc.getStats();
    let pair = null;
    for (const s of stats.values()) {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    }
    if (!pair) {
        for (const s of stats.values()) {
            if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
        }
    }
    const local = pair && stats.get(pair.localCandidateId);
    return local ? local.candidateType : null;
}"""


@pytest.fixture
def coturn(tmp_path: Path, netns: None) -> Iterator[Coturn]:
    with running_coturn(tmp_path) as turn:
        yield turn


def entries(ice_servers: list[dict[str, Any]]) -> list[tuple[list[str], str | None, str | None]]:
    """A page's RTCConfiguration.iceServers as (urls, username, credential); Chromium lists
    ``urls`` as an array and a missing username / credential as ''."""
    out = []
    for s in ice_servers:
        urls = s["urls"] if isinstance(s["urls"], list) else [s["urls"]]
        out.append((urls, s.get("username") or None, s.get("credential") or None))
    return out


async def selected_local_type(page: Page, pc_expression: str) -> Any:
    return await page.js(f"() => ({SELECTED_LOCAL_TYPE})({pc_expression})")


async def test_relay_only_pages_call_through_the_servers_turn(tmp_path: Path, coturn: Coturn) -> None:
    """Two sdk.js pages with ``iceTransportPolicy: 'relay'`` and no ``iceServers`` of their
    own decode each other's video through the coturn given only to ``sfu serve``."""
    async with running_server(tmp_path / "sfu", ice_servers=[coturn.ice_server]) as (server, _), chromium() as browser, harness_site() as origin:
        pages = [await Page.harness(browser, origin, server.http, name) for name in ("ada", "bob")]
        try:
            for page in pages:
                await page.js(
                    """async (token) => {
                        window.room = await Video.connect(token, {name: 'turn-web', audio: true, video: true, iceTransportPolicy: 'relay'});
                    }""",
                    server.token(page.name),
                )
            for page in pages:
                config = await page.js("() => room._pc.getConfiguration()")
                assert config["iceTransportPolicy"] == "relay"
                assert entries(config["iceServers"]) == [([coturn.url], "u", "p")], config
                await page.wait(
                    """async () => {
                        const [report] = await room.getStats();
                        const video = report.remoteVideoTrackStats[0];
                        return video && video.framesDecoded > 30;
                    }""",
                    message="the other page's video decoded",
                )
                assert await selected_local_type(page, "room._pc") == "relay", page.name
                candidates = await page.js(
                    """async () => [...(await room._pc.getStats()).values()]
                        .filter(s => s.type === 'local-candidate').map(s => s.candidateType)"""
                )
                assert candidates and set(candidates) == {"relay"}, candidates
        finally:
            for page in pages:
                with contextlib.suppress(Exception):  # a crashed page must not keep the others open
                    await page.js("() => window.room && room.disconnect()")
                await page.close()


async def test_bundled_page_relays_through_the_servers_turn(tmp_path: Path, coturn: Coturn) -> None:
    """The bundled page passes no ICE servers: with ``?iceTransportPolicy=relay`` its call goes
    through the server's TURN, both ways."""
    async with running_server(tmp_path / "sfu", ice_servers=[coturn.ice_server]) as (server, _), chromium() as browser:
        pages = [await Page.open(browser, f"{server.http}/?iceTransportPolicy=relay", name) for name in ("ada", "bob")]
        try:
            for page in pages:
                await page.join("turn-page", page.name)
            for page, other in zip(pages, ("bob", "ada")):
                await page.wait_video_playing(other)
                assert await selected_local_type(page, "window.room._pc") == "relay", page.name
        finally:
            for page in pages:
                await page.close()


async def test_ice_servers_given_to_connect_replace_the_servers(tmp_path: Path, coturn: Coturn) -> None:
    """Twilio semantics: ``iceServers`` in the connect options replace the server's list (an
    empty array: none at all); without the option the page gathers with the server's."""
    stun = RTCIceServer(urls=f"stun:10.213.0.1:{coturn.port}")
    turn = RTCIceServer(urls=coturn.url, username="op", credential="pw")
    async with running_server(tmp_path / "sfu", ice_servers=[stun, turn]) as (server, _), chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "ada")
        try:
            configs = await page.js(
                """async ([one, two, three]) => {
                    const out = [];
                    for (const [token, options] of [[one, {}], [two, {iceServers: []}],
                                                    [three, {iceServers: [{urls: 'stun:10.213.0.1:9'}]}]]) {
                        const room = await Video.connect(token, {name: 'ice', audio: false, video: false, ...options});
                        out.push(room._pc.getConfiguration().iceServers);
                        // The server's offer (it gathers before sending it): leaving earlier would
                        // close its peer while it is still asking the STUN server.
                        for (let i = 0; i < 600 && !room._pc.remoteDescription; i++) await new Promise((r) => setTimeout(r, 50));
                        await room.disconnect();
                    }
                    return out;
                }""",
                [server.token("one"), server.token("two"), server.token("three")],
            )
            server_list, empty, own = map(entries, configs)
            assert server_list == [([stun.urls], None, None), ([turn.urls], "op", "pw")], configs
            assert empty == []
            assert own == [(["stun:10.213.0.1:9"], None, None)], configs
        finally:
            await page.close()
