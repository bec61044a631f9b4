"""Shared helpers for end-to-end tests: joining with test media, finding subscribed tracks,
reading the counter video in the background, recording client events, raw websockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from signaling.client import (
    LocalAudioTrack,
    LocalDataTrack,
    LocalTrack,
    LocalVideoTrack,
    RemoteDataTrack,
    RemoteMediaTrack,
    RemoteTrack,
    Room,
    connect,
)

from ..conftest import DEADLINE, Server, wait_for
from ..media import CounterVideoTrack, ToneAudioTrack, read_counter

# Every event a client Room emits (see signaling.client.Room).
ROOM_EVENTS = (
    "participant_connected",
    "participant_disconnected",
    "participant_reconnecting",
    "participant_reconnected",
    "track_published",
    "track_unpublished",
    "track_enabled",
    "track_disabled",
    "track_subscribed",
    "track_unsubscribed",
    "reconnecting",
    "reconnected",
    "error",
    "disconnected",
)


def media_tracks(publish: str) -> list[LocalTrack]:
    """Local tracks named cam (counter video), mic (tone) and chat (data): ``publish`` is
    any combination of the letters v, a, d."""
    tracks: list[LocalTrack] = []
    if "v" in publish:
        tracks.append(LocalVideoTrack(CounterVideoTrack(), "cam"))
    if "a" in publish:
        tracks.append(LocalAudioTrack(ToneAudioTrack(), "mic"))
    if "d" in publish:
        tracks.append(LocalDataTrack("chat"))
    return tracks


def local_track(room: Room, name: str) -> LocalTrack:
    return next(t for t in room.local_participant.tracks.values() if t.name == name)


class EventLog:
    """Records every event a client Room emits, in order, from creation on."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        for name in ROOM_EVENTS:
            room.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        return lambda *args: self.events.append((name, args))

    def mark(self) -> int:
        return len(self.events)

    def names(self, since: int = 0) -> list[str]:
        return [name for name, _ in self.events[since:]]

    def find(self, name: str, predicate: Callable[..., bool] | None = None, since: int = 0) -> tuple[Any, ...] | None:
        for event, args in self.events[since:]:
            if event == name and (predicate is None or predicate(*args)):
                return args
        return None

    async def wait(
        self, name: str, predicate: Callable[..., bool] | None = None, since: int = 0, timeout: float = DEADLINE
    ) -> tuple[Any, ...]:
        """The first ``name`` event at or after index ``since`` (already recorded or not)."""
        who = getattr(getattr(self.room, "local_participant", None), "identity", "?")

        def seen() -> list[tuple[Any, ...]]:  # a list, so that an event without arguments is truthy
            found = self.find(name, predicate, since)
            return [] if found is None else [found]

        try:
            (args,) = await wait_for(seen, timeout, message=f"{who} to see {name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; saw {self.names(since)}") from None
        return args

    def errors(self, since: int = 0) -> list[int]:
        return [args[0].code for name, args in self.events[since:] if name == "error"]


def about(identity: str, track_name: str | None = None) -> Callable[..., bool]:
    """An EventLog predicate: the event concerns ``identity`` (and its track ``track_name``)."""

    def check(*args: Any) -> bool:
        participant = args[-1]
        if getattr(participant, "identity", None) != identity:
            return False
        if track_name is None:
            return True
        publication = args[-2]
        return getattr(publication, "track_name", None) == track_name

    return check


def remote_track(room: Room, identity: str, name: str) -> RemoteTrack | None:
    """``identity``'s track ``name`` if ``room`` is subscribed to it now."""
    for participant in room.participants.values():
        if participant.identity == identity:
            for publication in participant.tracks.values():
                if publication.track_name == name and publication.track is not None:
                    return publication.track
    return None


async def subscribed(room: Room, identity: str, name: str, timeout: float = DEADLINE) -> RemoteTrack:
    """Wait until ``room`` is subscribed to ``identity``'s track ``name``."""
    me = room.local_participant.identity
    track = await wait_for(lambda: remote_track(room, identity, name), timeout, message=f"{me} subscribed to {identity}'s {name}")
    assert isinstance(track, RemoteTrack)
    return track


async def subscribed_media(room: Room, identity: str, name: str, timeout: float = DEADLINE) -> RemoteMediaTrack:
    track = await subscribed(room, identity, name, timeout)
    assert isinstance(track, RemoteMediaTrack)
    return track


async def subscribed_data(room: Room, identity: str, name: str = "chat", timeout: float = DEADLINE) -> RemoteDataTrack:
    track = await subscribed(room, identity, name, timeout)
    assert isinstance(track, RemoteDataTrack)
    return track


def assert_increasing(counters: list[int], what: str = "video counters") -> None:
    assert all(b > a for a, b in zip(counters, counters[1:])), f"{what} do not increase: {counters}"


class VideoReader:
    """Decodes a remote counter video in the background, keeping (arrival, pts, counter)."""

    def __init__(self, track: RemoteMediaTrack) -> None:
        self.track = track
        self.frames: list[tuple[float, int, int]] = []
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                self.ended = True
                return
            assert isinstance(frame, VideoFrame)
            self.frames.append((self._loop.time(), int(frame.pts or 0), read_counter(frame)))

    @property
    def counters(self) -> list[int]:
        return [counter for _, _, counter in self.frames]

    async def advance(self, count: int = 10, timeout: float = DEADLINE) -> list[int]:
        """Wait for ``count`` more frames; return their counters (checked to increase)."""
        start = len(self.frames)
        await wait_for(lambda: len(self.frames) >= start + count, timeout, message=f"{count} more video frames")
        counters = self.counters
        assert_increasing(counters)
        return counters[start:]

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass


async def read_audio(track: RemoteMediaTrack, count: int, timeout: float = DEADLINE) -> list[AudioFrame]:
    frames = []
    for _ in range(count):
        frame = await asyncio.wait_for(track.recv(), timeout)
        assert isinstance(frame, AudioFrame)
        frames.append(frame)
    return frames


class Clients:
    """Joins test participants to a server and disconnects them all at teardown."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rooms: list[Room] = []
        self.readers: list[VideoReader] = []

    async def join(
        self,
        identity: str,
        room: str = "room",
        *,
        publish: str = "vad",
        tracks: Iterable[LocalTrack] | None = None,
        receive: str = "frames",
        rules: list[dict[str, Any]] | None = None,
        token: str | None = None,
    ) -> Room:
        joined = await connect(
            self.server.url,
            token or self.server.token(identity),
            name=room,
            tracks=media_tracks(publish) if tracks is None else list(tracks),
            receive=receive,
            rules=rules,
        )
        self.rooms.append(joined)
        return joined

    async def watch(self, room: Room, identity: str, name: str = "cam") -> VideoReader:
        """Subscribe-wait and start decoding ``identity``'s counter video in ``room``."""
        reader = VideoReader(await subscribed_media(room, identity, name))
        self.readers.append(reader)
        return reader

    async def close(self) -> None:
        for reader in self.readers:
            await reader.close()
        for room in self.rooms:
            await room.disconnect()


# --- raw websockets --------------------------------------------------------------------


class RawSocket:
    """A bare protocol websocket (no client logic) for refusals and out-of-order input."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = http
        self.ws = ws

    @classmethod
    async def open(cls, server: Server) -> "RawSocket":
        http = aiohttp.ClientSession()
        return cls(http, await http.ws_connect(server.url, max_msg_size=0))

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def receive(self, timeout: float = DEADLINE) -> dict[str, Any] | None:
        """The next server message, or None once the socket is closed."""
        msg = await self.ws.receive(timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return None
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        message = json.loads(msg.data)
        assert isinstance(message, dict)
        return message

    async def receive_type(self, kind: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """Skip to the next message of type ``kind`` (fails if the socket closes first)."""
        while True:
            message = await self.receive(timeout)
            assert message is not None, f"socket closed while waiting for {kind}"
            if message["type"] == kind:
                return message

    async def rest(self, timeout: float = DEADLINE) -> list[dict[str, Any]]:
        """Every message until the server closes the socket."""
        messages = []
        while (message := await self.receive(timeout)) is not None:
            messages.append(message)
        return messages

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


def connect_message(token: str, name: str | None = "room", tracks: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "connect", "version": 1, "token": token, "participant": {"tracks": tracks or []}}
    if name is not None:
        message["name"] = name
    message.update(extra)
    return message
