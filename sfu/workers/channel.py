"""The framed channel between the front process and one media worker (mediasoup's style).

One unix stream socket per worker. Each frame is a 4-byte big-endian length followed by that
many bytes of UTF-8 JSON holding one object:

* request (front -> worker): ``{"id": 7, "method": "publish", "data": {...}}``
* response (worker -> front): ``{"id": 7, "ok": true, "data": ...}`` or
  ``{"id": 7, "ok": false, "code": 53000, "error": "why"}``
* notification (worker -> front): ``{"event": "offer", "data": {...}}``

Every request is answered, in the order the worker finished it. Frames are bounded
(``MAX_FRAME``); anything that is not one of the three shapes is a ``ProtocolError``, which
ends the channel: the front then kills that worker, never itself. No media packet ever
crosses a channel: only control calls, events and once-a-second statistics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

MAX_FRAME = 1 << 20  # bytes of JSON in one frame (an SDP is a few kB; stats of many handles more)
_HEADER = struct.Struct(">I")

RequestHandler = Callable[[str, Any], Any]  # (method, data) -> result, or an awaitable of it
EventHandler = Callable[[str, Any], None]  # (event, data)


class ProtocolError(Exception):
    """The peer sent a frame that is too large or not one of the protocol's shapes."""


class ChannelClosed(Exception):
    """The channel closed before the request was answered."""


class RequestError(Exception):
    """The peer answered a request with an error (a Twilio error code and a message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(message: dict[str, Any]) -> bytes:
    """One frame: the length header and the JSON body."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    """Parse and check one frame's body (without its header)."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    if "event" in message:
        if not isinstance(message["event"], str):
            raise ProtocolError("notification without a string event")
    elif "method" in message:
        if not isinstance(message["method"], str) or not isinstance(message.get("id"), int):
            raise ProtocolError("request without a string method and an integer id")
    elif "ok" in message:
        if not isinstance(message.get("id"), int) or not isinstance(message["ok"], bool):
            raise ProtocolError("response without an integer id and a boolean ok")
        if not message["ok"] and not (isinstance(message.get("code"), int) and isinstance(message.get("error"), str)):
            raise ProtocolError("error response without an integer code and a string error")
    else:
        raise ProtocolError("frame is neither a request, a response nor a notification")
    return message


class Channel:
    """One end of a framed channel over an asyncio stream.

    ``on_request`` answers the peer's requests (return a value, or an awaitable of one; raise
    ``RequestError`` for an error response); ``on_event`` receives its notifications. ``run``
    reads until the peer closes (returns) or breaks the protocol (raises ``ProtocolError``).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        name: str,
        on_request: RequestHandler | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._on_request = on_request
        self._on_event = on_event
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Future[None]] = set()  # requests being carried out
        self.closed = False

    @classmethod
    async def over_socket(cls, sock: Any, name: str, **handlers: Any) -> Channel:
        """A channel on a connected unix stream socket."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME + _HEADER.size)
        return cls(reader, writer, name, **handlers)

    # --- sending -----------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ChannelClosed(f"{self.name}: channel closed")
        self._writer.write(encode(message))

    def request(self, method: str, data: Any = None) -> asyncio.Future[Any]:
        """Send a request; the future resolves to the response's data or raises
        ``RequestError`` / ``ChannelClosed``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ChannelClosed(f"{self.name}: channel closed"))
            return future
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = future
        self._send({"id": request_id, "method": method, "data": data})
        return future

    def notify(self, event: str, data: Any = None) -> None:
        if not self.closed:
            self._send({"event": event, "data": data})

    async def drain(self) -> None:
        """Wait until what was sent has been handed to the socket."""
        if not self.closed:
            await self._writer.drain()

    # --- receiving ---------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the peer closes the channel; then fail the pending requests."""
        try:
            while True:
                try:
                    header = await self._reader.readexactly(_HEADER.size)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise ProtocolError("channel closed inside a frame header") from None
                    return
                (length,) = _HEADER.unpack(header)
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
                try:
                    body = await self._reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    raise ProtocolError("channel closed inside a frame") from None
                await self._dispatch(decode(body))
        except (ConnectionError, OSError):
            return
        finally:
            self.close()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            if self._on_event is None:
                raise ProtocolError(f"unexpected notification {message['event']!r}")
            self._on_event(message["event"], message.get("data"))
        elif "method" in message:
            if self._on_request is None:
                raise ProtocolError(f"unexpected request {message['method']!r}")
            await self._answer(message["id"], message["method"], message.get("data"))
        else:
            future = self._pending.pop(message["id"], None)
            if future is None:
                raise ProtocolError(f"response to unknown request {message['id']}")
            if future.done():
                return
            if message["ok"]:
                future.set_result(message.get("data"))
            else:
                future.set_exception(RequestError(message["code"], message["error"]))

    async def _answer(self, request_id: int, method: str, data: Any) -> None:
        assert self._on_request is not None
        try:
            result = self._on_request(method, data)
        except RequestError as exc:
            self._respond_error(request_id, exc.code, exc.message)
            return
        except Exception as exc:  # a bug on this side: answer, and keep the channel
            logger.exception("%s: request %s failed", self.name, method)
            self._respond_error(request_id, 53000, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(result, Awaitable):
            # Started now, in order (its first step runs before the next frame is read),
            # answered when it finishes; later requests do not wait for it.
            task = asyncio.ensure_future(self._finish(request_id, method, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0)
            return
        self._respond(request_id, result)

    async def _finish(self, request_id: int, method: str, awaitable: Awaitable[Any]) -> None:
        try:
            result = await awaitable
        except RequestError as exc:
            self._respond_error(request_id, exc.code, exc.message)
        except Exception as exc:
            logger.exception("%s: request %s failed", self.name, method)
            self._respond_error(request_id, 53000, f"{type(exc).__name__}: {exc}")
        else:
            self._respond(request_id, result)

    def _respond(self, request_id: int, data: Any) -> None:
        if not self.closed:
            self._send({"id": request_id, "ok": True, "data": data})

    def _respond_error(self, request_id: int, code: int, message: str) -> None:
        if not self.closed:
            self._send({"id": request_id, "ok": False, "code": code, "error": message})

    # --- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the stream and fail every request still waiting for its answer."""
        if self.closed:
            return
        self.closed = True
        try:
            self._writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ChannelClosed(f"{self.name}: channel closed"))
