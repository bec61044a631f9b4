"""The official twilio-video SDK (2.36.0, unmodified) in real Chromium joins our rooms through
``/signaling/twilio``, with our own clients in the same rooms."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from aiortc import RTCIceServer

from signaling.client import RemoteMediaTrack
from signaling.tokens import mint_token
from signaling.twilio.service import TWILIO_SIGNALING

from .conftest import DEADLINE, Server, running_server, wait_for
from .helpers.browser import Page, chromium, harness_site
from sfu.workers.pool import RemoteMediaPlane

from .helpers.clients import Clients, EventLog, about, subscribed_data, subscribed_media
from .helpers.twilio_sdk import require_sdk, sdk_site

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'

AUTOPLAY = ["--autoplay-policy=no-user-gesture-required"]  # remote audio is played (its energy measured)


class SdkPage(Page):
    """A tab on the SDK page, recording every request and websocket it opens."""

    requests: list[str]

    @classmethod
    async def load(cls, browser: Any, origin: str, name: str) -> "SdkPage":
        context = await browser.new_context()
        page = cls(await context.new_page(), name)
        page.requests = []
        page.page.on("request", lambda request: page.requests.append(request.url))
        page.page.on("websocket", lambda ws: page.requests.append(ws.url))
        page.page.set_default_timeout(30_000)
        await page.page.goto(f"{origin}/")
        if os.environ.get("TWILIO_SDK_LOG"):  # e.g. debug: every TCMP frame in the page's console
            await page.js("(level) => { window.LOGLEVEL = level; }", os.environ["TWILIO_SDK_LOG"])
        await page.wait("() => window.Twilio && window.Twilio.Video", message="twilio-video to load")
        return page

    async def connect(self, server: Server, identity: str, room: str, options: str = "{}") -> dict[str, Any]:
        """``Video.connect`` as an app does it, our server as ``wsServer`` (``options``: a JS
        expression, may ``await``); the room is ``window.room``, its events are recorded and
        its remote tracks played."""
        return await self.js(  # type: ignore[no-any-return]
            """async ([token, name, ws, extra]) => {
                const options = await eval('(async () => (' + extra + '))()');
                if (window.LOGLEVEL) options.logLevel = window.LOGLEVEL;
                const room = await Twilio.Video.connect(token, {name, wsServer: ws, insights: false, ...options});
                window.room = room;
                record(room, 'room');
                room.on('trackSubscribed', (track) => { if (track.attach) document.body.append(track.attach()); });  // played, as an app does
                return {sid: room.sid, name: room.name, identity: room.localParticipant.identity, lp: room.localParticipant.sid,
                        others: [...room.participants.values()].map((p) => p.identity)};
            }""",
            [server.token(identity), room, twilio_url(server), options],
        )

    async def connect_error(self, token: str, server: Server, room: str) -> dict[str, Any]:
        return await self.js(  # type: ignore[no-any-return]
            """async ([token, name, ws]) => {
                try { await Twilio.Video.connect(token, {name, wsServer: ws, insights: false}); return null; }
                catch (e) { return {code: e.code, name: e.name, message: e.message, twilio: e instanceof Error}; }
            }""",
            [token, room, twilio_url(server)],
        )

    async def wait_logged(self, event: str, **arg0: Any) -> None:
        """Wait for a recorded room event whose first argument has the fields ``arg0``."""
        await self.wait(
            """([event, match]) => window.log.some((e) => e.name === event
                 && Object.entries(match).every(([k, v]) => e.args[0] && e.args[0][k] === v))""",
            [event, arg0],
            message=f"event {event} {arg0}",
        )

    async def wait_media(self, frames: int = 30) -> None:
        """Video decoded and audio heard from the others (inbound-rtp through getStats)."""
        start = await self.js("() => window.inbound()")
        await self.wait(
            """(start) => window.inbound().then((now) => now.video >= start.video + %d && now.audio > start.audio + 25
                                                  && now.audioEnergy > start.audioEnergy)""" % frames,
            start,
            message=f"{frames} more video frames decoded and audio with energy",
        )

    def foreign_requests(self, *origins: str) -> list[str]:
        allowed = {urlsplit(o).netloc for o in origins}
        return [url for url in self.requests if urlsplit(url).netloc not in allowed]


async def wait_for_async(act: Callable[[], Awaitable[Any]], check: Callable[[], Awaitable[Any]], message: str) -> None:
    """Repeat ``act`` until ``check`` holds (polling, with the suite's deadline)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while True:
        await act()
        if await check():
            return
        if loop.time() > end:
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {message}")
        await asyncio.sleep(0.2)


def twilio_url(server: Server) -> str:
    return server.url + "/twilio"


async def test_two_sdk_pages_see_and_hear_each_other_and_exchange_data(server):
    require_sdk()
    async with chromium(extra_flags=AUTOPLAY) as browser, sdk_site() as origin:
        alice = await SdkPage.load(browser, origin, "alice")
        bob = await SdkPage.load(browser, origin, "bob")
        try:
            a = await alice.connect(server, "alice", "sdk-call", "{audio: true, video: true}")
            assert a["sid"].startswith("RM") and a["name"] == "sdk-call" and a["identity"] == "alice" and a["lp"].startswith("PA")
            assert a["others"] == []
            b = await bob.connect(server, "bob", "sdk-call", "{audio: true, video: true}")
            assert b["sid"] == a["sid"] and b["others"] == ["alice"]
            await alice.wait_logged("participantConnected", identity="bob")

            for page, other in ((alice, "bob"), (bob, "alice")):
                await page.wait_logged("trackSubscribed", kind="video")
                await page.wait_logged("trackSubscribed", kind="audio")
                await page.wait_media()

            # A data track published after connecting: one message across.
            await alice.js(
                """async () => {
                    window.chat = new Twilio.Video.LocalDataTrack({name: 'chat'});
                    await room.localParticipant.publishTrack(window.chat);
                }"""
            )
            await bob.wait_logged("trackSubscribed", kind="data", name="chat")
            await bob.js("() => { window.heard = []; [...room.participants.values()][0].on('trackMessage', (m) => window.heard.push(m)); }")
            # (sent until heard: the subscriber's channel may open after the publication)
            await wait_for_async(
                lambda: alice.js("() => { window.chat.send('hello from alice'); return true; }"),
                lambda: bob.js("() => window.heard.includes('hello from alice')"),
                message="bob to hear alice's data message",
            )

            await alice.js("() => room.disconnect()")
            await bob.wait_logged("participantDisconnected", identity="alice")
            for page in (alice, bob):
                assert page.foreign_requests(origin, server.http) == [], page.requests
                assert not page.errors, page.errors
        finally:
            await alice.close()
            await bob.close()


NAMED_TRACKS = "{tracks: await Twilio.Video.createLocalTracks({audio: {name: 'mic'}, video: {name: 'cam'}})}"


async def test_sdk_page_sdk_js_page_and_python_client_meet_in_one_room(server, clients):
    require_sdk()
    py = await clients.join("py", "mixed", publish="vad", receive="packets")
    log = EventLog(py)
    async with chromium(extra_flags=AUTOPLAY) as browser, sdk_site() as origin, harness_site() as harness_origin:
        official = await SdkPage.load(browser, origin, "official")
        ours = await Page.harness(browser, harness_origin, server.http, "ours")
        try:
            # Its data track is in its first offer (an m=application section of its own).
            with_data = "{tracks: [...(await Twilio.Video.createLocalTracks({audio: {name: 'mic'}, video: {name: 'cam'}})), window.chat = new Twilio.Video.LocalDataTrack({name: 'chat'})]}"
            joined = await official.connect(server, "official", "mixed", with_data)
            assert joined["others"] == ["py"]
            await ours.js(
                """async (token) => { window.room = record(await Video.connect(token, {name: 'mixed', audio: true, video: true}), 'room'); }""",
                server.token("ours"),
            )
            await official.wait_logged("participantConnected", identity="ours")
            # The official SDK decodes both others' video and hears their audio.
            await official.wait(
                "() => [...room.participants.values()].every((p) => [...p.videoTracks.values()].some((t) => t.isSubscribed))"
                " && room.participants.size === 2",
                message="subscribed to the video of ours and py",
            )
            await official.wait_media()
            # Our own JS client receives the official SDK's camera, by its name.
            await ours.wait_event("trackSubscribed", on="room", arg1={"trackName": "cam"}, arg2={"identity": "official"})
            width = await ours.wait(
                """() => { const p = [...room.participants.values()].find((p) => p.identity === 'official');
                           const pub = [...p.videoTracks.values()][0];
                           window.el = window.el || document.body.appendChild(pub.track.attach());
                           return window.el.videoWidth; }""",
                message="the official SDK's video playing in our JS client",
            )
            assert width > 0
            # The Python client receives its camera and microphone.
            for name in ("cam", "mic"):
                track = await subscribed_media(py, "official", name)
                assert isinstance(track, RemoteMediaTrack)
                start = track.packets_received
                await wait_for(lambda: track.packets_received > start + 20, message=f"py receiving the official SDK's {name}")
            chat = await subscribed_data(py, "official", "chat")
            heard: list[str] = []
            chat.on("message", heard.append)
            await wait_for_async(
                lambda: official.js("() => { window.chat.send('hi py'); return true; }"),
                lambda: asyncio.sleep(0, "hi py" in heard),
                message="py to hear the official SDK's data track",
            )
            # Leaving: both other kinds of client see it.
            mark = log.mark()
            await official.js("() => room.disconnect()")
            await log.wait("participant_disconnected", about("official"), since=mark)
            await ours.wait_event("participantDisconnected", on="room", arg0={"identity": "official"})
            assert official.foreign_requests(origin, server.http) == [], official.requests
            assert not official.errors and not ours.errors, (official.errors, ours.errors)
        finally:
            await official.close()
            await ours.close()


async def test_on_two_media_workers_the_sdk_and_a_python_client_see_hear_and_message_each_other(tmp_path, netns):
    """``--workers 2``: the SDK's offer, its offered tracks and the held first offer of the
    SFU cross the worker channel."""
    require_sdk()
    async with running_server(tmp_path, workers=2) as (server, _):
        clients = Clients(server)
        try:
            py = await clients.join("py", "workers", publish="vad", receive="packets")
            async with chromium(extra_flags=AUTOPLAY) as browser, sdk_site() as origin:
                page = await SdkPage.load(browser, origin, "page")
                try:
                    with_data = "{tracks: [...(await Twilio.Video.createLocalTracks({audio: {name: 'mic'}, video: {name: 'cam'}})), window.chat = new Twilio.Video.LocalDataTrack({name: 'chat'})]}"
                    joined = await page.connect(server, "sdk", "workers", with_data)
                    assert joined["others"] == ["py"]
                    await page.wait_media()  # the SDK decodes py's video and hears its audio
                    plane = server.registry.plane
                    room = server.registry.find_in_progress("workers")
                    assert isinstance(plane, RemoteMediaPlane) and room is not None
                    names = {t.name for t in plane.placement[room.sid].transports.values()}
                    assert names == {"workers/py", "workers/sdk"}  # both in one worker process
                    for name in ("cam", "mic"):
                        track = await subscribed_media(py, "sdk", name)
                        start = track.packets_received
                        await wait_for(lambda: track.packets_received > start + 20, message=f"py receiving the SDK's {name}")
                    chat = await subscribed_data(py, "sdk", "chat")
                    heard: list[str] = []
                    chat.on("message", heard.append)
                    await wait_for_async(
                        lambda: page.js("() => { window.chat.send('hi py'); return true; }"),
                        lambda: asyncio.sleep(0, "hi py" in heard),
                        message="py to hear the SDK's data track",
                    )
                    assert not page.errors, page.errors
                finally:
                    await page.close()
        finally:
            await clients.close()


async def test_a_bad_token_is_the_sdks_twilio_error(server):
    require_sdk()
    async with chromium() as browser, sdk_site() as origin:
        page = await SdkPage.load(browser, origin, "page")
        try:
            error = await page.connect_error("not-a-token", server, "bad")
            assert error is not None and error["code"] == 20101 and error["message"] == "Invalid Access Token", error
            late = mint_token(server.credentials, "late", ttl=60, now=time.time() - 3600)
            expired = await page.connect_error(late, server, "bad")
            assert expired is not None and expired["code"] == 20104, expired
            assert server.registry.find_in_progress("bad") is None  # nobody joined
        finally:
            await page.close()


async def test_a_dropped_websocket_reconnects_the_same_participant(server, clients):
    require_sdk()
    py = await clients.join("py", "flaky", publish="vad", receive="packets")
    log = EventLog(py)
    async with chromium(extra_flags=AUTOPLAY) as browser, sdk_site() as origin:
        page = await SdkPage.load(browser, origin, "page")
        try:
            joined = await page.connect(server, "sdk", "flaky", NAMED_TRACKS)
            await page.wait_media(frames=10)
            track = await subscribed_media(py, "sdk", "cam")
            start = track.packets_received
            await wait_for(lambda: track.packets_received > start + 20, message="py receiving the SDK's camera")
            mark = log.mark()
            session = next(s for s in server.app[TWILIO_SIGNALING].sessions.values() if s.participant.identity == "sdk")
            assert session.connection is not None
            await session.connection.ws.close(code=4000)  # not 1000 (that is a clean end): the SDK resumes
            await page.wait_logged("reconnecting", code=53001)
            await page.wait_logged("reconnected")
            await log.wait("participant_reconnecting", about("sdk"), since=mark)
            await log.wait("participant_reconnected", about("sdk"), since=mark)
            assert await page.js("() => [room.state, room.localParticipant.sid]") == ["connected", joined["lp"]]
            room = server.registry.find_in_progress("flaky")
            assert room is not None and [p.identity for p in room.participants.values()] == ["py", "sdk"]
            await page.wait_media(frames=10)  # the call goes on
            track = await subscribed_media(py, "sdk", "cam")
            start = track.packets_received
            await wait_for(lambda: track.packets_received > start + 20, message="py still receiving the SDK's camera")
            assert not await page.js("() => window.log.filter((e) => e.name === 'disconnected')")
        finally:
            await page.close()


async def test_without_ice_servers_the_sdk_gets_the_servers_list_msp_features_are_absent_and_the_room_ends(tmp_path, netns):
    require_sdk()
    stun = RTCIceServer(urls="stun:127.0.0.1:3478")
    async with running_server(tmp_path, ice_servers=[stun]) as (server, _):
        async with chromium() as browser, sdk_site() as origin:
            page = await SdkPage.load(browser, origin, "page")
            try:
                # The media-signaling features the server lacks are asked for, and simply absent.
                options = "{audio: false, video: false, dominantSpeaker: true, networkQuality: true, bandwidthProfile: {video: {mode: 'collaboration'}}}"
                await page.connect(server, "alone", "ice", options)
                state = await page.js("() => [room.state, room.dominantSpeaker, room.localParticipant.networkQualityLevel]")
                assert state == ["connected", None, None]
                servers = await page.js("() => window.pcs[0].getConfiguration().iceServers")
                assert [s["urls"] for s in servers] in (["stun:127.0.0.1:3478"], [["stun:127.0.0.1:3478"]]), servers
                sent = await page.js("() => window.sockets[0].url")
                assert sent == twilio_url(server)
                # The room ends (REST, or its own timers): the SDK's RoomCompletedError.
                room = server.registry.find_in_progress("ice")
                assert room is not None
                await room.end()
                await page.wait_logged("disconnected")
                error = await page.js("() => window.log.find((e) => e.name === 'disconnected').args[1]")
                assert error is not None and error["code"] == 53118, error
            finally:
                await page.close()


async def test_mute_publish_and_unpublish_during_the_call_and_the_same_identity_elsewhere(server, clients):
    require_sdk()
    py = await clients.join("py", "changes", publish="vad", receive="packets")
    log = EventLog(py)
    async with chromium(extra_flags=AUTOPLAY) as browser, sdk_site() as origin:
        page = await SdkPage.load(browser, origin, "page")
        try:
            await page.connect(server, "sdk", "changes", NAMED_TRACKS)
            await subscribed_media(py, "sdk", "cam")
            # Muting: the others see the track disabled, then enabled.
            mark = log.mark()
            await page.js("() => [...room.localParticipant.audioTracks.values()][0].track.disable()")
            await log.wait("track_disabled", about("sdk", "mic"), since=mark)
            await page.js("() => [...room.localParticipant.audioTracks.values()][0].track.enable()")
            await log.wait("track_enabled", about("sdk", "mic"), since=mark)
            # A second video track published mid-call (the SDK offers again; it may send it on
            # an m-section our own offer made) reaches the others; unpublished, it goes.
            publication = await page.js(
                """async () => {
                    window.screen2 = await Twilio.Video.createLocalVideoTrack({name: 'screen'});
                    const pub = await room.localParticipant.publishTrack(window.screen2);
                    return {sid: pub.trackSid, name: pub.trackName};
                }"""
            )
            assert publication["sid"].startswith("MT") and publication["name"] == "screen"
            screen = await subscribed_media(py, "sdk", "screen")
            start = screen.packets_received
            await wait_for(lambda: screen.packets_received > start + 20, message="py receiving the SDK's second video")
            mark = log.mark()
            await page.js("() => { room.localParticipant.unpublishTrack(window.screen2); }")
            await log.wait("track_unpublished", about("sdk", "screen"), since=mark)
            await page.wait_media(frames=10)  # py's media still reaches the SDK after the renegotiations
            cam = await subscribed_media(py, "sdk", "cam")
            start = cam.packets_received
            await wait_for(lambda: cam.packets_received > start + 20, message="py still receiving the SDK's camera")
            # The same identity joining elsewhere ends this one with the SDK's 53205.
            await clients.join("sdk", "changes", publish="")
            await page.wait_logged("disconnected")
            error = await page.js("() => window.log.find((e) => e.name === 'disconnected').args[1]")
            assert error is not None and error["code"] == 53205, error
        finally:
            await page.close()
