"""The official twilio-video SDK (2.36.0, unmodified) for the tests, and a page that loads it.

Never committed: ``npm pack twilio-video@2.36.0`` fetches it into a cache outside git
(``$TWILIO_SDK_CACHE``, default ``~/.cache/sfu-tests``). tests/run.sh does it before entering
the test namespace (which has no route out): ``python -m tests.helpers.twilio_sdk``. A test
finding no copy fails under CI (``CI`` set) and skips elsewhere, saying how to fetch it.

The page (served on loopback by ``sdk_site``) loads ``dist/twilio-video.min.js`` as it ships
and nothing else. Before it, the page keeps a list of the RTCPeerConnections and
WebSockets it makes (``window.pcs``, ``window.sockets``) so tests can read ``getStats()``
and drop the signaling socket (constructors returning the native objects, prototypes
unchanged); the SDK itself is not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from .browser import loopback_site

VERSION = "2.36.0"
MIN_JS = "package/dist/twilio-video.min.js"


def cache_dir() -> Path:
    return Path(os.environ.get("TWILIO_SDK_CACHE") or Path.home() / ".cache" / "sfu-tests") / f"twilio-video-{VERSION}"


def sdk_path() -> Path:
    return cache_dir() / "twilio-video.min.js"


def fetch() -> Path:
    """``npm pack`` the SDK into the cache (once) and keep its minified build."""
    target = sdk_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", f"twilio-video@{VERSION}", "--pack-destination", tmp, "--silent"],
            check=True, cwd=tmp, stdout=subprocess.DEVNULL, timeout=300,
        )  # fmt: skip
        tarball = next(Path(tmp).glob("twilio-video-*.tgz"))
        with tarfile.open(tarball) as archive:
            member = archive.extractfile(MIN_JS)
            assert member is not None, f"{MIN_JS} is not in {tarball.name}"
            partial = target.with_suffix(".partial")
            partial.write_bytes(member.read())
            partial.replace(target)
    return target


def require_sdk() -> Path:
    """The SDK's minified build; a failure under CI, a skip elsewhere, when it is missing."""
    path = sdk_path()
    if not path.exists():
        problem = f"twilio-video {VERSION} is not fetched: run `python -m tests.helpers.twilio_sdk` (tests/run.sh does)"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return path


PAGE = """<!doctype html><meta charset="utf-8"><title>twilio-video</title>
<script>
window.pcs = [];
window.sockets = [];
// Constructors that return the native objects: the SDK proxies RTCPeerConnection.prototype's
// own properties (ontrack...), so the prototype must stay the native one.
const keep = (Native, list) => {
  function Kept(...args) { const made = new Native(...args); list.push(made); return made; }
  Kept.prototype = Native.prototype;
  Object.setPrototypeOf(Kept, Native);
  return Kept;
};
window.RTCPeerConnection = keep(window.RTCPeerConnection, window.pcs);
window.WebSocket = keep(window.WebSocket, window.sockets);
window.log = [];
window.record = (emitter, label) => {
  for (const name of ['participantConnected', 'participantDisconnected', 'participantReconnecting', 'participantReconnected',
                      'trackSubscribed', 'trackUnsubscribed', 'trackPublished', 'trackUnpublished', 'trackMessage',
                      'reconnecting', 'reconnected', 'disconnected']) {
    emitter.on(name, (...args) => window.log.push({on: label, name, args: args.map((a) =>
      a === null || a === undefined ? null : typeof a !== 'object' ? a
      : 'code' in a ? {code: a.code, message: a.message}
      : 'identity' in a ? {identity: a.identity, sid: a.sid}
      : {kind: a.kind, name: a.name, sid: a.sid})}));
  }
  return emitter;
};
// Inbound media as decoded by the browser: video frames and audio energy, per kind.
window.inbound = async () => {
  const out = {video: 0, audio: 0, audioEnergy: 0};
  for (const pc of window.pcs) {
    (await pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') out.video += s.framesDecoded || 0;
      if (s.kind === 'audio') { out.audio += s.packetsReceived || 0; out.audioEnergy += s.totalAudioEnergy || 0; }
    });
  }
  return out;
};
</script>
<script src="/twilio-video.min.js"></script>"""


@asynccontextmanager
async def sdk_site() -> AsyncIterator[str]:
    """A loopback web server for the page (``/``) and the SDK (``/twilio-video.min.js``),
    yielding its origin."""
    from aiohttp import web

    script = require_sdk().read_bytes()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def sdk(request: web.Request) -> web.Response:
        return web.Response(body=script, content_type="application/javascript")

    async with loopback_site({"/": page, "/twilio-video.min.js": sdk}) as origin:
        yield origin


if __name__ == "__main__":
    try:
        print(fetch())
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"could not fetch twilio-video {VERSION}: {exc}", file=sys.stderr)
        sys.exit(1)
