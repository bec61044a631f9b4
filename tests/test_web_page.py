"""The bundled page in real Chromium when things go wrong, and by keyboard on a phone-sized
screen: refused tokens, a full room, an unreachable server, a denied camera or microphone."""

from __future__ import annotations

import pytest

import time
from pathlib import Path

from aiohttp import web

from sfu.credentials import generate
from sfu.room import RoomSettings
from sfuserver.app import ServerConfig, build_app
from signaling.client import RemoteMediaTrack
from signaling.tokens import mint_token

from .conftest import wait_for
from .helpers.browser import ARTIFACTS, Page, chromium, deny_media
from .helpers.clients import subscribed_media

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'


async def test_refusals_show_their_message(server, clients, tmp_path: Path):
    server.registry.create_room("full", RoomSettings(max_participants=2, created_via_rest=True))
    await clients.join("one", "full", publish="")
    await clients.join("two", "full", publish="")

    # A server of its own, to be stopped while a page is open.
    app = build_app(ServerConfig(port=0, data_dir=tmp_path / "doomed"), generate())
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    doomed = "http://127.0.0.1:%d/" % site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/", "web")
        try:
            # A refused token: the server's code and message, and what to do.
            await page.fill_join("standup", "ada", token="not-a-token")
            await page.page.get_by_role("button", name="Join").click()
            message = await page.wait_message()
            assert "access token was refused" in message and "Invalid Access Token" in message and "20101" in message, message
            assert await page.page.locator("#call").is_hidden()
            expired = mint_token(server.credentials, "ada", ttl=60, now=time.time() - 3600)
            await page.page.get_by_label("Access token").fill(expired)
            await page.page.get_by_role("button", name="Join").click()
            message = await page.wait("() => /20104/.test(document.querySelector('#message').textContent) && document.querySelector('#message').textContent",
                                      message="the expired-token message")
            assert "Access Token expired" in message, message

            # A full room.
            await page.page.get_by_label("Access token").fill("")
            await page.page.get_by_label("Room name").fill("full")
            await page.page.get_by_role("button", name="Join").click()
            message = await page.wait("() => /full/.test(document.querySelector('#message').textContent) && document.querySelector('#message').textContent",
                                      message="the full-room message")
            assert 'The room "full" is full' in message and "53105" in message, message
            await page.page.screenshot(path=str(_artifact("refused-full-room.png")))
        finally:
            await page.close()

        # The server goes away after the page loaded: both the token request and the websocket.
        page = await Page.open(browser, doomed, "web")
        try:
            await page.fill_join("standup", "ada")
            await runner.cleanup()
            await page.page.get_by_role("button", name="Join").click()
            message = await page.wait_message()
            assert "Can't reach the server" in message, message
            await page.page.get_by_text("I have an access token").click()
            await page.page.get_by_label("Access token").fill(server.token("ada"))
            await page.js("() => { document.querySelector('#message').hidden = true; }")
            await page.page.get_by_role("button", name="Join").click()
            message = await page.wait_message()
            assert "Can't reach the server" in message, message
            assert await page.page.locator("#call").is_hidden()
        finally:
            await page.close()


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


async def test_denied_camera_and_microphone(server, clients):
    py = await clients.join("py", "quiet", publish="va", receive="packets")
    async with chromium(fake_ui=False) as browser:
        # Both refused: the page says so, and joins to watch and listen.
        context = await browser.new_context()
        tab = await context.new_page()
        await deny_media(browser, tab, server.http)
        page = Page(tab, "web")
        try:
            await tab.goto(server.http + "/")
            message = await page.wait_message()
            assert "Camera and microphone access was denied" in message and "still join to watch, listen and chat" in message, message
            assert await tab.get_by_label("Microphone on").is_disabled()
            await page.join("quiet", "viewer")
            await page.wait_tile_local(mic="none", camera="none")
            assert await tab.get_by_role("button", name="No microphone").is_disabled()
            assert await tab.get_by_role("button", name="No camera").is_disabled()
            await page.wait_video_playing("py")
            await page.wait_audio_flowing("py")
        finally:
            await page.close()

        # Only the camera refused: the microphone still works and is heard.
        context = await browser.new_context()
        tab = await context.new_page()
        await deny_media(browser, tab, server.http, camera=True, microphone=False)
        page = Page(tab, "web")
        try:
            await tab.goto(server.http + "/")
            message = await page.wait_message()
            assert "Camera access was denied" in message and "Microphone" not in message, message
            await page.join("quiet", "talker")
            await page.wait_tile_local(mic="on", camera="none")
            track = await subscribed_media(py, "talker", "microphone")
            assert isinstance(track, RemoteMediaTrack)
            await wait_for(lambda: track.packets_received > 20, message="py hearing the talker")
            assert not any(p.kind == "video" for p in next(iter(py.participants.values())).tracks.values())
        finally:
            await page.close()


async def test_keyboard_only_on_a_phone_sized_screen(server, clients):
    await clients.join("py", "keys", publish="va", receive="packets")
    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/?room=keys", "web", viewport=(360, 740))
        tab = page.page
        try:
            await page.wait_preview()
            await tab.screenshot(path=str(_artifact("join-360px.png")), full_page=True)
            assert await page.js("() => document.documentElement.scrollWidth") <= 360  # no sideways scrolling
            # Tab order: skip link, room, name, token disclosure, toggles, devices, Join; all labelled.
            order = []
            for _ in range(9):
                await tab.keyboard.press("Tab")
                order.append(await page.js("""() => {
                    const el = document.activeElement;
                    return el.labels && el.labels.length ? el.labels[0].textContent.trim() : (el.getAttribute('aria-label') || el.textContent.trim());
                }"""))
            assert order == ["Skip to content", "Room name", "Your name", "I have an access token", "Microphone on", "Camera on",
                             "Camera", "Microphone", "Join"], order
            assert await tab.get_by_label("Room name").input_value() == "keys"  # from ?room=
            await tab.get_by_label("Your name").focus()
            await tab.keyboard.type("Kay")
            await tab.keyboard.press("Enter")  # submits the form
            await page.wait("() => !document.querySelector('#call').hidden", message="the call")
            await page.wait_tile("py", state="connected")
            # Focus lands on the first control; Space and Enter operate the buttons.
            assert await page.js("() => document.activeElement.id") == "mic-button"
            await tab.keyboard.press("Space")
            await page.wait_tile_local(mic="muted")
            assert await page.js("() => document.activeElement.textContent.trim()") == "Unmute"  # focus stays, label says what's next
            await tab.keyboard.press("Tab")
            await tab.keyboard.press("Enter")
            await page.wait_tile_local(camera="off")
            for name in ("Unmute", "Start camera", "Share screen", "Leave", "Send"):
                box = await tab.get_by_role("button", name=name).bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360 and box["height"] >= 44, (name, box)
            assert await page.js("() => document.documentElement.scrollWidth") <= 360
            await tab.get_by_label("Message", exact=True).focus()
            await tab.keyboard.type("typed only")
            await tab.keyboard.press("Enter")
            await page.wait_chat("You: typed only")
            await tab.screenshot(path=str(_artifact("call-360px.png")), full_page=True)
            await tab.get_by_role("button", name="Leave").focus()
            await tab.keyboard.press("Enter")
            await page.wait("() => !document.querySelector('#join').hidden", message="back at the join form")
            assert await page.js("() => document.activeElement.id") == "join-button"
            assert not page.errors, page.errors
        finally:
            await page.close()


async def test_dev_token_refused_to_a_rebound_name(server):
    """A page reached through a name that resolves to 127.0.0.1 (DNS rebinding: an attacker's
    domain) gets no development token, and says what to do instead; by a loopback name it joins."""
    port = int(server.http.rsplit(":", 1)[1])
    async with chromium(extra_flags=["--host-resolver-rules=MAP rebound.test 127.0.0.1"]) as browser:
        page = await Page.open(browser, f"http://rebound.test:{port}/", "web")
        try:
            await page.fill_join("standup", "ada")
            await page.page.get_by_role("button", name="Join").click()
            message = await page.wait_message()
            assert "does not hand out development tokens to this page" in message and "rebound.test" in message, message
            assert f"http://localhost:{port}/" in message and "I have an access token" in message, message
            assert await page.page.locator("#call").is_hidden()
            # A token from elsewhere still works there (the page, its CSP and signaling do).
            await page.page.get_by_text("I have an access token", exact=True).click()
            await page.page.get_by_label("Access token").fill(server.token("ada"))
            await page.page.get_by_role("button", name="Join").click()
            await page.wait("() => !document.querySelector('#call').hidden", message="the call")
        finally:
            await page.close()
        page = await Page.open(browser, f"http://localhost:{port}/", "web")
        try:
            await page.join("standup", "bob")  # a development token for a loopback name
        finally:
            await page.close()
