"""What the JS client and the bundled page tell people when something goes wrong during a call,
in real Chromium against the real server: signaling errors, subscriptions and publications the
browser cannot take (no codec in common), and a server that is restarting or unreachable told
apart from a room that ended.

The server's side of some of these (``draining``, ``disconnected`` 53001 on shutdown, error
entries in ``subscribed`` / ``published``) is sent here through the participant's real
signaling session, exactly as signaling/protocol.py documents them."""

from __future__ import annotations

import pytest

from typing import Any

from signaling.server import Session

from .conftest import Server
from .helpers.browser import Page, chromium, harness_site

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'

CODEC_ERROR = {"code": 53404, "message": "No supported codec: the room's video codec is H264"}
SHUTDOWN = {"type": "disconnected", "status": "disconnected", "code": 53001, "message": "The server is shutting down",
            "reason": "server_shutdown"}


def session_of(server: Server, identity: str) -> Session:
    """The live signaling session of ``identity`` (the newest, if it joined more than once)."""
    found = [s for s in server.signaling.sessions.values() if s.participant.identity == identity and not s.ended and s.ws is not None]
    assert found, f"no live session for {identity}"
    return found[-1]


def fail_subscription(session: Session, track_sid: str, error: dict[str, Any] = CODEC_ERROR) -> None:
    """Send the subscriber its current `subscribed` map with ``track_sid`` rejected."""
    state = session.participant.subscribed_state()
    tracks = [e for e in state["tracks"] if e["sid"] != track_sid] + [{"sid": track_sid, "error": error}]
    session.send({"type": "update", "subscribed": {"revision": state["revision"] + 1, "tracks": tracks}})


def fail_publication(session: Session, client_id: str, error: dict[str, Any] = CODEC_ERROR) -> None:
    """Send the publisher its `published` list with ``client_id`` failed."""
    state = session.participant.published_state()
    tracks = [dict(e, state="failed", error=error) if e["id"] == client_id else e for e in state["tracks"]]
    assert any(e["id"] == client_id for e in tracks), (client_id, state)
    session.send({"type": "update", "published": {"revision": state["revision"] + 1, "tracks": tracks}})


async def test_sdk_failed_subscription_and_publication(server, clients):
    await clients.join("py", "codec", publish="vad", receive="packets")
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            await page.js(
                """async (token) => {
                    window.room = record(await Video.connect(token, {name: 'codec', tracks: []}), 'room');
                    record([...room.participants.values()][0], 'py');
                    record(room.localParticipant, 'lp');
                }""",
                server.token("web"),
            )
            for name in ("cam", "mic", "chat"):
                await page.wait_event("trackSubscribed", on="room", arg1={"trackName": name})
            session = session_of(server, "web")
            cam = await page.js("() => [...room.participants.values()][0].videoTracks.keys().next().value")

            # A subscription the browser rejected: trackSubscriptionFailed on the room and the
            # participant (Twilio's arguments), the publication counts as unsubscribed.
            fail_subscription(session, cam)
            await page.wait_event("trackUnsubscribed", on="room", arg1={"trackName": "cam"})
            event = await page.wait_event("trackSubscriptionFailed", on="room", arg1={"trackName": "cam"}, arg2={"identity": "py"})
            assert event["args"][0] == {"code": 53404, "message": CODEC_ERROR["message"], "isTwilioError": True}, event
            assert event["args"][1]["isSubscribed"] is False and event["args"][1]["kind"] == "video", event
            await page.wait_event("trackSubscriptionFailed", on="py", arg0={"code": 53404}, arg1={"trackName": "cam", "isSubscribed": False})
            subscribed = await page.js("() => [...[...room.participants.values()][0].tracks.values()].map(p => [p.trackName, p.isSubscribed]).sort()")
            assert subscribed == [["cam", False], ["chat", True], ["mic", True]], subscribed
            fail_subscription(session, cam)  # the same failure again: reported once
            await page.js("() => new Promise(r => setTimeout(r, 0))")
            await page.wait("() => room._queue.then(() => true)")
            assert len([e for e in await page.events("trackSubscriptionFailed") if e["on"] == "room"]) == 1

            # A failure that arrives before the track's publication: reported once it is known.
            py = session_of(server, "py").participant.describe()
            fail_subscription(session, "MTlater0000000000000000000000000", {"code": 53404, "message": "No supported codec"})
            py["revision"] += 1000
            py["tracks"] = py["tracks"] + [{"sid": "MTlater0000000000000000000000000", "name": "later", "kind": "video", "enabled": True}]
            session.send({"type": "update", "participants": [py]})
            await page.wait_event("trackPublished", on="room", arg0={"trackName": "later"})
            await page.wait_event("trackSubscriptionFailed", on="room", arg0={"code": 53404}, arg1={"trackName": "later", "isSubscribed": False})

            # A publication the room cannot carry: trackPublicationFailed on the LocalParticipant,
            # and the pending publishTrack() rejects with that error.
            client_id = await page.js("async () => { window.late = await Video.createLocalVideoTrack({name: 'late'}); return window.late.id; }")
            sent: list[bool] = []

            def on_published_changed() -> None:
                if not sent and session.participant.track_by_client_id(client_id) is not None:
                    sent.append(True)  # right after the server lists it as pending
                    fail_publication(session, client_id)

            session.participant.on("published_changed", on_published_changed)
            refused = await page.js("() => errorOf(room.localParticipant.publishTrack(window.late))")
            assert refused == {"code": 53404, "message": CODEC_ERROR["message"], "isTwilioError": True}, refused
            await page.wait_event("trackPublicationFailed", on="lp", arg0={"code": 53404}, arg1={"name": "late", "kind": "video"})
            assert await page.js("() => [...room.localParticipant.tracks.values()].filter(p => p.trackName === 'late').length") == 0

            # A published track that fails later is no longer listed as published.
            client_id = await page.js(
                """async () => { window.chat = new Video.LocalDataTrack({name: 'chat'});
                                 await room.localParticipant.publishTrack(window.chat); return window.chat.id; }"""
            )
            fail_publication(session, client_id, {"code": 53404, "message": "No supported codec for data"})
            await page.wait_event("trackPublicationFailed", on="lp", arg1={"name": "chat", "kind": "data"})
            assert await page.js("() => room.localParticipant.dataTracks.size") == 0
            assert await page.js("() => room.state") == "connected"
            assert not page.errors, page.errors
        finally:
            await page.close()


async def test_sdk_server_draining_and_shutdown(server):
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            await page.js("async (token) => { window.room = record(await Video.connect(token, {name: 'drain', tracks: []}), 'room'); }",
                          server.token("web"))
            session = session_of(server, "web")
            session.send({"type": "draining", "timeout": 25})
            await page.wait_event("serverDraining", on="room", arg0=25)
            assert await page.js("() => room.state") == "connected"  # not an error: the call goes on
            assert not await page.events("error")
            session.send(SHUTDOWN)
            event = await page.wait_event("disconnected", on="room")
            assert event["args"][1] == {"code": 53001, "message": "The server is shutting down", "isTwilioError": True}, event
        finally:
            await page.close()


async def _wait_banner(page: Page, pattern: str) -> str:
    return await page.wait(
        "(pattern) => { const m = document.querySelector('#message'); return !m.hidden && new RegExp(pattern).test(m.textContent) && m.textContent; }",
        pattern,
        message=f"the banner to match {pattern!r}",
    )


async def _dismiss(page: Page) -> None:
    await page.page.get_by_role("button", name="Dismiss message").click()
    await page.wait("() => document.querySelector('#message').hidden", message="the banner to go")


async def test_page_shows_errors_during_a_call(server, clients):
    await clients.join("py", "errors", publish="va", receive="packets")
    await clients.join("py2", "errors", publish="v", receive="packets")
    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/", "web")
        tab = page.page
        try:
            await page.join("errors", "ada")
            await page.wait_tile("py", state="connected")
            await page.wait("() => room.participants.size === 2 && [...room.participants.values()].every(p => p.videoTracks.values().next().value?.isSubscribed)",
                            message="py's and py2's video subscribed")
            await page.wait("() => room.localParticipant.videoTracks.size === 1", message="the camera published")

            # A signaling error during the call (the server refuses a message): a visible banner,
            # dismissable by keyboard; the call goes on.
            await page.js("() => room._send({type: 'bogus'})")
            text = await _wait_banner(page, "53000")
            assert "Unknown message type" in text and "The call goes on" in text, text
            assert await page.js("() => document.querySelector('#message').dataset.kind") == "error"
            assert await tab.locator("#room-state").text_content() == "Connected"
            assert await tab.locator("#call").is_visible()
            await tab.get_by_role("button", name="Dismiss message").focus()
            await tab.keyboard.press("Enter")
            await page.wait("() => document.querySelector('#message').hidden", message="the banner dismissed")
            assert await page.js("() => document.activeElement.id") == "mic-button"  # focus lands somewhere useful

            # py's video cannot be received: the page says whose, what, and why, also on the tile.
            video = "(identity) => [...room.participants.values()].find(p => p.identity === identity).videoTracks.keys().next().value"
            py_cam = await page.js(video, "py")
            fail_subscription(session_of(server, "ada"), py_cam)
            text = await _wait_banner(page, "53404")
            assert "py's video can't be shown: your browser lacks the room's video codec" in text and "H264" in text, text
            await page.wait_tile("py", camera="unsupported")
            assert await page.page.locator('#tiles li.tile[data-identity="py"] .badge.cam').text_content() == "Video unsupported"
            await page.wait_tile("py2", camera="on")
            await _dismiss(page)
            # In a room whose codec the browser lacks that is everyone's video: one message names them all.
            state = session_of(server, "ada").participant.subscribed_state()
            py2_cam = await page.js(video, "py2")
            failed = [{"sid": sid, "error": CODEC_ERROR} for sid in (py_cam, py2_cam)]
            tracks = [e for e in state["tracks"] if e["sid"] not in (py_cam, py2_cam)] + failed
            session_of(server, "ada").send({"type": "update", "subscribed": {"revision": state["revision"] + 1, "tracks": tracks}})
            text = await _wait_banner(page, "py2")
            assert "py's video and py2's video can't be shown: your browser lacks the room's video codec" in text, text
            await page.wait_tile("py2", camera="unsupported")
            await _dismiss(page)

            # Our own camera cannot be sent into the room.
            camera = await page.js("() => room.localParticipant.videoTracks.values().next().value.track.id")
            fail_publication(session_of(server, "ada"), camera)
            text = await _wait_banner(page, "53404")
            assert "Your camera can't be sent: your browser lacks the room's video codec" in text, text
            assert await tab.locator("#call").is_visible()
            assert not page.errors, page.errors
        finally:
            await page.close()


async def test_page_tells_a_server_restart_from_the_room_ending(server):
    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/", "web")
        tab = page.page
        try:
            # Draining: a warning, not an error, and the call goes on.
            await page.join("restart", "ada")
            session_of(server, "ada").send({"type": "draining", "timeout": 20})
            text = await _wait_banner(page, "restarting")
            assert "The server is restarting: this call will end within 20 s" in text, text
            assert await page.js("() => document.querySelector('#message').dataset.kind") == "warning"
            assert await tab.locator("#room-state").text_content() == "Server restarting"
            assert await tab.locator("#call").is_visible()

            # The server shuts down (53001, reason server_shutdown): not "the room has ended".
            session_of(server, "ada").send(SHUTDOWN)
            await page.wait("() => !document.querySelector('#join').hidden", message="back at the join form")
            text = await _wait_banner(page, "53001")
            assert "The server is restarting or unreachable" in text and "has ended" not in text, text
            await _dismiss(page)

            # The room itself ending still says so.
            await page.join("ending", "ada")
            room = server.registry.find_in_progress("ending")
            assert room is not None
            await room.end()
            text = await _wait_banner(page, "53118")
            assert 'The room "ending" has ended' in text and "restarting" not in text, text
            await _dismiss(page)

            # The server cannot be reached again after the connection dropped.
            await page.join("unreachable", "ada")
            await page.js("() => { room._url = 'ws://127.0.0.1:9/signaling'; room._ws.close(); }")
            await page.wait("() => !document.querySelector('#join').hidden", message="back at the join form")
            text = await _wait_banner(page, "53001")
            assert "The server is restarting or unreachable" in text and "has ended" not in text, text
            assert not page.errors, page.errors
        finally:
            await page.close()
