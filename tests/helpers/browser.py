"""Real headless Chromium for the web client's tests, driven by Playwright.

Debian's ``chromium`` (tests/run.sh installs it) runs with a fake camera and microphone and
with every flag that keeps it off the network. A missing browser or Playwright fails the test
under CI (``CI`` set) and skips it elsewhere, saying what to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ..conftest import DEADLINE

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

# What the machine notes say keeps Chromium quiet on a closed network, plus fake media.
BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--use-fake-device-for-media-stream=device-count=2",  # two cameras (and three microphones) to pick from
]
FAKE_UI = "--use-fake-ui-for-media-stream"  # grants camera, microphone and screen capture

# The harness for the JS client's own tests: the module as window.Video, and record(), which
# logs every event of a room / participant / track as {on, name, args} (objects summarised).
HARNESS = """<!doctype html><meta charset="utf-8"><title>sdk harness</title>
<script type="module">
window.log = [];
const summary = (x) => {
  if (x === null || x === undefined) return null;
  if (typeof x !== 'object') return x;
  if (x instanceof ArrayBuffer) return {bytes: x.byteLength};
  if ('code' in x && 'message' in x) return {code: x.code, message: x.message, isTwilioError: x instanceof window.Video.TwilioError};
  if ('identity' in x) return {identity: x.identity, sid: x.sid, state: x.state};
  if ('trackSid' in x) return {trackSid: x.trackSid, trackName: x.trackName, kind: x.kind, isTrackEnabled: x.isTrackEnabled, isSubscribed: x.isSubscribed};
  if ('localParticipant' in x) return {room: x.sid, state: x.state};
  if ('kind' in x) return {sid: x.sid, name: x.name, kind: x.kind, isEnabled: x.isEnabled};
  return String(x);
};
const EVENTS = ['participantConnected', 'participantDisconnected', 'participantReconnecting', 'participantReconnected',
  'trackPublished', 'trackUnpublished', 'trackSubscribed', 'trackUnsubscribed', 'trackEnabled', 'trackDisabled',
  'trackMessage', 'trackPublicationFailed', 'trackSubscriptionFailed', 'subscriptionFailed', 'serverDraining',
  'reconnecting', 'reconnected', 'disconnected', 'message', 'enabled', 'disabled', 'error'];
window.record = (emitter, label) => {
  for (const name of EVENTS) emitter.on(name, (...args) => window.log.push({on: label, name, args: args.map(summary)}));
  return emitter;
};
window.errorOf = async (promise) => {
  try { await promise; return null; } catch (e) { return summary(e); }
};
import(new URLSearchParams(location.search).get('sdk')).then((Video) => { window.Video = Video; window.ready = true; },
                   (e) => { window.loadError = String(e); });
</script>"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> str:
    """The Chromium executable; a failure under CI, a skip elsewhere, when it is missing."""
    problem = None
    path = chromium_path()
    if path is None:
        problem = "Debian's chromium is not installed (tests/run.sh installs it: apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[test]')"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(problem)
    assert path is not None
    return path


@asynccontextmanager
async def chromium(fake_ui: bool = True, extra_flags: list[str] | None = None) -> AsyncIterator[Any]:
    """A headless Chromium (Playwright Browser). Without ``fake_ui`` no permission is granted
    by itself: tests set them per origin (see ``deny_media``). ``extra_flags`` are added to
    the command line (e.g. ``--host-resolver-rules``)."""
    from playwright.async_api import async_playwright

    executable = require_browser()
    flags = BASE_FLAGS + ([FAKE_UI] if fake_ui else []) + list(extra_flags or [])
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=flags, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def loopback_site(routes: dict[str, Any]) -> AsyncIterator[str]:
    """A loopback web server answering GET ``routes`` (path -> aiohttp handler), yielding its
    origin: an application's own page on an origin other than the SFU's."""
    from aiohttp import web

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def harness_site() -> AsyncIterator[str]:
    """A loopback web server for the harness page, yielding its origin. (A page Playwright
    fulfils itself counts as public, and Chromium's local-network checks keep it from reaching
    a loopback server at all.)"""
    from aiohttp import web

    async def harness(request: web.Request) -> web.Response:
        return web.Response(text=HARNESS, content_type="text/html")

    async with loopback_site({"/harness.html": harness}) as origin:
        yield origin


class Page:
    """One browser tab on the bundled page, with helpers that wait on conditions."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    async def open(cls, browser: Any, url: str, name: str, viewport: tuple[int, int] = (1280, 800)) -> "Page":
        context = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = cls(await context.new_page(), name)
        page.page.set_default_timeout(DEADLINE * 1000)
        await page.page.goto(url)
        return page

    @classmethod
    async def harness(cls, browser: Any, origin: str, server_http: str, name: str) -> "Page":
        """The harness page from ``harness_site`` at ``origin``: it imports the server's JS
        client as ``window.Video`` and records events into ``window.log`` (see HARNESS)."""
        context = await browser.new_context()
        page = cls(await context.new_page(), name)
        page.page.set_default_timeout(DEADLINE * 1000)
        await page.page.goto(f"{origin}/harness.html?sdk={server_http}/sdk.js")
        await page.wait("() => window.ready || window.loadError", message="the JS client module to load")
        error = await page.js("() => window.loadError")
        assert not error, f"sdk.js failed to load: {error}"
        return page

    async def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Events recorded by ``record(emitter, label)`` in the page, optionally one kind."""
        log = await self.js("() => window.log")
        return [e for e in log if name is None or e["name"] == name]

    async def wait_event(self, name: str, **match: Any) -> dict[str, Any]:
        """Wait for a recorded event ``name`` whose ``label`` / first args match ``match``
        (``on="room"``, ``arg0={"identity": "py"}``...)."""
        return await self.wait(
            """([name, match]) => window.log.find(e => e.name === name && Object.entries(match).every(([k, v]) => {
                const actual = k === 'on' ? e.on : e.args[Number(k.slice(3))];
                return typeof v === 'object' && v !== null
                    ? actual && Object.entries(v).every(([kk, vv]) => actual[kk] === vv) : actual === v;
            }))""",
            [name, match],
            message=f"event {name} {match}; saw {[e['name'] for e in await self.events()]}",
        )

    async def close(self) -> None:
        await self.page.context.close()

    def diagnostics(self) -> str:
        return f"[{self.name}] console:\n" + "\n".join(self.console[-40:]) + f"\n[{self.name}] errors: {self.errors}"

    async def wait(self, expression: str, arg: Any = None, timeout: float = DEADLINE, message: str = "") -> Any:
        """Poll the JS function ``expression`` (sync or async, taking ``arg``) until it returns
        something truthy; returns that value, or fails after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = await self.page.evaluate(expression, arg)
            if value:
                return value
            if loop.time() > end:
                raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {message or expression}\n{self.diagnostics()}")
            await asyncio.sleep(0.1)

    async def js(self, expression: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expression, arg)

    # --- the page's own UI ----------------------------------------------------------

    async def wait_preview(self) -> None:
        await self.wait("() => !document.querySelector('#preview-status').textContent.startsWith('Starting')", message="the camera preview")

    async def fill_join(self, room: str, identity: str, token: str | None = None) -> None:
        await self.wait_preview()
        await self.page.get_by_label("Room name").fill(room)
        await self.page.get_by_label("Your name").fill(identity)
        if token is not None:
            await self.page.get_by_text("I have an access token").click()
            await self.page.get_by_label("Access token").fill(token)

    async def join(self, room: str, identity: str, token: str | None = None) -> None:
        """Fill the form, click Join, and wait until the call is shown."""
        await self.fill_join(room, identity, token)
        await self.page.get_by_role("button", name="Join").click()
        await self.wait(
            "() => !document.querySelector('#call').hidden || !document.querySelector('#message').hidden",
            message="the call or an error",
        )
        error = await self.message()
        assert await self.page.locator("#call").is_visible(), f"{self.name} could not join: {error}\n{self.diagnostics()}"

    async def message(self) -> str:
        return await self.js("() => document.querySelector('#message').hidden ? '' : document.querySelector('#message').textContent")

    async def wait_message(self, timeout: float = DEADLINE) -> str:
        return await self.wait("() => !document.querySelector('#message').hidden && document.querySelector('#message').textContent",
                               timeout=timeout, message="an error message")

    def tile(self, identity: str) -> Any:
        """The main tile of a remote participant."""
        return self.page.locator(f"#tiles li.tile[data-participant-sid][data-identity={json.dumps(identity)}]:not(.screen):not(.extra)")

    async def tile_attr(self, identity: str, name: str) -> str | None:
        return await self.tile(identity).get_attribute(f"data-{name}")

    async def wait_tile(self, identity: str, **attributes: str) -> None:
        """Wait for ``identity``'s tile with the given data-* values (mic=muted, state=...)."""
        await self.wait(
            """([identity, attrs]) => {
                const tile = [...document.querySelectorAll('#tiles li.tile[data-participant-sid]')]
                    .find(t => t.dataset.identity === identity && !t.classList.contains('screen') && !t.classList.contains('extra'));
                return tile && Object.entries(attrs).every(([k, v]) => tile.dataset[k] === v);
            }""",
            [identity, attributes],
            message=f"{identity}'s tile with {attributes}",
        )

    async def wait_tile_local(self, **attributes: str) -> None:
        """Wait for one's own tile with the given data-* values."""
        await self.wait(
            """(attrs) => {
                const tile = document.querySelector('#tiles li.tile.local:not(.screen)');
                return tile && Object.entries(attrs).every(([k, v]) => tile.dataset[k] === v);
            }""",
            attributes,
            message=f"own tile with {attributes}",
        )

    async def wait_no_tile(self, identity: str) -> None:
        await self.wait(
            "(identity) => ![...document.querySelectorAll('#tiles li.tile')].some(t => t.dataset.identity === identity)",
            identity,
            message=f"{identity}'s tile to go",
        )

    async def chat_texts(self) -> list[str]:
        return await self.js("() => [...document.querySelectorAll('#chat-log li')].map(li => li.querySelector('.who').textContent + ': ' + li.querySelector('.text').textContent)")

    async def wait_chat(self, line: str) -> None:
        await self.wait("(line) => [...document.querySelectorAll('#chat-log li')].some(li => li.querySelector('.who').textContent + ': ' + li.querySelector('.text').textContent === line)",
                        line, message=f"chat line {line!r}")

    async def send_chat(self, text: str) -> None:
        await self.page.get_by_label("Message", exact=True).fill(text)
        await self.page.get_by_role("button", name="Send").click()

    # --- media checks -----------------------------------------------------------------

    async def video_stats(self, identity: str) -> dict[str, Any]:
        """videoWidth of the tile's video, and its track's framesDecoded from room.getStats()."""
        return await self.js(
            """async (identity) => {
                const tile = [...document.querySelectorAll('#tiles li.tile[data-participant-sid]')]
                    .find(t => t.dataset.identity === identity && !t.classList.contains('screen') && !t.classList.contains('extra'));
                const video = tile && tile.querySelector('video');
                if (!video || !window.room) return {videoWidth: 0, framesDecoded: 0};
                const [report] = await window.room.getStats();
                const stats = report.remoteVideoTrackStats.find(s => s.trackSid === video.dataset.trackSid);
                return {videoWidth: video.videoWidth, framesDecoded: stats ? stats.framesDecoded : 0, trackSid: video.dataset.trackSid,
                        paused: video.paused};
            }""",
            identity,
        )

    async def audio_packets(self, identity: str) -> int:
        """packetsReceived of ``identity``'s audio track, from room.getStats()."""
        return await self.js(
            """async (identity) => {
                const room = window.room;
                const p = room && [...room.participants.values()].find(p => p.identity === identity);
                if (!p) return 0;
                const sids = [...p.audioTracks.values()].filter(pub => pub.isSubscribed).map(pub => pub.trackSid);
                const [report] = await room.getStats();
                return report.remoteAudioTrackStats.filter(s => sids.includes(s.trackSid)).reduce((n, s) => n + (s.packetsReceived || 0), 0);
            }""",
            identity,
        )

    async def wait_video_playing(self, identity: str, frames: int = 15) -> None:
        """``identity``'s video has a size and its framesDecoded keeps increasing."""
        try:
            await self.wait(
                """async (identity) => {
                    const tile = [...document.querySelectorAll('#tiles li.tile[data-participant-sid]')]
                        .find(t => t.dataset.identity === identity && !t.classList.contains('screen') && !t.classList.contains('extra'));
                    const video = tile && tile.querySelector('video');
                    return video && video.videoWidth > 0;
                }""",
                identity,
                message=f"{identity}'s video to have a size",
            )
        except AssertionError:
            raise
        first = await self.video_stats(identity)
        assert first["videoWidth"] > 0, first
        await self.wait(
            """async ([identity, target]) => {
                const tile = [...document.querySelectorAll('#tiles li.tile[data-participant-sid]')]
                    .find(t => t.dataset.identity === identity && !t.classList.contains('screen') && !t.classList.contains('extra'));
                const video = tile && tile.querySelector('video');
                if (!video || !window.room) return false;
                const [report] = await window.room.getStats();
                const stats = report.remoteVideoTrackStats.find(s => s.trackSid === video.dataset.trackSid);
                return stats && stats.framesDecoded >= target;
            }""",
            [identity, first["framesDecoded"] + frames],
            message=f"{identity}'s framesDecoded to pass {first['framesDecoded'] + frames}",
        )

    async def wait_audio_flowing(self, identity: str, packets: int = 25) -> None:
        first = await self.audio_packets(identity)
        await self.wait(
            """async ([identity, target]) => {
                const room = window.room;
                const p = room && [...room.participants.values()].find(p => p.identity === identity);
                if (!p) return false;
                const sids = [...p.audioTracks.values()].filter(pub => pub.isSubscribed).map(pub => pub.trackSid);
                if (!sids.length) return false;
                const [report] = await room.getStats();
                return report.remoteAudioTrackStats.filter(s => sids.includes(s.trackSid)).reduce((n, s) => n + (s.packetsReceived || 0), 0) >= target;
            }""",
            [identity, first + packets],
            message=f"{identity}'s inbound audio packets to pass {first + packets}",
        )


async def deny_media(browser: Any, page: Any, origin: str, camera: bool = True, microphone: bool = True) -> None:
    """Refuse the camera and / or microphone to ``origin`` in ``page``'s context, as a person
    answering the permission prompt with Block would (needs a browser without fake UI)."""
    cdp = await page.context.new_cdp_session(page)
    context_id = (await cdp.send("Target.getTargetInfo"))["targetInfo"]["browserContextId"]
    session = await browser.new_browser_cdp_session()
    for name, deny in (("camera", camera), ("microphone", microphone)):
        await session.send(
            "Browser.setPermission",
            {"permission": {"name": name}, "setting": "denied" if deny else "granted", "origin": origin, "browserContextId": context_id},
        )
