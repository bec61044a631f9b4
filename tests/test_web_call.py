"""The bundled page in real Chromium: two browser tabs and a Python client meet in one room
through the page's own UI, see and hear each other, chat, mute, share a screen and leave."""

from __future__ import annotations

import pytest

from signaling.client import RemoteDataTrack, RemoteMediaTrack

from .conftest import wait_for
from .helpers.browser import ARTIFACTS, Page, chromium
from .helpers.clients import EventLog, about, subscribed_data, subscribed_media

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'

ROOM = "standup"


async def test_two_browsers_and_a_python_client_meet(server, clients):
    py = await clients.join("py", ROOM, publish="vad", receive="packets")
    log = EventLog(py)
    heard: list[tuple[str, str]] = []

    async with chromium() as browser:
        alice = await Page.open(browser, server.http + "/", "alice")
        bob = await Page.open(browser, server.http + "/", "bob", viewport=(360, 780))  # a phone
        try:
            await alice.join(ROOM, "alice")
            await bob.join(ROOM, "bob")

            # Each page plays the other two participants' video and receives their audio.
            for page, others in ((alice, ("bob", "py")), (bob, ("alice", "py"))):
                for other in others:
                    await page.wait_tile(other, state="connected", mic="on", camera="on")
                    await page.wait_video_playing(other)
                    await page.wait_audio_flowing(other)

            # The Python client receives both browsers' camera and microphone.
            for identity in ("alice", "bob"):
                for name in ("camera", "microphone"):
                    track = await subscribed_media(py, identity, name)
                    assert isinstance(track, RemoteMediaTrack)
                    start = track.packets_received
                    await wait_for(lambda: track.packets_received > start + 20, message=f"py receiving {identity}'s {name}")
                chat = await subscribed_data(py, identity, "chat")
                assert isinstance(chat, RemoteDataTrack)
                chat.on("message", lambda message, who=identity: heard.append((who, message)))

            ARTIFACTS.mkdir(exist_ok=True)
            await alice.page.screenshot(path=str(ARTIFACTS / "three-party-call.png"))
            await bob.page.screenshot(path=str(ARTIFACTS / "three-party-call-360px.png"), full_page=True)
            assert await alice.page.locator("#tiles li.tile").count() == 3  # alice, bob, py

            # Chat: typed in one page, shown in the other and received by the Python client.
            await alice.send_chat("hello from alice")
            await bob.wait_chat("alice: hello from alice")
            await alice.wait_chat("You: hello from alice")
            await bob.send_chat("hi from bob")
            await alice.wait_chat("bob: hi from bob")
            await wait_for(lambda: ("alice", "hello from alice") in heard and ("bob", "hi from bob") in heard, message="py to hear both")
            py_chat = next(t for t in py.local_participant.tracks.values() if t.name == "chat")
            py_chat.send("hello from python")
            await alice.wait_chat("py: hello from python")
            await bob.wait_chat("py: hello from python")

            # A participant whose websocket drops shows as reconnecting, then connected again.
            await alice.js(
                """() => {
                    const tile = [...document.querySelectorAll('#tiles li.tile')].find(t => t.dataset.identity === 'py');
                    window.pyStates = [];
                    new MutationObserver(() => window.pyStates.push(tile.dataset.state))
                        .observe(tile, {attributes: true, attributeFilter: ['data-state']});
                }"""
            )
            await py.drop_signaling()
            await alice.wait("() => window.pyStates.includes('reconnecting') && window.pyStates.at(-1) === 'connected'",
                             message="py's tile: reconnecting, then connected")

            # Muting the microphone in one page shows as muted in the other (and to Python).
            mark = log.mark()
            await alice.page.get_by_role("button", name="Mute").click()
            await bob.wait_tile("alice", mic="muted")
            await log.wait("track_disabled", about("alice", "microphone"), since=mark)
            await alice.wait_tile_local(mic="muted")
            await alice.page.get_by_role("button", name="Unmute").click()
            await bob.wait_tile("alice", mic="on")
            # The camera too: bob stops his, alice sees his tile without video.
            await bob.page.get_by_role("button", name="Stop camera").click()
            await alice.wait_tile("bob", camera="off")
            await bob.page.get_by_role("button", name="Start camera").click()
            await alice.wait_tile("bob", camera="on")

            # Screen share: an extra video track, its own tile on the other side.
            await alice.page.get_by_role("button", name="Share screen").click()
            await bob.wait("() => [...document.querySelectorAll('#tiles li.tile.screen')].some(t => t.dataset.identity === 'alice' && t.querySelector('video') && t.querySelector('video').videoWidth > 0)",
                           message="alice's screen playing in bob's page")
            await subscribed_media(py, "alice", "screen")
            await alice.page.get_by_role("button", name="Stop sharing").click()
            await bob.wait("() => !document.querySelector('#tiles li.tile.screen')", message="alice's screen tile to go")

            # Leaving removes the tile everywhere.
            mark = log.mark()
            await bob.page.get_by_role("button", name="Leave").click()
            await bob.wait("() => !document.querySelector('#join').hidden", message="bob back at the join form")
            await alice.wait_no_tile("bob")
            await log.wait("participant_disconnected", about("bob"), since=mark)
            await py.disconnect()
            await alice.wait_no_tile("py")
            assert await alice.page.locator("#tiles li.tile").count() == 1  # only alice's own
            assert not alice.errors and not bob.errors, (alice.errors, bob.errors)
        finally:
            await alice.close()
            await bob.close()
