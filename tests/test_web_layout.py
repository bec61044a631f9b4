"""The bundled page's layout and accessibility in real Chromium: on a 360 x 640 phone the error
banner and the call controls stay in view and uncovered, a chat message that arrives out of
sight raises an unread badge, text meets WCAG AA contrast, and the camera and microphone can
be picked before joining (and are then the ones used)."""

from __future__ import annotations

import pytest

from typing import Any

from .conftest import DEADLINE
from .helpers.browser import ARTIFACTS, Page, chromium
from .helpers.clients import local_track
from .test_web_errors import session_of

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'

CONTROLS = ("mic-button", "cam-button", "screen-button", "chat-button", "leave-button")

# Where an element is on screen and whether it is the topmost thing at its own centre.
PLACE = """(selector) => {
    const el = document.querySelector(selector);
    if (!el || el.hidden || !el.getClientRects().length) return null;
    const r = el.getBoundingClientRect();
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    const top = document.elementFromPoint(x, y);
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width, height: r.height,
            uncovered: Boolean(top && (top === el || el.contains(top))), at: top ? (top.id || top.className || top.tagName) : null,
            vw: window.innerWidth, vh: window.innerHeight};
}"""


async def assert_in_view(page: Page, selector: str, uncovered: bool = True) -> dict[str, Any]:
    """``selector`` is inside the viewport and (unless told otherwise: elementFromPoint does
    not see elements that take no pointer events, like the toast) the topmost at its centre."""
    place = await page.js(PLACE, selector)
    assert place, f"{selector} is not shown"
    assert place["top"] >= 0 and place["bottom"] <= place["vh"] and place["left"] >= 0 and place["right"] <= place["vw"], (selector, place)
    assert not uncovered or place["uncovered"], f"{selector} is covered by {place['at']}: {place}"
    return place


async def test_phone_banner_controls_and_chat_badge(server, clients):
    py = await clients.join("py", "small", publish="vad", receive="packets")
    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/", "web", viewport=(360, 640))
        tab = page.page
        try:
            await page.join("small", "ada")
            await page.wait_tile("py", state="connected")

            # The controls stay on screen and uncovered wherever the tile grid is scrolled.
            height = await page.js("() => document.documentElement.scrollHeight")
            assert height > 640 * 1.2, height  # the page does scroll at this size
            for y in (0, 250, height):
                await page.js("(y) => window.scrollTo(0, y)", y)
                for control in CONTROLS:
                    place = await assert_in_view(page, f"#{control}")
                    assert place["height"] >= 44, (control, place)
            assert await page.js("() => document.documentElement.scrollWidth") <= 360
            # ...and at the very bottom, the chat form is not hidden under them.
            await assert_in_view(page, "#chat-input")
            await assert_in_view(page, "#chat-send")

            # A chat message while the chat is scrolled out of sight: a badge, a toast, the title.
            await page.js("() => window.scrollTo(0, 0)")
            local_track(py, "chat").send("psst")
            await page.wait_chat("py: psst")
            count = await page.wait("() => !document.querySelector('#chat-count').hidden && document.querySelector('#chat-count').textContent",
                                    message="the unread badge")
            assert count == "1"
            toast = await page.wait("() => !document.querySelector('#notice').hidden && document.querySelector('#notice').textContent",
                                    message="a toast")
            assert toast == "py: psst", toast
            await assert_in_view(page, "#notice", uncovered=False)
            assert (await tab.title()).startswith("(1) small")
            # The badge's button says so to a screen reader, and opens the chat by keyboard.
            await tab.get_by_role("button", name="Chat, 1 unread").focus()
            await tab.keyboard.press("Enter")
            await page.wait("() => document.activeElement.id === 'chat-input'", message="focus in the chat input")
            await page.wait("() => document.querySelector('#chat-count').hidden", message="the badge cleared")
            assert not (await tab.title()).startswith("(")
            await assert_in_view(page, "#chat-input")
            # With the chat in sight, the next message raises no badge.
            local_track(py, "chat").send("seen")
            await page.wait_chat("py: seen")
            assert await page.js("() => document.querySelector('#chat-count').hidden")

            # An error while scrolled down, with a toast up: the banner is in view and on top.
            await page.js("() => window.scrollTo(0, document.documentElement.scrollHeight)")
            await clients.join("py2", "small", publish="", receive="packets")
            await page.wait("() => !document.querySelector('#notice').hidden && /py2 joined/.test(document.querySelector('#notice').textContent)",
                            message="the join toast")
            await page.js("() => room._send({type: 'bogus'})")
            await page.wait_message()
            banner = await assert_in_view(page, "#message")
            await assert_in_view(page, "#message-dismiss")
            toast_place = await page.js(PLACE, "#notice")
            if toast_place:  # a toast may still be up: never over the banner
                assert toast_place["top"] >= banner["bottom"] or toast_place["bottom"] <= banner["top"], (toast_place, banner)
            for control in CONTROLS:
                await assert_in_view(page, f"#{control}")
            ARTIFACTS.mkdir(exist_ok=True)
            await tab.screenshot(path=str(ARTIFACTS / "call-360px-banner.png"))
            assert not page.errors, page.errors
        finally:
            await page.close()


# WCAG 2.x contrast of an element's text against the background it is drawn on: the computed
# colours, with translucent backgrounds composited up the ancestor chain.
CONTRAST = """(selector) => {
    const el = document.querySelector(selector);
    if (!el || !el.getClientRects().length) return {selector, missing: true};
    const parse = (c) => {
        const n = c.match(/[\\d.]+/g).map(Number);
        return [n[0], n[1], n[2], n.length > 3 ? n[3] : 1];
    };
    const over = (top, bottom) => {
        const a = top[3] + bottom[3] * (1 - top[3]);
        return [0, 1, 2].map(i => (top[i] * top[3] + bottom[i] * bottom[3] * (1 - top[3])) / a).concat([a]);
    };
    const layers = [];
    for (let n = el; n; n = n.parentElement) {
        const bg = parse(getComputedStyle(n).backgroundColor);
        if (bg[3] > 0) layers.push(bg);
        if (bg[3] >= 1) break;
    }
    let bg = [255, 255, 255, 1];
    for (const layer of layers.reverse()) bg = over(layer, bg);
    const fg = over(parse(getComputedStyle(el).color), bg);
    const lum = (c) => {
        const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    return {selector, ratio: Math.round(((hi + 0.05) / (lo + 0.05)) * 100) / 100,
            fg: fg.slice(0, 3).map(Math.round), bg: bg.slice(0, 3).map(Math.round)};
}"""


async def contrast(page: Page, selectors: list[str]) -> list[dict[str, Any]]:
    return [await page.js(CONTRAST, s) for s in selectors]


def assert_aa(measured: list[dict[str, Any]]) -> None:
    """Every measured text at least 4.5:1 (checked first), and every element was there."""
    low = [m for m in measured if not m.get("missing") and m["ratio"] < 4.5]
    assert not low, "below WCAG AA 4.5:1: " + "; ".join(f"{m['selector']} {m['fg']} on {m['bg']} = {m['ratio']}" for m in low)
    missing = [m["selector"] for m in measured if m.get("missing")]
    assert not missing, f"not shown: {missing}"


async def test_text_contrast_meets_wcag_aa(server, clients):
    py = await clients.join("py", "contrast", publish="va", receive="packets")
    local_track(py, "mic").disable()
    measured: list[dict[str, Any]] = []
    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/", "web")
        tab = page.page
        try:
            await page.wait_preview()
            measured += await contrast(page, ["#join-heading", "label[for=room-input]", "#room-input", "#preview-status",
                                              "#join-mic + *, .toggles label", "label[for=camera-select]", "#camera-select",
                                              "#join-form summary", "#join-button"])
            await page.join("contrast", "ada")
            await page.wait_tile("py", state="connected", mic="muted")
            await tab.get_by_role("button", name="Mute").click()  # an active (pressed-looking) control
            await page.wait_tile_local(mic="muted")
            await page.send_chat("hello")
            await page.wait_chat("You: hello")
            tile = "#tiles li.tile[data-identity=py]"
            measured += await contrast(page, [
                "#room-name", "#room-state", "#mic-button", "#cam-button", "#screen-button", "#leave-button", "#chat-send",
                "#chat-heading", "#chat-input", ".chat-log li.mine .text", ".chat-log li.mine time",
                f"{tile} .badge.mic", f"{tile} .badge.cam", f"{tile} .badge.conn", "#tiles li.tile.local .badge.mic",
            ])
            await tab.hover("#leave-button")
            measured += [dict(r, selector="#leave-button:hover") for r in await contrast(page, ["#leave-button"])]
            await tab.mouse.move(0, 0)
            assert_aa(measured)
            # The error banner, the warning banner and the toast.
            await page.js("() => room._send({type: 'bogus'})")
            await page.wait_message()
            measured += await contrast(page, ["#message-text", "#message-dismiss"])
            session_of(server, "ada").send({"type": "draining", "timeout": 30})
            await page.wait("() => document.querySelector('#message').dataset.kind === 'warning'", message="the warning banner")
            measured += [dict(r, selector=r["selector"] + " (warning)") for r in await contrast(page, ["#message-text", "#room-state"])]
            await clients.join("py2", "contrast", publish="", receive="packets")
            await page.wait("() => !document.querySelector('#notice').hidden", message="a toast")
            measured += await contrast(page, ["#notice"])
        finally:
            await page.close()
    assert_aa(measured)


GUM_RECORDER = """
window.gumCalls = [];
const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = (constraints) => {
    window.gumCalls.push(JSON.parse(JSON.stringify(constraints)));
    return original(constraints);
};
"""


async def test_pick_camera_and_microphone_before_joining(server, clients):
    py = await clients.join("py", "devices", publish="", receive="packets")
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 360, "height": 740})
        await context.add_init_script(GUM_RECORDER)
        page = Page(await context.new_page(), "web")
        tab = page.page
        tab.set_default_timeout(DEADLINE * 1000)
        try:
            await tab.goto(server.http + "/")
            await page.wait_preview()
            await page.wait("() => !document.querySelector('#camera-select').disabled && !document.querySelector('#mic-select').disabled",
                            message="the device lists")
            cameras = await page.js("() => [...document.querySelector('#camera-select').options].map(o => [o.value, o.text])")
            microphones = await page.js("() => [...document.querySelector('#mic-select').options].map(o => [o.value, o.text])")
            assert len(cameras) == 2 and all(value and text for value, text in cameras), cameras  # named, with ids
            assert len(microphones) >= 2 and all(value and text for value, text in microphones), microphones
            preview = "(kind) => { const s = document.querySelector('#preview').srcObject; const t = s && s.getVideoTracks()[0]; return t && t.readyState === 'live' && t.getSettings().deviceId; }"
            current = await page.wait(preview, message="the preview's camera")
            assert await tab.get_by_label("Camera", exact=True).input_value() == current

            # Another camera: opened with exactly that deviceId, shown in the preview.
            other = next(value for value, _ in cameras if value != current)
            await tab.get_by_label("Camera", exact=True).select_option(other)
            await page.wait(f"() => ({preview})() === {other!r}", message="the preview on the other camera")
            calls = await page.js("() => window.gumCalls")
            assert any(isinstance(c.get("video"), dict) and c["video"].get("deviceId") == {"exact": other} for c in calls), calls
            # Another microphone, by keyboard.
            microphone = microphones[-1][0]
            await tab.get_by_label("Microphone", exact=True).focus()
            await tab.get_by_label("Microphone", exact=True).select_option(microphone)
            await page.wait("(id) => window.gumCalls.some(c => c.audio && c.audio.deviceId && c.audio.deviceId.exact === id)", microphone,
                            message="getUserMedia for the chosen microphone")
            await page.wait("() => !document.querySelector('#mic-select').disabled", message="the switch to finish")

            # Joining publishes exactly those devices.
            await page.join("devices", "ada")
            used = await page.wait(
                """() => room.localParticipant.videoTracks.size && room.localParticipant.audioTracks.size && {
                    video: room.localParticipant.videoTracks.values().next().value.track.mediaStreamTrack.getSettings().deviceId,
                    audio: room.localParticipant.audioTracks.values().next().value.track.mediaStreamTrack.getSettings().deviceId}""",
                message="both tracks published",
            )
            assert used == {"video": other, "audio": microphone}, used
            identities = {p.identity for p in py.participants.values()}
            assert "ada" in identities, identities
            await tab.get_by_role("button", name="Leave").click()
            await page.wait("() => !document.querySelector('#join').hidden", message="back at the join form")

            # The choice is remembered for the next visit.
            await tab.reload()
            await page.wait_preview()
            first = (await page.js("() => window.gumCalls"))[0]
            assert first["video"]["deviceId"] == {"exact": other} and first["audio"]["deviceId"] == {"exact": microphone}, first
            await page.wait(f"() => ({preview})() === {other!r}", message="the remembered camera")
            # A remembered camera that is gone (unplugged): any camera, and no error.
            await page.js("() => localStorage.setItem('sfu.camera', 'unplugged')")
            await tab.reload()
            await page.wait_preview()
            assert await page.wait(preview, message="a camera after all") in {value for value, _ in cameras}
            assert await page.message() == ""
            assert not page.errors, page.errors
        finally:
            await page.close()
