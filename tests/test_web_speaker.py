"""Dominant speaker and network quality in real Chromium: through /sdk.js's Twilio-named
options and events, and on the bundled page's tiles (highlight, speaking dot, quality bars).
The speakers are Python clients whose tones carry chosen RFC 6464 levels."""

from __future__ import annotations

import pytest

from .conftest import Server
from .helpers.browser import Page, chromium, harness_site
from .helpers.clients import Clients
from .test_speaker import LOUD, QUIET, join
from .media import ToneAudioTrack

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'


async def test_sdk_dominant_speaker_changed_and_network_quality_levels(server: Server, clients: Clients) -> None:
    alice_tone, bob_tone = ToneAudioTrack(level_dbov=LOUD), ToneAudioTrack(level_dbov=QUIET)
    await join(clients, server, "alice", alice_tone)
    await join(clients, server, "bob", bob_tone)
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            await page.js(
                """async (token) => {
                    const room = await Video.connect(token, {name: 'speakers', audio: true, video: false,
                                                            dominantSpeaker: true, networkQuality: {local: 3, remote: 1}});
                    window.room = room;
                    window.speakers = [room.dominantSpeaker ? room.dominantSpeaker.identity : null];
                    room.on('dominantSpeakerChanged', (p) => window.speakers.push(p ? p.identity : null));
                }""",
                server.token("web"),
            )
            await page.wait("() => room.dominantSpeaker && room.dominantSpeaker.identity === 'alice'", message="alice dominant")
            alice_tone.level_dbov, bob_tone.level_dbov = QUIET, LOUD
            await page.wait("() => room.dominantSpeaker && room.dominantSpeaker.identity === 'bob'", message="bob dominant")
            # The speaker already dominant at connect comes as an event too (Twilio's comes after
            # connecting, on its media-signaling channel), so an app that only listens hears it.
            assert await page.js("() => window.speakers") == [None, "alice", "bob"]
            assert await page.js("() => [...room.participants.values()].find(p => p.identity === 'bob').isSpeaking") is True

            # Network quality: the local level with detailed stats (verbosity 3), remote levels alone (1).
            local = await page.wait(
                "() => Number.isInteger(room.localParticipant.networkQualityLevel) && room.localParticipant.networkQualityStats",
                message="the local network quality level",
            )
            assert 0 <= local["level"] <= 5 and "sendStats" in (local["audio"] or {})
            remote = await page.wait(
                """() => { const a = [...room.participants.values()].find(p => p.identity === 'alice');
                           return Number.isInteger(a.networkQualityLevel) && {level: a.networkQualityLevel, stats: a.networkQualityStats}; }""",
                message="alice's network quality level",
            )
            assert 1 <= remote["level"] <= 5 and remote["stats"] is None
        finally:
            await page.close()


async def test_the_page_highlights_the_speaker_and_shows_quality_bars(server: Server, clients: Clients) -> None:
    alice_tone, bob_tone = ToneAudioTrack(level_dbov=LOUD), ToneAudioTrack(level_dbov=QUIET)
    await join(clients, server, "alice", alice_tone)
    await join(clients, server, "bob", bob_tone)
    async with chromium() as browser:
        page = await Page.open(browser, server.http + "/", "web")
        try:
            await page.join("speakers", "ada")
            await page.wait_tile("alice", speaking="true", dominant="true")
            await page.wait_tile("bob", speaking="false")
            assert await page.tile("alice").evaluate("t => t.classList.contains('dominant')")
            assert await page.tile("bob").evaluate("t => !t.classList.contains('dominant') && t.querySelectorAll('.quality .bar').length === 5")

            alice_tone.level_dbov, bob_tone.level_dbov = QUIET, LOUD
            await page.wait_tile("bob", speaking="true", dominant="true")
            await page.wait_tile("alice", speaking="false")
            assert await page.tile("alice").get_attribute("data-dominant") is None

            # Quality bars: a level on every tile (the others' at remote verbosity 1, one's own).
            await page.wait(
                "() => [...document.querySelectorAll('#tiles li.tile')].every(t => /^[0-5]$/.test(t.dataset.quality))",
                message="a network quality level on every tile",
            )
            label = await page.tile("alice").locator(".quality").get_attribute("aria-label")
            assert label is not None and label.startswith("Network quality ") and label.endswith(" of 5")
        finally:
            await page.close()
