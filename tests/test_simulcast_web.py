"""Simulcast from real Chromium through /sdk.js: one page publishes its camera as VP8 layers
(``preferredVideoCodecs: [{codec: 'VP8', simulcast: true}]``), two pages subscribe, and the
server forwards each of them the layer ``Consumer.set_target_layer`` chose, which the
subscribers' decoders show as different frame widths; switching mid-call keeps frames
decoding."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sfu.media.consumer import Consumer
from sfu.media.producer import Producer

from .conftest import DEADLINE, wait_for
from .helpers.browser import Page, chromium, harness_site
from .test_simulcast import manual_layers

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'

ROOM = "simulcast"

# A subscriber page: the publisher's video attached, and its inbound-rtp figures on demand.
WATCH = """async () => {
    const pub = [...room.participants.values()].flatMap(p => [...p.videoTracks.values()]).find(p => p.track);
    if (!pub) return null;
    if (!window.el) { window.el = pub.track.attach(); document.body.append(window.el); }
    const stats = await pub.track.getStats();
    for (const s of stats.values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'video') return {width: s.frameWidth || 0, decoded: s.framesDecoded || 0};
    }
    return {width: 0, decoded: 0};
}"""


def sinks(server: Any, identity: str) -> list[Consumer]:
    return [
        s.sink for room in server.registry.rooms.values() for p in room.participants.values()
        if p.identity == identity for s in p.subscriptions.values() if isinstance(s.sink, Consumer)
    ]  # fmt: skip


def published(server: Any, identity: str) -> Producer:
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            for track in p.published.values():
                source = track.source
                if p.identity == identity and isinstance(source, Producer) and source.kind == "video":
                    return source
    raise LookupError(identity)


async def watch(page: Page, wider_than: int = 0, narrower_than: int = 1 << 20, frames: int = 10) -> dict[str, int]:
    """Wait until the page decodes ``frames`` more frames of a width in the given bounds."""
    start: dict[str, int] | None = None
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE * 2
    stats = None
    while loop.time() < end:
        stats = await page.js(WATCH)
        if stats and wider_than < stats["width"] < narrower_than:
            if start is None:
                start = stats
            elif stats["decoded"] >= start["decoded"] + frames:
                return stats  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{page.name}: no {frames} frames {wider_than} < width < {narrower_than} decoded (last {stats})")


async def test_chromium_publishes_simulcast_and_each_subscriber_decodes_its_own_layer(server) -> None:
    async with chromium() as browser, harness_site() as origin:
        pages = [await Page.harness(browser, origin, server.http, name) for name in ("pub", "small", "large")]
        publisher, small, large = pages
        try:
            await publisher.js(
                """async (token) => {
                    window.room = await Video.connect(token, {name: 'simulcast', audio: false,
                        video: {width: 1280, height: 720, frameRate: 20},
                        preferredVideoCodecs: [{codec: 'VP8', simulcast: true}]});
                }""",
                server.token("pub"),
            )
            producer = await wait_for(lambda: _layers(server), timeout=DEADLINE * 2, message="the publisher's layers")
            assert [layer.rid for layer in producer.layers] == ["q", "h", "f"]
            for page in (small, large):
                await page.js(
                    "async (token) => { window.room = await Video.connect(token, {name: 'simulcast', audio: false, video: false}); }",
                    server.token(page.name),
                )
            # Every layer arrives, each at its own resolution (read from its keyframes).
            await wait_for(lambda: all(layer.width for layer in producer.layers), timeout=DEADLINE * 2, message="a keyframe of each layer")
            widths = [layer.width or 0 for layer in producer.layers]
            assert widths == sorted(widths) and widths[0] < widths[-1], widths

            small_sink = await wait_for(lambda: next(iter(sinks(server, "small")), None), message="small's consumer")
            large_sink = await wait_for(lambda: next(iter(sinks(server, "large")), None), message="large's consumer")
            manual_layers(server, "small")
            manual_layers(server, "large")
            small_sink.set_target_layer(0)
            large_sink.set_target_layer(2)
            low = await watch(small, narrower_than=widths[0] + 1)
            high = await watch(large, wider_than=widths[0])
            assert low["width"] < high["width"], (low, high)

            # Switch both mid-call: the decoders go on, now at the other sizes.
            small_sink.set_target_layer(2)
            large_sink.set_target_layer(0)
            await watch(small, wider_than=low["width"])
            await watch(large, narrower_than=high["width"])
            assert small_sink.stats.layer_switches >= 1 and large_sink.stats.layer_switches >= 1
            assert small_sink.current_layer == 2 and large_sink.current_layer == 0
            assert not any(page.errors for page in pages), [page.errors for page in pages]
        finally:
            for page in pages:
                await page.close()


def _layers(server: Any) -> Producer | None:
    try:
        producer = published(server, "pub")
    except LookupError:
        return None
    return producer if producer.simulcast else None
