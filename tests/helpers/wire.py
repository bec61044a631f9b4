"""Bare sockets for the admission tests: a websocket spoken frame by frame (to send
fragmented messages, which aiohttp's client cannot), and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

TEXT, CONTINUATION, CLOSE, PING = 0x1, 0x0, 0x8, 0x9


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


class WireSocket:
    """A websocket over a plain TCP stream; frames are masked with a zero key (legal, and the
    payload goes out as it is)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str = "/signaling", headers: dict[str, str] | None = None, pipelined: bytes = b"") -> "WireSocket":
        """``pipelined``: frames sent with the handshake, before the server's answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode() + pipelined
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            writer.close()
            raise ConnectionRefusedError(status.decode(errors="replace"))
        return cls(reader, writer)

    async def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(frame(opcode, payload, fin))
        await self.writer.drain()

    async def next_frame(self) -> tuple[int, bytes] | None:
        """The server's next frame (opcode, payload), or None when the connection ends."""
        try:
            first, second = await self.reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def close_code(self) -> int | None:
        """Skip the server's messages and pings to its close frame; its code (None: no close
        frame, the connection just ended)."""
        while (frame := await self.next_frame()) is not None:
            opcode, payload = frame
            if opcode == CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
        return None

    def close(self) -> None:
        self.writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Read until the server closes the connection (True), whatever it sends first."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return True
