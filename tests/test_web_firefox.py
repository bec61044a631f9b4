"""Firefox in a call: Debian's firefox-esr (driven over WebDriver BiDi, tests/helpers/firefox.py)
on the bundled page, with Chromium and a Python client in the same room."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from signaling.client import Room

from .conftest import DEADLINE, wait_for
from .helpers.browser import Page, chromium
from .helpers.clients import EventLog, about, read_audio, remote_track, subscribed_data, subscribed_media
from .helpers.firefox import CallPage, firefox
from .rest_support import raw

# Two browsers and a Python client on a loaded 2-core machine: more than the suite's 300 s.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

# The share of bright pixels (brightness > 64 of 255) in a remote video drawn into a small
# canvas, or null while it has no frame yet or is (nearly) black. No test source is black:
# Chromium's fake camera is a bright pacman on a dark ground, Firefox's a mid-grey luma with a
# cycling tint, the Python client's counter video a grey frame. A black frame has none.
BRIGHT = 64
BRIGHT_SHARE = 0.005
NON_BLACK = """([identity, bright, share]) => {
    const tile = [...document.querySelectorAll('#tiles li.tile[data-participant-sid]')]
        .find(t => t.dataset.identity === identity && !t.classList.contains('screen') && !t.classList.contains('extra'));
    const video = tile && tile.querySelector('video');
    if (!video || !video.videoWidth) return null;
    const canvas = document.createElement('canvas');
    canvas.width = 96;
    canvas.height = 72;
    const context = canvas.getContext('2d');
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 0; i < data.length; i += 4) if ((data[i] + data[i + 1] + data[i + 2]) / 3 > bright) count += 1;
    const found = count / (data.length / 4);
    return found > share ? found : null;
}"""


BROWSER_DEADLINE = 2 * DEADLINE  # two browsers and the server share 2 loaded cores


async def poll(page: Page, read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], message: str) -> Any:
    """Poll ``read()`` until ``done`` holds for its value; fail after BROWSER_DEADLINE."""
    loop = asyncio.get_running_loop()
    end = loop.time() + BROWSER_DEADLINE
    while not done(value := await read()):
        if loop.time() > end:
            raise AssertionError(f"{page.name}: timed out after {BROWSER_DEADLINE}s waiting for {message}; last {value}\n{page.diagnostics()}")
        await asyncio.sleep(0.2)
    return value


async def wait_video_playing(page: Page, identity: str, frames: int = 15) -> None:
    """``identity``'s video in ``page`` has a size and its framesDecoded rises by ``frames``."""
    first = await poll(page, lambda: page.video_stats(identity), lambda s: s["videoWidth"] > 0, f"{identity}'s video to have a size")
    target = first["framesDecoded"] + frames
    await poll(page, lambda: page.video_stats(identity), lambda s: s["framesDecoded"] >= target, f"{identity}'s framesDecoded to pass {target}")


async def wait_audio_flowing(page: Page, identity: str, packets: int = 25) -> None:
    """``page`` receives ``packets`` more packets of ``identity``'s audio."""
    first = await page.audio_packets(identity)
    await poll(page, lambda: page.audio_packets(identity), lambda n: n >= first + packets, f"{identity}'s audio packets to pass {first + packets}")


async def wait_sees_and_hears(page: Page, identity: str) -> None:
    """``page`` shows ``identity``'s tile with a live, non-black video, and receives its audio."""
    await page.wait_tile(identity, state="connected", mic="on", camera="on")
    await wait_video_playing(page, identity)
    await page.wait(NON_BLACK, [identity, BRIGHT, BRIGHT_SHARE], timeout=BROWSER_DEADLINE, message=f"{identity}'s video to be non-black")
    await wait_audio_flowing(page, identity)


async def decode_video(room: Room, identity: str, name: str = "camera", count: int = 10, not_sid: str | None = None) -> str:
    """The Python client decodes ``count`` frames of ``identity``'s ``name`` track (a new one
    if ``not_sid`` is given) and finds them non-black; returns the track's SID."""
    me = room.local_participant.identity
    track = await wait_for(
        lambda: (t := remote_track(room, identity, name)) is not None and t.sid != not_sid and t,
        timeout=BROWSER_DEADLINE,
        message=f"{me} subscribed to {identity}'s {name}" + (f" (other than {not_sid})" if not_sid else ""),
    )
    shares = []
    for _ in range(count):
        frame = await asyncio.wait_for(track.recv(), DEADLINE)
        assert frame.width > 0 and frame.height > 0
        shares.append(float((frame.to_ndarray(format="gray") > BRIGHT).mean()))
    assert statistics.median(shares) > BRIGHT_SHARE, f"{identity}'s {name} decodes to black frames (bright shares {shares})"
    return str(track.sid)


async def hear(room: Room, identity: str, name: str = "microphone", count: int = 25) -> None:
    """The Python client decodes ``count`` audio frames of ``identity``'s ``name`` track."""
    track = await subscribed_media(room, identity, name, timeout=BROWSER_DEADLINE)
    await read_audio(track, count)


async def exchange_chat(py: Room, carol: Any, alice: Page) -> None:
    """Data tracks both ways: Firefox (carol) to Chromium (alice) and the Python client, and back."""
    heard: list[str] = []
    (await subscribed_data(py, "carol", "chat")).on("message", heard.append)
    await carol.send_chat("hello from firefox")
    await alice.wait_chat("carol: hello from firefox")
    await wait_for(lambda: "hello from firefox" in heard, message="py to hear carol's chat")
    await alice.send_chat("hello from chromium")
    await carol.wait_chat("alice: hello from chromium")


# The codecs of every video RTP stream a page sends and receives (from the peer connection's stats).
VIDEO_CODECS = """async () => {
    const stats = await window.room._pc.getStats();
    const streams = [...stats.values()].filter(s => (s.type === 'inbound-rtp' || s.type === 'outbound-rtp') && s.kind === 'video');
    // (one per received track, and one per sent track: its simulcast layers count once)
    const seen = new Set();
    return streams.filter(s => s.type === 'inbound-rtp' || !seen.has(s.mid) && seen.add(s.mid))
        .map(s => (stats.get(s.codecId) || {}).mimeType || 'unknown');
}"""


def failures(events: list[dict[str, Any]], name: str, code: int) -> list[dict[str, Any]]:
    return [e for e in events if e["name"] == name and e["args"] and (e["args"][0] or {}).get("code") == code]


async def test_firefox_chromium_and_python_client_decode_each_other(server, clients):
    room = "mixed"
    py = await clients.join("py", room, publish="vad")
    async with firefox() as ff, chromium() as browser:
        carol = await CallPage.open_in(ff, server.http + "/", "carol")  # Firefox
        alice = await Page.open(browser, server.http + "/", "alice")  # Chromium
        try:
            await carol.join(room, "carol")
            await alice.join(room, "alice")

            # Each browser plays the other two participants' video, non-black, frames decoded
            # and rising, and receives their audio.
            for page, others in ((carol, ("alice", "py")), (alice, ("carol", "py"))):
                for other in others:
                    await wait_sees_and_hears(page, other)

            # A room without VideoCodecs: everyone ends up on VP8, the one codec all three have.
            for page in (carol, alice):
                codecs = await page.js(VIDEO_CODECS)
                assert len(codecs) == 3 and set(codecs) == {"video/VP8"}, (page.name, codecs)  # 2 received, 1 sent

            # The Python client decodes both browsers' video and audio.
            for identity in ("carol", "alice"):
                await decode_video(py, identity)
                await hear(py, identity)

            # Data tracks between Firefox and the others, both ways.
            await exchange_chat(py, carol, alice)

            assert await carol.js("() => document.querySelector('#room-state').dataset.state") == "connected"
            assert await carol.message() == "" and await alice.message() == ""
            assert [e for e in await carol.sdk_events() if e["name"] in ("error", "disconnected", "trackSubscriptionFailed", "trackPublicationFailed")] == []
            assert not carol.errors and not alice.errors, (carol.errors, alice.errors)
        finally:
            await carol.close()
            await alice.close()


async def test_firefox_leaves_and_rejoins(server, clients):
    room = "again"
    py = await clients.join("py", room, publish="vad")
    log = EventLog(py)
    async with firefox() as ff, chromium() as browser:
        carol = await CallPage.open_in(ff, server.http + "/", "carol")
        alice = await Page.open(browser, server.http + "/", "alice")
        try:
            await alice.join(room, "alice")
            await carol.join(room, "carol")
            await wait_sees_and_hears(alice, "carol")
            first = await decode_video(py, "carol")

            # Leave with the page's button: gone for everyone.
            mark = log.mark()
            await carol.leave()
            await alice.wait_no_tile("carol")
            await log.wait("participant_disconnected", about("carol"), since=mark)
            assert "carol" not in [p.identity for p in py.participants.values()]

            # Join again from the same page: seen and heard again, with a new video track.
            await carol.join(room, "carol")
            await log.wait("participant_connected", about("carol"), since=mark)
            await wait_sees_and_hears(alice, "carol")
            second = await decode_video(py, "carol", not_sid=first)
            assert second != first
            await hear(py, "carol")
            for other in ("alice", "py"):
                await wait_sees_and_hears(carol, other)
            assert await carol.message() == ""
            assert not carol.errors and not alice.errors, (carol.errors, alice.errors)
        finally:
            await carol.close()
            await alice.close()


@pytest.mark.parametrize("firefox_joins", ["last", "first"])
async def test_firefox_in_an_h264_room_keeps_audio_and_data(server, clients, firefox_joins):
    """Debian's Firefox has no H264: it rejects every video m-section of an H264-only room.
    Its video fails with 53404 (subscriptions and its own camera), the page says so, and its
    audio and data, and everyone else's media, carry on. Joining ``last``, the first m-section
    of its first offer (the BUNDLE-tagged one) is another's H264 video, which it rejects;
    joining ``first``, that offer starts with its own microphone and the video comes later."""
    room = "h264"
    status, created = await raw(server.http, server.credentials, "POST", "/v1/Rooms", data={"UniqueName": room, "VideoCodecs": "H264"})
    assert status == 201 and created["video_codecs"] == ["H264"], created
    async with firefox() as ff, chromium() as browser:
        carol = await CallPage.open_in(ff, server.http + "/", "carol")
        alice = await Page.open(browser, server.http + "/", "alice")
        try:
            if firefox_joins == "first":
                await carol.join(room, "carol")
            py = await clients.join("py", room, publish="vad")
            await alice.join(room, "alice")
            if firefox_joins == "last":
                await carol.join(room, "carol")

            # Firefox's audio reaches Chromium and Python; Firefox hears both.
            await wait_audio_flowing(alice, "carol")
            await hear(py, "carol")
            for other in ("alice", "py"):
                await wait_audio_flowing(carol, other)

            # Its data too, both ways.
            await exchange_chat(py, carol, alice)

            # The H264 video it cannot decode: a trackSubscriptionFailed (53404) for each, never
            # subscribed; its own camera: trackPublicationFailed (53404). The page says so.
            await carol.wait(
                """() => ['alice', 'py'].every(who => window.sdkEvents.some(e => e.name === 'trackSubscriptionFailed'
                    && e.on === who && e.args[0] && e.args[0].code === 53404))""",
                timeout=BROWSER_DEADLINE,
                message="trackSubscriptionFailed 53404 on alice and py",
            )
            events = await carol.sdk_events()
            for on in ("room", "alice", "py"):
                mine = [e for e in failures(events, "trackSubscriptionFailed", 53404) if e["on"] == on]
                assert mine and all(e["args"][1]["kind"] == "video" for e in mine), (on, events)
            assert [e["args"][1]["kind"] for e in failures(events, "trackPublicationFailed", 53404)] == ["video"], events
            subscribed_video = await carol.js(
                "() => [...room.participants.values()].flatMap(p => [...p.videoTracks.values()]).filter(pub => pub.isSubscribed).length"
            )
            assert subscribed_video == 0
            carol_sid = await carol.js("() => room.localParticipant.sid")
            status, listed = await raw(server.http, server.credentials, "GET", f"/v1/Rooms/{created['sid']}/Participants/{carol_sid}/SubscribedTracks")
            assert status == 200 and sorted(t["kind"] for t in listed["subscribed_tracks"]) == ["audio", "audio", "data", "data"], listed  # no video
            await carol.wait("() => document.body.innerText.includes('53404')", message="the page to show error 53404")
            assert await carol.js("() => document.querySelector('#room-state').dataset.state") == "connected"

            # Nothing else breaks: Chromium and Python still exchange H264 video and audio.
            await wait_sees_and_hears(alice, "py")
            await decode_video(py, "alice")
            await hear(py, "alice")
            events = await carol.sdk_events()
            assert [e for e in events if e["name"] in ("disconnected", "reconnecting")] == [], events
            assert {e["args"][0]["code"] for e in events if e["name"] == "error"} <= {53404}, events  # no 53403 or anything else
            assert not carol.errors and not alice.errors, (carol.errors, alice.errors)
        finally:
            await carol.close()
            await alice.close()
