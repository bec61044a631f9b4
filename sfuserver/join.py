"""``sfu join``: a headless participant for trying the server from a terminal.

It publishes a synthetic camera (a frame counter), a tone and a ``chat`` data track,
prints what happens in the room, and sends each line typed on stdin as a chat message.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from signaling.client import (
    LocalAudioTrack,
    LocalDataTrack,
    LocalVideoTrack,
    RemoteDataTrack,
    RemoteMediaTrack,
    RemoteParticipant,
    SignalingError,
    connect,
)
from signaling.sources import CounterVideoTrack, ToneAudioTrack, read_counter


def _say(text: str) -> None:
    print(text, flush=True)


async def _watch_video(track: RemoteMediaTrack, who: str) -> None:
    """Decode the remote video and report its frame counter once a second."""
    frames = 0
    try:
        while True:
            frame = await track.recv()
            frames += 1
            if frames % 30 == 1:
                _say(f"  video from {who}: frame {frames}, counter {read_counter(frame)}")
    except Exception:
        return


async def join(url: str, token: str, room_name: str | None, duration: float | None) -> int:
    """Returns the exit status: 0 when done, 1 when refused, 130 after Ctrl-C (SIGINT).

    A server it cannot reach raises OSError, aiohttp.ClientError or asyncio.TimeoutError
    (the command turns them into one line)."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    try:  # Ctrl-C leaves the room properly instead of tearing the loop down mid-call
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    except (NotImplementedError, RuntimeError):
        pass
    try:
        return await _join(url, token, room_name, duration, interrupted)
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError):
            pass


async def _first(*waits: "asyncio.Future[object] | asyncio.Task[object]", timeout: float | None = None) -> None:
    done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _join(url: str, token: str, room_name: str | None, duration: float | None, interrupted: asyncio.Event) -> int:
    chat = LocalDataTrack("chat")
    connecting = asyncio.ensure_future(connect(
        url, token, name=room_name,
        tracks=[LocalVideoTrack(CounterVideoTrack(), "camera"), LocalAudioTrack(ToneAudioTrack(), "microphone"), chat],
    ))
    await _first(connecting, asyncio.ensure_future(interrupted.wait()))
    if connecting.cancelled():
        return 130
    try:
        room = connecting.result()
    except SignalingError as exc:
        _say(f"refused: {exc.code} {exc.message}")
        return 1
    _say(f"joined room {room.name} ({room.sid}) as {room.local_participant.identity}")
    for p in room.participants.values():
        _say(f"  already here: {p.identity}")
    tasks: set[asyncio.Task[None]] = set()

    def on_subscribed(track: object, publication: object, participant: RemoteParticipant) -> None:
        _say(f"subscribed to {participant.identity}'s {getattr(track, 'kind')} track {getattr(publication, 'track_name')}")
        if isinstance(track, RemoteDataTrack):
            track.on("message", lambda message: _say(f"<{participant.identity}> {message}"))
        elif isinstance(track, RemoteMediaTrack) and track.kind == "video":
            task = asyncio.ensure_future(_watch_video(track, participant.identity))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    room.on("participant_connected", lambda p: _say(f"{p.identity} joined"))
    room.on("participant_disconnected", lambda p: _say(f"{p.identity} left"))
    room.on("track_subscribed", on_subscribed)
    room.on("track_disabled", lambda pub, p: _say(f"{p.identity} muted {pub.track_name}"))
    room.on("track_enabled", lambda pub, p: _say(f"{p.identity} unmuted {pub.track_name}"))
    ended = asyncio.Event()

    def on_disconnected(error: SignalingError | None) -> None:
        _say(f"disconnected: {error.code} {error.message}" if error else "disconnected")
        ended.set()

    room.on("disconnected", on_disconnected)

    loop = asyncio.get_running_loop()
    if sys.stdin.isatty() or not sys.stdin.closed:
        def on_line() -> None:
            line = sys.stdin.readline()
            if not line:
                loop.remove_reader(sys.stdin)
                return
            if line.strip():
                chat.send(line.rstrip("\n"))

        try:
            loop.add_reader(sys.stdin, on_line)
        except (OSError, ValueError, NotImplementedError):
            pass
    try:
        await _first(asyncio.ensure_future(ended.wait()), asyncio.ensure_future(interrupted.wait()), timeout=duration)
    finally:
        await room.disconnect()
    return 130 if interrupted.is_set() else 0
