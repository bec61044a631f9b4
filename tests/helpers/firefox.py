"""Real headless Firefox for the web client's tests, driven over WebDriver BiDi.

Playwright cannot drive Debian's ``firefox-esr`` (it needs its own patched build), but Firefox
has WebDriver BiDi built in: started with ``--remote-debugging-port 0`` it prints the websocket
it listens on, and aiohttp's websocket client is all a test needs to talk to it. Nothing is
downloaded. The profile (``PREFS``) turns on Firefox's fake camera and microphone, grants them
without a prompt, and keeps the browser off the network (no telemetry, updates, first-run
pages, safe browsing or plugin downloads).

The surface follows the Chromium tests' (tests/helpers/browser.py) so the tests read alike::

    async with firefox() as browser:
        page = await browser.new_page("carol")
        await page.goto(url)
        size = await page.evaluate("() => document.querySelector('video').videoWidth")
        await page.wait_for("() => window.room && window.room.state === 'connected'")

``evaluate`` takes a JS expression or function (called with ``arg``, sync or async) and returns
its value through JSON. A missing browser fails the test under CI (``CI`` set) and skips it
elsewhere, saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..conftest import DEADLINE
from .browser import Page

STARTUP_TIMEOUT = 90.0  # a cold Firefox on a loaded 2-core machine takes a while
COMMAND_TIMEOUT = 60.0  # one BiDi command (navigation, a script) must answer within this

# user.js of the throwaway profile. Firefox's remote agent adds its own recommended
# automation prefs on top (remote.prefs.recommended); these are what the tests rely on.
PREFS: dict[str, bool | int | str] = {
    # Fake camera and microphone, granted without a prompt.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.navigator.permission.fake": True,
    "media.autoplay.default": 0,  # remote <audio>/<video> play without a user gesture
    "media.autoplay.blocking_policy": 0,
    # ICE inside tests/netns.sh's namespace: gather every interface (t0 is the only real one),
    # announce plain host addresses (no mDNS names: nothing in the namespace resolves them).
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.default_address_only": False,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.proxy_only_if_behind_proxy": False,
    # The browser the H264 test needs is one without H264, as Debian's build is: never fetch
    # or use Cisco's OpenH264 plugin, even on a machine that has it.
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "media.gmp-widevinecdm.enabled": False,
    "media.eme.enabled": False,
    # WebDriver BiDi only.
    "remote.active-protocols": 1,
    # Quiet, fast start: no first-run or what's-new pages, no default-browser check, no session
    # restore, no updates, telemetry, safe browsing, captive portal or remote settings.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.tabs.warnOnClose": False,
    "toolkit.startup.max_resumed_crashes": -1,
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.archive.enabled": False,
    "browser.ping-centre.telemetry": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "network.proxy.type": 0,
    "services.settings.server": "http://127.0.0.1:9/remote-settings",
    "geo.provider.network.url": "",
    "browser.region.network.url": "",
    "captivedetect.canonicalURL": "",
    "dom.disable_open_during_load": False,
}

LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")


class FirefoxError(AssertionError):
    """Firefox failed to start, a BiDi command failed, or a page script threw."""


def firefox_path() -> str | None:
    return shutil.which("firefox-esr") or shutil.which("firefox")


def require_firefox() -> str:
    """The Firefox executable; a failure under CI, a skip elsewhere, when it is missing."""
    path = firefox_path()
    if path is None:
        problem = "Debian's firefox-esr is not installed (tests/run.sh installs it: apt-get install firefox-esr)"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(problem)
    assert path is not None
    return path


def user_js(prefs: dict[str, bool | int | str]) -> str:
    return "".join(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n" for name, value in prefs.items())


class Firefox:
    """One Firefox process and its BiDi session. Use ``firefox()`` to get one."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.profile: Path | None = None
        self.stderr: deque[str] = deque(maxlen=200)
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, "FirefoxPage"] = {}  # by browsing context id
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # --- life cycle -----------------------------------------------------------------

    async def start(self, executable: str, prefs: dict[str, bool | int | str] | None = None) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="sfu-firefox-"))
        (self.profile / "user.js").write_text(user_js({**PREFS, **(prefs or {})}))
        env = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_CRASHREPORTER": "0",
               "MOZ_DISABLE_AUTO_SAFE_MODE": "1", "HOME": str(self.profile)}
        self.process = await asyncio.create_subprocess_exec(
            executable, "--headless", "--no-remote", "--remote-debugging-port", "0", "--profile", str(self.profile), "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
            limit=1 << 20,  # stderr lines can be long (a page's console output)
        )
        try:
            url = await asyncio.wait_for(self._read_listening(), STARTUP_TIMEOUT)
        except asyncio.TimeoutError:
            raise FirefoxError(f"Firefox printed no 'WebDriver BiDi listening' line within {STARTUP_TIMEOUT}s\n{self.diagnostics()}") from None
        self._tasks.append(asyncio.create_task(self._drain_stderr()))
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(url.rstrip("/") + "/session", max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        self._tasks.append(asyncio.create_task(self._receive()))
        await self.send("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True, "unhandledPromptBehavior": {"default": "accept"}}}})
        await self.send("session.subscribe", {"events": ["log.entryAdded"]})

    async def _read_listening(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        while True:
            raw = await self.process.stderr.readline()
            if not raw:
                raise FirefoxError(f"Firefox exited (status {await self.process.wait()}) before listening\n{self.diagnostics()}")
            line = raw.decode(errors="replace").rstrip()
            self.stderr.append(line)
            match = LISTENING.search(line)
            if match:
                return match.group(1)

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while raw := await self.process.stderr.readline():
            self.stderr.append(raw.decode(errors="replace").rstrip())

    async def _receive(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                message = json.loads(msg.data)
                if "id" in message and message["id"] in self._pending:
                    future = self._pending.pop(message["id"])
                    if not future.done():
                        future.set_result(message)
                elif message.get("method") == "log.entryAdded":
                    entry = message["params"]
                    page = self._pages.get(entry.get("source", {}).get("context", ""))
                    text = f"{entry.get('level')}: {entry.get('text')}"
                    if page is not None:
                        (page.errors if entry.get("type") == "javascript" else page.console).append(text)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(FirefoxError(f"the BiDi connection closed\n{self.diagnostics()}"))
            self._pending.clear()

    async def close(self) -> None:
        """End the session, stop Firefox (killing it if it lingers) and remove the profile."""
        if self._closed:
            return
        self._closed = True
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("browser.close", {}), 10)
        if self.process is not None and self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)

    def diagnostics(self) -> str:
        return "[firefox] stderr:\n" + "\n".join(list(self.stderr)[-40:])

    # --- BiDi -----------------------------------------------------------------------

    async def send(self, method: str, params: dict[str, Any], timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        """One BiDi command; its ``result``, or FirefoxError with the error BiDi reported."""
        if self.ws is None or self.ws.closed:
            raise FirefoxError(f"{method}: the BiDi connection is closed\n{self.diagnostics()}")
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self.ws.send_str(json.dumps({"id": command_id, "method": method, "params": params}))
        try:
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self._pending.pop(command_id, None)
            raise FirefoxError(f"{method}: no answer from Firefox within {timeout}s\n{self.diagnostics()}") from None
        if reply.get("type") == "error":
            raise FirefoxError(f"{method} failed: {reply.get('error')}: {reply.get('message')}")
        result = reply.get("result", {})
        assert isinstance(result, dict)
        return result

    async def new_page(self, name: str) -> "FirefoxPage":
        """A page of its own: the first one reuses the startup tab, later ones open new tabs."""
        if not self._pages:
            tree = await self.send("browsingContext.getTree", {"maxDepth": 0})
            context = tree["contexts"][0]["context"]
        else:
            context = (await self.send("browsingContext.create", {"type": "tab"}))["context"]
        page = FirefoxPage(self, context, name)
        self._pages[context] = page
        return page


class FirefoxPage:
    """One Firefox tab, with a surface like tests/helpers/browser.py's Page."""

    def __init__(self, browser: Firefox, context: str, name: str) -> None:
        self.browser = browser
        self.context = context
        self.name = name
        self.console: list[str] = []
        self.errors: list[str] = []  # uncaught exceptions in the page

    async def goto(self, url: str, timeout: float = COMMAND_TIMEOUT) -> None:
        await self.browser.send("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}, timeout)

    async def evaluate(self, expression: str, arg: Any = None, timeout: float = COMMAND_TIMEOUT) -> Any:
        """The value of ``expression`` (a JS expression, or a function called with ``arg``;
        promises awaited), passed through JSON. A thrown exception raises FirefoxError."""
        declaration = (
            "async (argument) => { const value = (" + expression + ");"
            " const result = typeof value === 'function' ? await value(JSON.parse(argument)) : await value;"
            " return result === undefined ? 'null' : JSON.stringify(result); }"
        )
        reply = await self.browser.send(
            "script.callFunction",
            {
                "functionDeclaration": declaration,
                "arguments": [{"type": "string", "value": json.dumps(arg)}],
                "target": {"context": self.context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
            timeout,
        )
        if reply.get("type") == "exception":
            details = reply.get("exceptionDetails", {})
            raise FirefoxError(f"{self.name}: script threw {details.get('text')}\n  in: {expression[:300]}\n{self.diagnostics()}")
        result = reply.get("result", {})
        if result.get("type") != "string":
            raise FirefoxError(f"{self.name}: unexpected script result {result}")
        return json.loads(result["value"])

    async def wait_for(self, expression: str, arg: Any = None, timeout: float = DEADLINE, message: str = "") -> Any:
        """Poll ``expression`` (as ``evaluate`` takes it) until it returns something truthy;
        returns that value, or fails after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = await self.evaluate(expression, arg)
            if value:
                return value
            if loop.time() > end:
                raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {message or expression}\n{self.diagnostics()}")
            await asyncio.sleep(0.2)

    async def screenshot(self, path: str | Path) -> None:
        import base64

        data = (await self.browser.send("browsingContext.captureScreenshot", {"context": self.context}))["data"]
        Path(path).write_bytes(base64.b64decode(data))

    async def close(self) -> None:
        with contextlib.suppress(FirefoxError):
            await self.browser.send("browsingContext.close", {"context": self.context})
        self.browser._pages.pop(self.context, None)

    def diagnostics(self) -> str:
        return (f"[{self.name}] console:\n" + "\n".join(self.console[-40:]) + f"\n[{self.name}] errors: {self.errors}\n"
                + self.browser.diagnostics())


@asynccontextmanager
async def firefox(prefs: dict[str, bool | int | str] | None = None) -> AsyncIterator[Firefox]:
    """A headless Firefox with a fresh profile, stopped and removed afterwards."""
    executable = require_firefox()
    browser = Firefox()
    try:
        await browser.start(executable, prefs)
        yield browser
    finally:
        await browser.close()


# --- the bundled page ---------------------------------------------------------------------

# Records every event the page's Room, participants and publications emit into window.sdkEvents
# ({on, name, args} with arguments summarised), by wrapping sdk.js's shared EventEmitter.emit:
# the page imported /sdk.js already, so this import is the same module instance. Installed
# before joining, it sees what happens during connect too.
RECORD_SDK_EVENTS = """async () => {
  const Video = await import('/sdk.js');
  const proto = Object.getPrototypeOf(Video.Room.prototype);
  if (proto.emit.recording) return true;
  window.sdkEvents = [];
  const summary = (x) => {
    if (x === null || x === undefined || typeof x !== 'object') return x === undefined ? null : x;
    if ('code' in x && 'message' in x) return {code: x.code, message: x.message};
    if ('trackSid' in x) return {trackSid: x.trackSid, trackName: x.trackName, kind: x.kind};
    if ('identity' in x) return {identity: x.identity, sid: x.sid};
    if ('kind' in x) return {sid: x.sid || null, name: x.name, kind: x.kind};
    return String(x);
  };
  const emit = proto.emit;
  proto.emit = function (name, ...args) {
    const on = this instanceof Video.Room ? 'room' : this instanceof Video.LocalParticipant ? 'local'
      : this instanceof Video.RemoteParticipant ? this.identity : null;
    if (on !== null) window.sdkEvents.push({on, name, args: args.map(summary)});
    return emit.call(this, name, ...args);
  };
  proto.emit.recording = true;
  return true;
}"""


class CallPage(Page):
    """The bundled page (web-client/) in a Firefox tab, with the Chromium tests' Page helpers
    (``wait_tile``, ``wait_video_playing``, ``wait_audio_flowing``...): they only need
    ``evaluate``. Joining and leaving go through the page's own form and buttons."""

    def __init__(self, tab: FirefoxPage) -> None:
        # Not super().__init__: that wires Playwright's console events; the tab collects its own.
        self.page = tab
        self.name = tab.name

    @property  # type: ignore[override]
    def console(self) -> list[str]:
        return self.page.console

    @property  # type: ignore[override]
    def errors(self) -> list[str]:
        return self.page.errors

    @classmethod
    async def open_in(cls, browser: Firefox, url: str, name: str) -> "CallPage":
        page = cls(await browser.new_page(name))
        await page.page.goto(url)
        await page.wait("() => document.querySelector('#preview-status') !== null", message="the bundled page")
        await page.wait_preview()
        await page.js(RECORD_SDK_EVENTS)
        return page

    async def join(self, room: str, identity: str, token: str | None = None) -> None:  # type: ignore[override]
        """Fill the form, submit it, and wait until the call is shown."""
        await self.wait_preview()
        await self.js(
            """([room, identity, token]) => {
                document.getElementById('room-input').value = room;
                document.getElementById('identity-input').value = identity;
                if (token) document.getElementById('token-input').value = token;
                document.getElementById('join-form').requestSubmit();
            }""",
            [room, identity, token],
        )
        await self.wait(
            "() => !document.querySelector('#call').hidden || !document.querySelector('#message').hidden",
            timeout=2 * DEADLINE,
            message="the call or an error",
        )
        joined = await self.js("() => !document.querySelector('#call').hidden")
        assert joined, f"{self.name} could not join: {await self.message()}\n{self.diagnostics()}"

    async def leave(self) -> None:
        await self.js("() => document.getElementById('leave-button').click()")
        await self.wait("() => !document.querySelector('#join').hidden", message=f"{self.name} back at the join form")

    async def sdk_events(self, name: str | None = None) -> list[dict[str, Any]]:
        """What RECORD_SDK_EVENTS saw, optionally one kind of event."""
        events = await self.js("() => window.sdkEvents")
        return [e for e in events if name is None or e["name"] == name]

    async def send_chat(self, text: str) -> None:
        await self.js(
            """(text) => {
                document.getElementById('chat-input').value = text;
                document.getElementById('chat-form').requestSubmit();
            }""",
            text,
        )

    async def close(self) -> None:
        await self.page.close()

    def diagnostics(self) -> str:
        return self.page.diagnostics()
