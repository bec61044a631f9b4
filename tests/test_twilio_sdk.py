"""The official twilio-video SDK (2.36.0, unmodified) in real Chromium joins our rooms through
``/signaling/twilio``, with our own clients in the same rooms."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import DEADLINE, Server
from .helpers.browser import Page, chromium
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
        """``Video.connect`` as an app does it, our server as ``wsServer``; the room is
        ``window.room`` and its events are recorded."""
        return await self.js(  # type: ignore[no-any-return]
            """async ([token, name, ws, extra]) => {
                const room = await Twilio.Video.connect(token, {name, wsServer: ws, insights: false, logLevel: window.LOGLEVEL || "off", ...eval('(' + extra + ')')});
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
