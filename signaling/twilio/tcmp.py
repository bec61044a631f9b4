"""TCMP v2: the SDK's websocket framing. Every frame is one JSON object with ``type``.

Client -> server: ``hello`` {id, timeout, version: 2, cookie?, body?}, ``msg`` {body},
``heartbeat``, ``bye``. Server -> client: ``welcome`` {negotiatedTimeout} (opens the
connection: nothing before it is read), ``msg`` {body}, ``heartbeat``. A frame the SDK
cannot parse raises inside its message handler, so the server never sends ``bad``: a bad
RSP body is answered with an RSP ``error`` inside ``msg``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

VERSION = 2
DEFAULT_TIMEOUT = 5000  # ms: what the SDK asks for
MIN_TIMEOUT = 1000
MAX_TIMEOUT = 30000
CLIENT_TYPES = ("hello", "msg", "heartbeat", "bye")


class FrameError(Exception):
    """A frame that is not TCMP."""


def parse(text: str | bytes) -> dict[str, Any]:
    """One client frame, checked: a JSON object whose ``type`` is a client frame type and,
    for ``hello`` / ``msg``, whose ``body`` (if any) is an object."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("not JSON") from None
    if not isinstance(frame, dict) or frame.get("type") not in CLIENT_TYPES:
        raise FrameError("not a TCMP frame")
    body = frame.get("body")
    if body is not None and not isinstance(body, dict):
        raise FrameError("body is not an object")
    if frame["type"] == "msg" and body is None:
        raise FrameError("msg without a body")
    return frame


def negotiate_timeout(hello: dict[str, Any]) -> int:
    """The heartbeat timeout (ms) granted for the client's request, within our bounds."""
    asked = hello.get("timeout")
    if not isinstance(asked, (int, float)) or isinstance(asked, bool):
        return DEFAULT_TIMEOUT
    return int(min(MAX_TIMEOUT, max(MIN_TIMEOUT, asked)))


def welcome(timeout: int) -> str:
    return encode({"type": "welcome", "negotiatedTimeout": timeout})


def msg(body: dict[str, Any]) -> str:
    return encode({"type": "msg", "body": body})


def heartbeat() -> str:
    return encode({"type": "heartbeat"})


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


class Connection:
    """One websocket once ``welcome`` went out: an ordered writer for ``msg`` frames and a
    heartbeat whenever nothing else was sent for half the negotiated timeout (the SDK closes
    after three timeouts without a frame)."""

    def __init__(self, ws: Any, timeout_ms: int) -> None:
        self.ws = ws
        self.timeout_ms = timeout_ms
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._sent_at = 0.0
        self._writer = asyncio.create_task(self._write_loop())
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())

    @property
    def closed(self) -> bool:
        return bool(self.ws.closed) or self._writer.done()

    def send(self, body: dict[str, Any]) -> None:
        """Queue one RSP message (dropped once the connection is stopped)."""
        if not self._writer.done():
            self._queue.put_nowait(msg(body))

    def stop(self, close: bool = False) -> None:
        """No more frames after those queued; then close the socket (1000) if ``close``."""
        self._heartbeat.cancel()
        if not self._writer.done():
            self._queue.put_nowait(None if not close else CLOSE)

    async def drain(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._writer), timeout)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            text = await self._queue.get()
            if text is None or self.ws.closed:
                return
            if text is CLOSE:
                await self.ws.close(code=1000)
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
            self._sent_at = loop.time()

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.timeout_ms / 2000
        while not self._writer.done():
            await asyncio.sleep(max(0.05, self._sent_at + interval - loop.time()))
            if loop.time() - self._sent_at >= interval and self._queue.empty():
                self._queue.put_nowait(heartbeat())
                self._sent_at = loop.time()


CLOSE = "\x00close"  # (a queue marker: close the socket once what precedes it is written)
