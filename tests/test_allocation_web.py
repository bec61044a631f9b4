"""Track switch-off through /sdk.js in real Chromium (issue 12): manual switchOff()/switchOn(),
and 'auto' mode switching a track off when its element is hidden or detached and sizing it
from the element; a Python client publishes."""

from __future__ import annotations

import pytest

from sfu.media.consumer import Consumer

from .conftest import wait_for
from .helpers.browser import Page, chromium, harness_site
from .helpers.clients import Clients

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'


def subscription(server, subscriber: str):
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            if p.identity == subscriber:
                for sub in p.subscriptions.values():
                    if sub.track.kind == "video":
                        return sub
    return None


JOIN = """async ([token, profile]) => {
    const room = await Video.connect(token, {name: 'switch', audio: false, video: false, bandwidthProfile: profile});
    window.room = room;
    window.switches = [];
    room.on('trackSubscribed', (track) => {
        if (track.kind !== 'video') return;
        window.track = track;
        track.on('switchedOff', (t, reason) => window.switches.push(['off', reason, t.isSwitchedOff, t.switchOffReason]));
        track.on('switchedOn', (t) => window.switches.push(['on', t.isSwitchedOff, t.switchOffReason]));
    });
    return room.sid;
}"""

FRAMES = """async () => {
    const stats = await window.track.getStats();
    for (const s of stats.values()) if (s.type === 'inbound-rtp' && s.kind === 'video') return s.framesDecoded || 0;
    return 0;
}"""


async def test_manual_switch_off_and_on_stop_and_resume_the_video(server, clients: Clients) -> None:
    await clients.join("py", "switch", publish="v")
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            await page.js(JOIN, [server.token("web"), {"video": {"clientTrackSwitchOffControl": "manual"}}])
            await page.wait("() => window.track", message="web subscribed to py's camera")
            await page.js("() => { const el = window.track.attach(); document.body.append(el); }")
            frames = await page.wait(FRAMES, message="frames decoded")
            assert await page.js("() => [window.track.isSwitchedOff, window.track.switchOffReason]") == [False, None]
            # Neither setContentPreferences (contentPreferencesMode is 'auto') nor a bad priority is allowed.
            refused = await page.js(
                """() => { const out = [];
                    try { window.track.setContentPreferences({renderDimensions: {width: 1, height: 1}}); } catch (e) { out.push(e.message); }
                    try { window.track.setPriority('urgent'); } catch (e) { out.push(e.name); }
                    return out; }"""
            )
            assert "contentPreferencesMode" in refused[0] and refused[1] == "RangeError"

            await page.js("() => window.track.switchOff()")
            await page.wait("() => window.switches.length === 1", message="switchedOff")
            assert await page.js("() => window.switches") == [["off", "disabled-by-subscriber", True, "disabled-by-subscriber"]]
            sub = subscription(server, "web")
            consumer = sub.sink
            assert isinstance(consumer, Consumer) and not consumer.forwarding
            producer = consumer.producer
            sent, start = consumer.stats.packets, producer.stats.packets
            await wait_for(lambda: producer.stats.packets > start + 60, message="py goes on sending")
            assert consumer.stats.packets == sent, "a switched-off track must cost no forwarding"

            stopped = await page.js(FRAMES)
            await page.js("() => window.track.switchOn()")
            await page.wait("() => window.switches.length === 2", message="switchedOn")
            assert (await page.js("() => window.switches"))[1] == ["on", False, None]
            await page.wait(f"async () => (await ({FRAMES})()) > {stopped + 10}", message="frames decoded again after switchOn")
            assert frames > 0
        finally:
            await page.close()


async def test_auto_mode_switches_off_a_hidden_or_detached_element_and_sizes_from_it(server, clients: Clients) -> None:
    await clients.join("py", "switch", publish="v")
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            await page.js(JOIN, [server.token("web"), {"video": {"mode": "grid"}}])
            await page.wait("() => window.track", message="web subscribed to py's camera")
            manual = await page.js("() => { try { window.track.switchOff(); return null; } catch (e) { return e.message; } }")
            assert manual is not None and "clientTrackSwitchOffControl" in manual
            await page.js(
                """() => { const el = window.track.attach(); el.style.width = '160px'; el.style.height = '120px';
                           window.el = el; document.body.append(el); }"""
            )
            await page.wait(FRAMES, message="frames decoded in a visible element")
            sub = await wait_for(lambda: subscription(server, "web"), message="web's subscription")
            await wait_for(lambda: sub.render_dimensions == (160, 120), message=f"render dimensions from the element, got {sub.render_dimensions}")
            assert not sub.switched_off

            await page.js("() => { window.el.style.display = 'none'; }")
            await page.wait("() => window.track.isSwitchedOff", message="a hidden element switches the track off")
            assert (await page.js("() => window.switches"))[-1] == ["off", "disabled-by-subscriber", True, "disabled-by-subscriber"]
            await wait_for(lambda: sub.switched_off and not sub.sink.forwarding, message="the server switched it off")

            await page.js("() => { window.el.style.display = 'block'; }")
            await page.wait("() => !window.track.isSwitchedOff", message="visible again: switched on")
            await wait_for(lambda: sub.sink.forwarding, message="forwarding again")

            await page.js("() => window.track.detach()")
            await page.wait("() => window.track.isSwitchedOff", message="a detached track is switched off")
        finally:
            await page.close()


async def test_publish_track_priority_and_set_priority_reach_the_subscribers(server, clients: Clients) -> None:
    await clients.join("py", "switch", publish="", receive="packets")
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            await page.js(
                """async (token) => {
                    const room = await Video.connect(token, {name: 'switch', audio: false, video: false});
                    const track = await Video.createLocalVideoTrack({name: 'cam'});
                    window.publication = await room.localParticipant.publishTrack(track, {priority: 'high'});
                    window.room = room;
                }""",
                server.token("web"),
            )
            assert await page.js("() => window.publication.priority") == "high"
            sub = await wait_for(lambda: next((s for s in py_subscriptions(server, "py")), None), message="py subscribed to web's camera")
            assert sub.sink.priority == "high"
            await page.js("() => window.publication.setPriority('low')")
            await wait_for(lambda: sub.sink.priority == "low", message="setPriority reaches py's subscription")
            refused = await page.js("() => { try { window.publication.setPriority('urgent'); return null; } catch (e) { return e.name; } }")
            assert refused == "RangeError"
        finally:
            await page.close()


def py_subscriptions(server, subscriber: str):
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            if p.identity == subscriber:
                return [s for s in p.subscriptions.values() if s.track.kind == "video"]
    return []
